"""Pause the resident daemon while a flow runs, so it does not "repair" what the flow is doing.

A repoint stops containerd on purpose and a join restarts kubelet on purpose; the daemon would
see runtime-down or a crash loop and restart units in the middle. If the operator had already
paused the daemon, it stays paused afterwards; if no daemon runs, there is nothing to do. The
daemon keeps the pause in its state file, so a daemon restarted mid-flow (SIGKILL, a crash) is
still paused until the flow's end resumes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nodemedic.flows.report import FlowReport
from nodemedic.report import dbus_api


@asynccontextmanager
async def daemon_paused(report: FlowReport) -> AsyncIterator[None]:
    try:
        mode = (await dbus_api.properties()).get("Mode")
    except (dbus_api.NotRunning, dbus_api.Denied, dbus_api.Refused, OSError):
        yield
        return
    paused_by_us = False
    if mode != "paused":
        try:
            await dbus_api.call("Pause")
            paused_by_us = True
            report.say("paused the nodemedic daemon for the duration of this command")
        except (dbus_api.NotRunning, dbus_api.Denied, dbus_api.Refused) as err:
            report.say(f"could not pause the nodemedic daemon ({err}); it may react to what this command does")
    try:
        yield
    finally:
        if paused_by_us:
            try:
                await dbus_api.call("Resume")
                report.say("resumed the nodemedic daemon")
            except (dbus_api.NotRunning, dbus_api.Denied, dbus_api.Refused) as err:
                report.say(f"could not resume the nodemedic daemon ({err}); run `nodemedic resume`")
