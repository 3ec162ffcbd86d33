"""Live probes shared by several ladders."""

from __future__ import annotations

import asyncio
import time
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


def _operator_stopped(state: UnitChanged) -> bool:
    """A clean `systemctl stop` (inactive, result success) is an operator's call, never undone."""
    return state.active_state == "inactive" and state.result == "success"


async def _runtime_settled(ctx: RepairContext, unit: str, state: UnitChanged | None = None) -> bool:
    if not await runtime_ready(ctx):
        return False
    try:
        stays = await _stays_running(ctx, unit, state)
    except BusError:
        return False
    return stays and await runtime_ready(ctx)


def runtime_settled(unit: str) -> Probe:
    """Ready, still ready SETTLE_S later, and systemd has not restarted the unit in between: a
    crash-looping containerd can answer CRI Status for a moment after a start (1.6 on a torn
    meta.db, with the real kubelet calling it, was "verified" by one ready answer and crashed
    again), so one ready answer proves nothing about a runtime that was crash-looping."""
    async def probe(ctx: RepairContext) -> bool:
        return await _runtime_settled(ctx, unit)

    return probe


def runtime_down_unless_stopped(unit: str) -> Probe:
    """The runtime is not settled (down, or up only between two crashes), and not because an
    operator stopped its unit. One look at the unit serves both questions."""
    async def probe(ctx: RepairContext) -> bool:
        try:
            state = await ctx.bus.unit_state(unit)
        except BusError:
            return True  # neither an operator's stop nor a settled unit can be seen
        return not _operator_stopped(state) and not await _runtime_settled(ctx, unit, state)

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


def _up_for(state: UnitChanged) -> float:
    """Seconds since systemd last made the unit active (both clocks are the node's CLOCK_MONOTONIC)."""
    return time.monotonic() - state.active_since_us / 1e6 if state.active_since_us else 0.0


async def _stays_running(ctx: RepairContext, unit: str, first: UnitChanged | None = None) -> bool:
    """Running without a restart for SETTLE_S: already, or after waiting out the rest of it. A unit
    up for minutes answers at once; one just (re)started is watched until it has settled. `first`:
    the unit's state if the caller has just read it."""
    if first is None:
        first = await ctx.bus.unit_state(unit)
    if not _running(first):
        return False
    up_for = _up_for(first)
    if up_for >= SETTLE_S:
        return True
    await asyncio.sleep(SETTLE_S - up_for)
    later = await ctx.bus.unit_state(unit)
    return (_running(later) and later.n_restarts == first.n_restarts
            and later.active_since_us == first.active_since_us)


def unit_stays_running(unit: str) -> Probe:
    async def probe(ctx: RepairContext) -> bool:
        try:
            return await _stays_running(ctx, unit)
        except BusError:
            return False

    return probe


def unit_crash_looping(unit: str) -> Probe:
    """systemd keeps restarting it: anything but staying up counts, since between two crashes a
    looping unit also passes through deactivating, dead and activating, and one look at any of
    them must not clear an exhausted loop (the next crash would start a fresh climb). A unit an
    operator stopped (inactive, result success) is not crash-looping."""
    async def probe(ctx: RepairContext) -> bool:
        try:
            state = await ctx.bus.unit_state(unit)
            return not _operator_stopped(state) and not await _stays_running(ctx, unit, state)
        except BusError:
            return False

    return probe
