"""The remedy engine's state machine, driven with recording test steps (FakeStep) on a tmp root.
The real steps are exercised against a booted node in tests/node/."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from nodemedic.config import load_config
from nodemedic.detector.detector import Suspicion
from nodemedic.engine.engine import Engine
from nodemedic.engine.state import EngineState, Phase, StateStore
from nodemedic.hostroot import HostRoot
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.safety import Guard
from nodemedic.repairs.step import Remedy, StepClass
from tests.unit.helpers import write


@dataclasses.dataclass
class FakeStep:
    """A step that records its calls; `heals` says whether its verification will pass."""

    name: str
    heals: bool
    klass: StepClass = StepClass.SAFE
    idempotent: bool = True
    applied: int = 0
    verified: int = 0

    async def needed(self, ctx) -> bool:
        return True

    async def apply(self, ctx) -> str:
        self.applied += 1
        return f"{self.name} applied"

    async def verify(self, ctx) -> bool:
        self.verified += 1
        return self.heals


def make_engine(tmp_path, steps, confirm=None, conf: str = ""):
    write(tmp_path, "/etc/nodemedic/conf.d/10-test.toml",
          '[policy]\nverify_attempts = 2\nverify_interval = "0s"\ncooldown = "1h"\n' + conf)
    root = HostRoot(tmp_path)
    settings = load_config(root).settings
    guard = Guard.from_paths([])
    store = StateStore(tmp_path / "state.json", guard)
    ctx = RepairContext(settings, root, guard, bus=None, cri=None, state=store.load())  # type: ignore[arg-type]
    confirms = {"demo": confirm} if confirm else {}
    return Engine(ctx, store, {"demo": Remedy("demo", tuple(steps))}, confirms), store


async def episode(engine):
    engine.suspect(Suspicion("demo", "demo-signature", "cursor-1"))
    await engine.idle()


def test_first_step_that_verifies_heals_and_the_rest_never_run(tmp_path):
    first, second = FakeStep("one", heals=True), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [first, second])
    asyncio.run(episode(engine))
    record = store.load().problems["demo"]
    assert record.phase == Phase.HEALED and record.step_name == "one"
    assert (first.applied, second.applied) == (1, 0)


def test_failed_verification_climbs_the_ladder(tmp_path):
    first, second = FakeStep("one", heals=False), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [first, second])
    asyncio.run(episode(engine))
    assert store.load().problems["demo"].phase == Phase.HEALED
    assert (first.applied, first.verified, second.applied) == (1, 2, 1)  # verify retried, then climbed


def test_unhealable_fault_stops_at_the_budget_as_exhausted(tmp_path):
    steps = [FakeStep(f"s{i}", heals=False) for i in range(4)]
    engine, store = make_engine(tmp_path, steps, conf="attempt_budget = 2\n")
    asyncio.run(episode(engine))
    record = store.load().problems["demo"]
    assert record.phase == Phase.EXHAUSTED and "budget of 2" in record.detail
    assert [s.applied for s in steps] == [1, 1, 0, 0]
    # a new suspicion of a still-broken exhausted problem does not start over
    asyncio.run(episode(engine))
    assert [s.applied for s in steps] == [1, 1, 0, 0]


def test_destructive_step_is_held_back_unless_allowed(tmp_path):
    gentle = FakeStep("gentle", heals=False)
    reset = FakeStep("reset", heals=True, klass=StepClass.DESTRUCTIVE)
    engine, store = make_engine(tmp_path, [gentle, reset])
    asyncio.run(episode(engine))
    record = store.load().problems["demo"]
    assert record.phase == Phase.EXHAUSTED and "destructive" in record.detail
    assert reset.applied == 0

    gentle2, reset2 = FakeStep("gentle", heals=False), FakeStep("reset", heals=True, klass=StepClass.DESTRUCTIVE)
    engine, store = make_engine(tmp_path / "allowed", [gentle2, reset2], conf="allow_destructive = true\n")
    asyncio.run(episode(engine))
    assert store.load().problems["demo"].phase == Phase.HEALED and reset2.applied == 1


def test_unconfirmed_suspicion_changes_nothing(tmp_path):
    step = FakeStep("one", heals=True)

    async def healthy(ctx) -> bool:
        return False

    engine, store = make_engine(tmp_path, [step], confirm=healthy)
    asyncio.run(episode(engine))
    assert store.load().problems["demo"].phase == Phase.IDLE and step.applied == 0


def test_observe_mode_and_cooldown_hold_repairs_back(tmp_path):
    step = FakeStep("one", heals=True)
    engine, store = make_engine(tmp_path, [step], conf='[daemon]\nmode = "observe"\n')
    asyncio.run(episode(engine))
    assert step.applied == 0 and store.load().problems["demo"].detail == "mode is observe"

    step = FakeStep("one", heals=True)
    engine, store = make_engine(tmp_path / "cool", [step])
    asyncio.run(episode(engine))
    asyncio.run(episode(engine))  # recurs at once: inside the 1h cooldown
    assert step.applied == 1
    assert "cooling down" in store.load().problems["demo"].detail


def test_state_is_persisted_before_the_step_runs(tmp_path):
    seen: list[str] = []

    class Snooping(FakeStep):
        async def apply(self, ctx) -> str:
            seen.append(json.loads((tmp_path / "state.json").read_text())["problems"]["demo"]["phase"])
            return await super().apply(ctx)

    engine, _ = make_engine(tmp_path, [Snooping("one", heals=True)])
    asyncio.run(episode(engine))
    assert seen == ["repairing"]


@pytest.mark.parametrize("heals", [True, False])
def test_resume_after_kill_verifies_and_never_reapplies(tmp_path, heals):
    first, second = FakeStep("one", heals=heals), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [first, second])
    state = EngineState()
    record = state.record("demo")
    record.phase, record.step, record.step_name, record.attempts = Phase.REPAIRING, 0, "one", 1
    store.save(state)  # what a daemon killed during step one's apply leaves behind
    engine.ctx.state = store.load()

    async def resume():
        engine.resume()
        await engine.idle()

    asyncio.run(resume())
    assert first.applied == 0 and first.verified >= 1
    record = store.load().problems["demo"]
    assert record.phase == Phase.HEALED
    assert record.step_name == ("one" if heals else "two")
    assert second.applied == (0 if heals else 1)


def test_corrupt_state_file_is_kept_aside_and_the_daemon_starts_clean(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    state = StateStore(path, Guard.from_paths([])).load()
    assert state.problems == {}
    assert (tmp_path / "state.corrupt").read_text() == "{not json"


def test_a_reload_that_allows_destructive_steps_restarts_a_held_back_ladder(tmp_path):
    gentle, reset = FakeStep("gentle", heals=False), FakeStep("reset", heals=True, klass=StepClass.DESTRUCTIVE)
    engine, store = make_engine(tmp_path, [gentle, reset])

    async def scenario() -> None:
        await episode(engine)
        assert engine.ctx.state.problems["demo"].phase == Phase.EXHAUSTED
        engine.retry_after_reload()  # the same policy: nothing is re-tried
        await engine.idle()
        assert (gentle.applied, reset.applied) == (1, 0)
        engine.ctx.settings = dataclasses.replace(
            engine.ctx.settings, policy=dataclasses.replace(engine.ctx.settings.policy, allow_destructive=True))
        engine.retry_after_reload()
        await engine.idle()

    asyncio.run(scenario())
    assert store.load().problems["demo"].phase == Phase.HEALED
    assert (gentle.applied, reset.applied) == (2, 1)


def test_forget_and_repair_are_not_blocked_by_an_exhausted_problems_recheck(tmp_path):
    step = FakeStep("one", heals=False)
    probing = asyncio.Event()

    async def still_broken(ctx) -> bool:
        probing.set()
        await asyncio.sleep(3600)  # a re-check that would take its time
        return True

    async def scenario() -> None:
        engine, store = make_engine(tmp_path, [step])
        await episode(engine)
        assert engine.ctx.state.problems["demo"].phase == Phase.EXHAUSTED
        engine.confirms = {"demo": still_broken}
        engine.suspect(Suspicion("demo", "demo-signature", "cursor-2"))  # news: "has it cleared?"
        await probing.wait()
        assert not engine.running("demo"), "a re-check is not a repair: forget/repair must not be refused"
        engine.confirms = {}
        engine.repair_now("demo")
        await asyncio.wait_for(engine.idle(), 5)
        assert step.applied == 2  # the operator's repair ran the ladder again

    asyncio.run(scenario())


def test_a_probe_that_raises_confirms_nothing_and_the_engine_lives_on(tmp_path):
    step = FakeStep("one", heals=True)

    async def cannot_look(ctx) -> bool:
        raise OSError("netlink went away")

    engine, store = make_engine(tmp_path, [step], confirm=cannot_look)
    asyncio.run(episode(engine))
    assert store.load().problems["demo"].phase == Phase.IDLE and step.applied == 0
