"""The few manager calls the flows need beyond SystemdBus: reload, enable and disable unit files,
and jobs whose end is never missed.

Kept beside the flows (a subclass, same connection) so the daemon's bus module stays as small as
the daemon needs. A job that ends at once (stopping a unit that waits to auto-restart) can send
its JobRemoved signal before the reply to StopUnit has been handed back to the caller; the
results of jobs nobody waits for yet are therefore kept, and looked up first. A failed job is an
exception here, never a string to forget.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from dbus_next import Message, MessageType

from nodemedic.sources.systemd_bus import MANAGER, MANAGER_PATH, BusError, SystemdBus

_KEEP = 256  # ended jobs remembered; job paths are never reused within a boot


class JobFailed(BusError):
    """systemd ran the job and it did not end in "done", or did not end in time."""


class FlowBus(SystemdBus):
    def __init__(self) -> None:
        super().__init__()
        self._ended: OrderedDict[str, str] = OrderedDict()

    def _on_message(self, message: Message) -> None:
        if (message.message_type == MessageType.SIGNAL and message.member == "JobRemoved"
                and message.interface == MANAGER):
            _id, job, _unit, result = message.body
            if job not in self._jobs:
                self._ended[job] = result
                while len(self._ended) > _KEEP:
                    self._ended.popitem(last=False)
        super()._on_message(message)

    async def unit_job(self, verb: str, unit: str, timeout: float) -> str:
        """As SystemdBus.unit_job, without missing a job that ended before its reply arrived."""
        if verb not in ("RestartUnit", "StartUnit", "StopUnit", "TryRestartUnit"):
            raise ValueError(verb)
        [job] = await self._call(MANAGER_PATH, MANAGER, verb, "ss", [unit, "replace"])
        result = self._ended.pop(job, None)
        if result is not None:
            return result
        future = self._jobs.setdefault(job, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._jobs.pop(job, None)

    async def job(self, verb: str, unit: str, timeout: float) -> None:
        try:
            result = await self.unit_job(verb, unit, timeout)
        except TimeoutError:
            raise JobFailed(f"{verb} {unit}: no end of the job within {timeout:.0f}s") from None
        if result != "done":
            raise JobFailed(f"{verb} {unit}: job {result}")

    async def reload(self) -> None:
        """daemon-reload; the D-Bus call returns once the manager has re-read its units."""
        await self._call(MANAGER_PATH, MANAGER, "Reload")

    async def enable(self, unit_file: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "EnableUnitFiles", "asbb", [[unit_file], False, False])

    async def disable(self, unit_file: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "DisableUnitFiles", "asb", [[unit_file], False])
