"""The engine and the fleet guard's gate (engine/fleet.py): which steps ask, what a held episode
looks like, that the slot goes back after the step and its verification, and that a waiting
episode does not block another problem's safe repair. FleetGateStandin replaces only the two
D-Bus calls (AcquireSlot, ReleaseSlot); the waiting, waking and releasing logic is the real one.
The real bus and nodemedic-kube are in tests/node/test_kube_fleet.py."""

from __future__ import annotations

import asyncio

from nodemedic.config import load_config
from nodemedic.detector.detector import Suspicion
from nodemedic.engine import fleet as fleet_module
from nodemedic.engine.engine import Engine
from nodemedic.engine.fleet import FleetGate
from nodemedic.hostroot import HostRoot
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.step import Remedy, StepClass
from nodemedic.safety import Guard
from nodemedic.state import Phase, StateStore
from tests.unit.helpers import write
from tests.unit.test_engine import FakeStep


class FleetGateStandin(FleetGate):
    """Answers AcquireSlot from a script (a reason; "" = granted) and records ReleaseSlot."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers = answers
        self.asked: list[tuple[str, str]] = []
        self.released: list[str] = []
        self.on_release = lambda: None

    async def admit(self, problem: str, step: str) -> str:
        self.asked.append((problem, step))
        reason = self.answers.pop(0) if self.answers else ""
        if not reason:
            self._held.add(problem)
        return reason

    async def _release(self, problem: str) -> None:
        self.released.append(problem)
        self.on_release()


def make(tmp_path, remedies: dict[str, list[FakeStep]], gate: FleetGate) -> tuple[Engine, StateStore]:
    write(tmp_path, "/etc/nodemedic/conf.d/10-test.toml",
          '[policy]\nverify_attempts = 2\nverify_interval = "0s"\ncooldown = "1h"\n')
    root = HostRoot(tmp_path)
    settings = load_config(root).settings
    guard = Guard.from_paths([])
    store = StateStore(tmp_path / "state.json", guard)
    ctx = RepairContext(settings, root, guard, bus=None, cri=None, state=store.load())  # type: ignore[arg-type]
    ladders = {name: Remedy(name, tuple(steps)) for name, steps in remedies.items()}
    return Engine(ctx, store, ladders, {}, fleet=gate), store


async def until(check, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_safe_steps_never_ask_for_a_slot(tmp_path):
    gate = FleetGateStandin(["waiting for a fleet slot (held by node-a)"])
    step = FakeStep("gentle", heals=True)
    engine, store = make(tmp_path, {"demo": [step]}, gate)

    async def run():
        engine.suspect(Suspicion("demo", "sig"))
        await engine.idle()

    asyncio.run(run())
    assert gate.asked == [] and step.applied == 1
    assert store.load().problems["demo"].phase == Phase.HEALED


def test_a_disruptive_step_waits_for_its_slot_and_gives_it_back_after_verifying(tmp_path):
    reason = "waiting for a fleet slot (held by node-a, node-b)"
    gate = FleetGateStandin([reason])
    step = FakeStep("restart", heals=True, klass=StepClass.DISRUPTIVE)
    engine, store = make(tmp_path, {"demo": [step]}, gate)
    verified_at_release: list[int] = []
    gate.on_release = lambda: verified_at_release.append(step.verified)

    async def run():
        engine.suspect(Suspicion("demo", "sig"))
        await until(lambda: "demo" in gate.holds)
        record = engine.ctx.state.problems["demo"]
        assert record.phase == Phase.CONFIRMED and reason in record.detail  # what status shows
        assert gate.holds == {"demo": reason} and step.applied == 0
        assert not engine.running("demo")  # an operator may forget or repair it while it waits
        gate._changed.set()  # SlotsChanged
        await engine.idle()
        await asyncio.sleep(0)  # the release task

    asyncio.run(run())
    assert gate.asked == [("demo", "restart"), ("demo", "restart")]
    assert step.applied == 1 and store.load().problems["demo"].phase == Phase.HEALED
    assert gate.released == ["demo"] and verified_at_release == [1]  # after the verification, once
    assert gate.holds == {}


def test_each_rung_takes_and_returns_its_own_slot(tmp_path):
    gate = FleetGateStandin([])
    first = FakeStep("restart", heals=False, klass=StepClass.DISRUPTIVE)
    second = FakeStep("reset", heals=True, klass=StepClass.DISRUPTIVE)
    engine, _ = make(tmp_path, {"demo": [first, second]}, gate)

    async def run():
        engine.suspect(Suspicion("demo", "sig"))
        await engine.idle()
        await asyncio.sleep(0)

    asyncio.run(run())
    assert [s for _, s in gate.asked] == ["restart", "reset"] and gate.released == ["demo", "demo"]


def test_a_waiting_episode_does_not_block_another_problems_safe_repair(tmp_path):
    gate = FleetGateStandin(["API server unreachable"] * 1000)
    held = FakeStep("restart", heals=True, klass=StepClass.DISRUPTIVE)
    safe = FakeStep("write-config", heals=True)
    engine, store = make(tmp_path, {"demo": [held], "other": [safe]}, gate)

    async def run():
        engine.suspect(Suspicion("demo", "sig"))
        await until(lambda: "demo" in gate.holds)
        engine.suspect(Suspicion("other", "sig"))
        await until(lambda: getattr(engine.ctx.state.problems.get("other"), "phase", None) == Phase.HEALED)
        assert held.applied == 0 and "demo" in gate.holds
        engine.forget("demo")  # the operator: the waiting episode is cancelled, nothing leaks
        await engine.idle()

    asyncio.run(run())
    assert safe.applied == 1 and held.applied == 0 and gate.holds == {}


def test_with_the_guard_off_every_step_goes_without_touching_the_bus(tmp_path, monkeypatch):
    write(tmp_path, "/etc/nodemedic/conf.d/10-test.toml", "")
    settings = load_config(HostRoot(tmp_path)).settings
    assert settings.fleet.enabled is False  # the default

    def no_bus(*_args, **_kwargs):
        raise AssertionError("the guard is off: no D-Bus connection")

    monkeypatch.setattr(fleet_module, "MessageBus", no_bus)
    gate = FleetGate(lambda: settings.fleet)
    assert asyncio.run(gate.admit("demo", "restart")) == ""
    gate.release("demo")  # nothing held: nothing to do, no loop needed
