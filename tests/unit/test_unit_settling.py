"""When a unit or the runtime counts as up again: only after it has stayed up, never from one look
between two crashes (a crash loop cleared that way starts a fresh climb at its next crash)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from nodemedic.repairs import remedy_probes
from nodemedic.repairs.remedy_probes import runtime_down_unless_stopped, unit_crash_looping, unit_stays_running
from nodemedic.sources.events import UnitChanged

UNIT = "kubelet.service"


def _state(active: str, sub: str, restarts: int = 0, result: str = "success", up_for: float = 0.0) -> UnitChanged:
    since = int((time.monotonic() - up_for) * 1e6) if active == "active" else 0
    return UnitChanged(UNIT, active, sub, restarts, result, active_since_us=since)


class ScriptedBusMock:
    """Stands in for systemd's manager (a mock: unit tests have no systemd): answers unit_state
    from a script, the last answer repeated."""

    def __init__(self, *states: UnitChanged) -> None:
        self.states = list(states)
        self.looks = 0

    async def unit_state(self, unit: str) -> UnitChanged:
        self.looks += 1
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def _ctx(bus: ScriptedBusMock, ready: bool = True) -> SimpleNamespace:
    async def cri_status():
        return SimpleNamespace(runtime_ready=ready)

    return SimpleNamespace(bus=bus, cri_status=cri_status)


@pytest.fixture(autouse=True)
def short_settle(monkeypatch):
    monkeypatch.setattr(remedy_probes, "SETTLE_S", 0.2)


@pytest.mark.parametrize("between", [
    ("activating", "auto-restart", "exit-code"),
    ("deactivating", "stop-sigterm", "exit-code"),
    ("inactive", "dead", "exit-code"),
    ("activating", "start", "exit-code"),
    ("failed", "failed", "exit-code"),
])
def test_every_state_between_two_crashes_is_still_a_crash_loop(between):
    active, sub, result = between
    assert asyncio.run(unit_crash_looping(UNIT)(_ctx(ScriptedBusMock(_state(active, sub, 7, result)))))


def test_running_for_a_moment_then_restarted_is_a_crash_loop():
    just_started = _state("active", "running", 7, up_for=0.0)
    restarted = UnitChanged(UNIT, "active", "running", 8, "success", just_started.active_since_us + 1)
    assert asyncio.run(unit_crash_looping(UNIT)(_ctx(ScriptedBusMock(just_started, restarted))))


def test_an_operators_stop_is_not_a_crash_loop():
    assert not asyncio.run(unit_crash_looping(UNIT)(_ctx(ScriptedBusMock(_state("inactive", "dead")))))


def test_a_unit_up_for_longer_than_the_settle_time_answers_at_once():
    bus = ScriptedBusMock(_state("active", "running", up_for=60))
    started = time.monotonic()
    assert asyncio.run(unit_stays_running(UNIT)(_ctx(bus)))
    assert not asyncio.run(unit_crash_looping(UNIT)(_ctx(bus)))
    assert time.monotonic() - started < remedy_probes.SETTLE_S  # no wait: its start was long ago
    assert bus.looks == 2  # one look each: the crash-loop probe judges "stopped by an operator?" on the same one


def test_a_unit_just_started_is_watched_until_it_has_settled():
    bus = ScriptedBusMock(_state("active", "running", up_for=0.0))
    assert asyncio.run(unit_stays_running(UNIT)(_ctx(bus)))
    assert bus.looks == 2


def test_a_restart_unseen_in_the_restart_count_still_counts():
    # `systemctl restart` does not count as an automatic restart; the active-since time moves.
    first = _state("active", "running", up_for=0.0)
    again = UnitChanged(UNIT, "active", "running", 0, "success", first.active_since_us + 50_000)
    assert not asyncio.run(unit_stays_running(UNIT)(_ctx(ScriptedBusMock(first, again))))


def test_a_runtime_ready_for_a_moment_between_crashes_is_still_down():
    probe = runtime_down_unless_stopped("containerd.service")
    just_started = _state("active", "running", 3, up_for=0.0)
    crashed = _state("activating", "auto-restart", 4, "exit-code")
    assert asyncio.run(probe(_ctx(ScriptedBusMock(just_started, crashed))))
    assert not asyncio.run(probe(_ctx(ScriptedBusMock(_state("active", "running", up_for=60)))))
    assert asyncio.run(probe(_ctx(ScriptedBusMock(_state("active", "running", up_for=60)), ready=False)))
    assert not asyncio.run(probe(_ctx(ScriptedBusMock(_state("inactive", "dead")), ready=False)))
