"""Live probes shared by several ladders."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nodemedic.probes.cri import CriError
from nodemedic.repairs.context import RepairContext
from nodemedic.sources.events import UnitChanged
from nodemedic.sources.systemd_bus import BusError

Probe = Callable[[RepairContext], Awaitable[bool]]

# How long a unit must keep the same process running to count as up: a crash-looping unit is
# "active (running)" for a moment after every restart, so one look at it proves nothing.
SETTLE_S = 3.0
# How long one relist (CRI ListPodSandbox, what kubelet's PLEG calls every second) may take before
# the runtime counts as not answering. A healthy containerd answers in milliseconds; kubelet only
# reports PLEG unhealthy after minutes without a relist, so a few seconds cannot mistake slow for hung.
RELIST_DEADLINE_S = 5.0


async def runtime_ready(ctx: RepairContext) -> bool:
    status = await ctx.cri_status()
    return status is not None and status.runtime_ready


async def runtime_down(ctx: RepairContext) -> bool:
    return not await runtime_ready(ctx)


async def _stopped_by_operator(ctx: RepairContext, unit: str) -> bool:
    """A clean `systemctl stop` (inactive, result success) is an operator's call, never undone."""
    try:
        state = await ctx.bus.unit_state(unit)
    except BusError:
        return False
    return state.active_state == "inactive" and state.result == "success"


def runtime_down_unless_stopped(unit: str) -> Probe:
    """The runtime does not answer, and not because an operator stopped its unit."""
    async def probe(ctx: RepairContext) -> bool:
        return await runtime_down(ctx) and not await _stopped_by_operator(ctx, unit)

    return probe


async def relist_answers(ctx: RepairContext) -> bool:
    """The runtime answers a relist (CRI ListPodSandbox) within RELIST_DEADLINE_S."""
    try:
        await ctx.cri.list_pod_sandboxes(timeout=RELIST_DEADLINE_S)
    except CriError:
        return False
    return True


async def runtime_relists(ctx: RepairContext) -> bool:
    """Ready and answering relists again: what a restart for PLEG must achieve, since a runtime
    can report RuntimeReady=true while its relist still hangs."""
    return await runtime_ready(ctx) and await relist_answers(ctx)


async def wait_until(probe: Callable[[], Awaitable[bool]], attempts: int, interval: float) -> bool:
    """`probe` until it says True, at most `attempts` times `interval` apart."""
    for attempt in range(max(1, attempts)):
        if await probe():
            return True
        if attempt + 1 < attempts:
            await asyncio.sleep(interval)
    return False


def _running(state: UnitChanged) -> bool:
    return state.active_state == "active" and state.sub_state == "running"


async def _stays_running(ctx: RepairContext, unit: str) -> bool:
    """Running now, and still running SETTLE_S later without systemd having restarted it."""
    first = await ctx.bus.unit_state(unit)
    if not _running(first):
        return False
    await asyncio.sleep(SETTLE_S)
    later = await ctx.bus.unit_state(unit)
    return _running(later) and later.n_restarts == first.n_restarts


def unit_stays_running(unit: str) -> Probe:
    async def probe(ctx: RepairContext) -> bool:
        try:
            return await _stays_running(ctx, unit)
        except BusError:
            return False

    return probe


def unit_crash_looping(unit: str) -> Probe:
    """systemd keeps restarting it: waiting to restart, or not staying up. A unit an operator
    stopped (inactive) is not crash-looping."""
    async def probe(ctx: RepairContext) -> bool:
        try:
            state = await ctx.bus.unit_state(unit)
            if state.sub_state == "auto-restart":
                return True
            return _running(state) and not await _stays_running(ctx, unit)
        except BusError:
            return False

    return probe
