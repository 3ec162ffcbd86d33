"""The remedy engine's state machine, driven with recording test steps (FakeStep) on a tmp root.
The real steps are exercised against a booted node in tests/node/."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from nodemedic.config import load_config
from nodemedic.detector.detector import Suspicion
from nodemedic.engine.engine import Engine
from nodemedic.hostroot import HostRoot
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.step import Remedy, StepClass
from nodemedic.safety import Guard
from nodemedic.state import EngineState, Phase, StateStore
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
    # Step.idempotent = False: a step that must never run twice (an idempotent one may be
    # applied again, see test_an_interrupted_idempotent_step_is_applied_again_when_it_did_not_verify).
    first, second = FakeStep("one", heals=heals, idempotent=False), FakeStep("two", heals=True)
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


def interrupted(store, step: str = "one", index: int = 0, phase: Phase = Phase.REPAIRING,
                undo: tuple[str, ...] = ()) -> None:
    """What a daemon killed during `step`'s apply leaves behind in state.json."""
    state = EngineState()
    record = state.record("demo")
    record.phase, record.step, record.step_name, record.attempts = phase, index, step, 1
    record.undo = list(undo)
    store.save(state)


async def resumed(engine, store) -> None:
    engine.ctx.state = store.load()
    engine.resume()
    await engine.idle()


def test_an_interrupted_idempotent_step_is_applied_again_when_it_did_not_verify(tmp_path):
    class HealsOnceApplied(FakeStep):
        async def verify(self, ctx) -> bool:
            self.verified += 1
            return self.applied > 0  # killed before it finished: only a complete apply heals

    first, second = HealsOnceApplied("one", heals=True), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [first, second])
    interrupted(store)
    asyncio.run(resumed(engine, store))
    record = store.load().problems["demo"]
    assert record.phase == Phase.HEALED and record.step_name == "one"
    assert (first.applied, second.applied) == (1, 0)
    # killed while verifying (the apply had finished): verified, never applied again
    first, second = HealsOnceApplied("one", heals=True), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path / "verifying", [first, second])
    interrupted(store, phase=Phase.VERIFYING)
    asyncio.run(resumed(engine, store))
    assert (first.applied, second.applied) == (0, 1)


class RecordingBus:
    """Stands in for systemd's D-Bus manager (a mock: unit tests have no systemd); records calls
    in order. `fail` makes StartUnit of that unit end in a failed job."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    async def unit_job(self, verb: str, unit: str, timeout: float) -> str:
        self.calls.append((verb, unit))
        return "failed" if verb == "StartUnit" and unit == self.fail else "done"

    async def reset_failed(self, unit: str) -> None:
        self.calls.append(("ResetFailedUnit", unit))


@dataclasses.dataclass
class StoppingStep(FakeStep):
    """Stops kubelet then containerd the way the real steps do (repairs.units.stop_unit), then
    fails: `fail_after` stops."""

    fail_after: int = 2
    undo_on_disk: list = dataclasses.field(default_factory=list)

    async def apply(self, ctx) -> str:
        from nodemedic.repairs.units import stop_unit

        self.applied += 1
        for number, unit in enumerate(("kubelet.service", "containerd.service"), start=1):
            await stop_unit(ctx, unit)
            # recorded on disk before the stop went out
            self.undo_on_disk.append(json.loads(ctx.root.path("/state.json").read_text())["problems"]["demo"]["undo"])
            if number == self.fail_after:
                raise RuntimeError("refused after stopping the units: 1 container shim(s) running")
        return "stopped"


def test_a_step_that_fails_after_stopping_units_has_them_started_again_before_the_ladder_climbs(tmp_path):
    stopping, second = StoppingStep("reset", heals=True, idempotent=False), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [stopping, second])
    bus = engine.ctx.bus = RecordingBus()
    climbed_after: list[list] = []
    second_apply = second.apply

    async def apply(ctx) -> str:
        climbed_after.append(list(bus.calls))
        return await second_apply(ctx)

    second.apply = apply
    asyncio.run(episode(engine))
    assert stopping.undo_on_disk == [["kubelet.service"], ["kubelet.service", "containerd.service"]]
    # started again in reverse order of stopping: containerd before kubelet, before step two
    assert [c for c in climbed_after[0] if c[0] == "StartUnit"] == [("StartUnit", "containerd.service"),
                                                                     ("StartUnit", "kubelet.service")]
    record = store.load().problems["demo"]
    assert record.phase == Phase.HEALED and record.step_name == "two" and record.undo == []


def test_a_step_timing_out_after_a_stop_is_undone(tmp_path):
    @dataclasses.dataclass
    class Hangs(FakeStep):
        async def apply(self, ctx) -> str:
            from nodemedic.repairs.units import stop_unit

            await stop_unit(ctx, "kubelet.service")
            await asyncio.sleep(3600)
            return "never"

    engine, store = make_engine(tmp_path, [Hangs("hang", heals=True)], conf='step_timeout = "1s"\n')
    bus = engine.ctx.bus = RecordingBus()
    asyncio.run(episode(engine))
    assert ("StartUnit", "kubelet.service") in bus.calls
    assert store.load().problems["demo"].undo == []


@pytest.mark.parametrize("undo", [("kubelet.service",), ("kubelet.service", "containerd.service")])
def test_resume_starts_what_the_killed_step_stopped_before_verifying(tmp_path, undo):
    order: list[str] = []

    class Watching(FakeStep):
        async def verify(self, ctx) -> bool:
            order.append("verify")
            return await super().verify(ctx)

    step, second = Watching("move-aside", heals=False, idempotent=False), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [step, second])
    bus = engine.ctx.bus = RecordingBus()
    real_job = bus.unit_job

    async def job(verb, unit, timeout):
        order.append(f"{verb} {unit}")
        return await real_job(verb, unit, timeout)

    bus.unit_job = job
    interrupted(store, step="move-aside", undo=undo)
    asyncio.run(resumed(engine, store))
    starts = [f"StartUnit {unit}" for unit in reversed(undo)]
    assert order[:len(starts) + 1] == [*starts, "verify"]
    assert step.applied == 0  # not idempotent: never applied again, the ladder climbed
    record = store.load().problems["demo"]
    assert record.phase == Phase.HEALED and record.step_name == "two" and record.undo == []


def test_a_unit_that_will_not_start_again_is_reported_and_the_ladder_goes_on(tmp_path):
    stopping, second = StoppingStep("reset", heals=True, idempotent=False), FakeStep("two", heals=False)
    engine, store = make_engine(tmp_path, [stopping, second])
    engine.ctx.bus = RecordingBus(fail="containerd.service")
    asyncio.run(episode(engine))
    record = store.load().problems["demo"]
    assert record.phase == Phase.EXHAUSTED and record.undo == []


# -- persistence failures (issue 18, item 5) -----------------------------------------------

class FailingStore(StateStore):
    """The real store whose writes fail the way an immutable state.json does (chattr +i: EPERM)."""

    failing = True

    def save(self, state) -> None:
        if self.failing:
            raise PermissionError(1, "Operation not permitted", str(self.path))
        super().save(state)


def failing_engine(tmp_path, steps):
    engine, _ = make_engine(tmp_path, steps)
    store = FailingStore(engine.store.path, engine.store.guard)
    engine.store = store
    return engine, store


def test_a_failed_state_write_runs_only_idempotent_steps_and_is_reported_once(tmp_path, capfd):
    safe, once = FakeStep("safe", heals=False), FakeStep("move-aside", heals=True, idempotent=False)
    engine, store = failing_engine(tmp_path, [safe, once])
    asyncio.run(episode(engine))
    record = engine.ctx.state.problems["demo"]
    assert (safe.applied, once.applied) == (1, 0)
    assert record.phase == Phase.EXHAUSTED and "state cannot be saved" in record.detail
    assert engine.persist_error == "Operation not permitted"
    err = capfd.readouterr().err
    assert err.count("cannot save the engine's state") == 1, err  # once, not once per write

    # a write succeeds again: reported, and the held-back problem is looked at once more
    store.failing = False

    async def recovered() -> None:
        engine.save()
        await asyncio.sleep(0)
        await engine.idle()

    asyncio.run(recovered())
    assert engine.persist_error == ""
    assert "saved to" in capfd.readouterr().err
    assert once.applied == 1 and store.load().problems["demo"].phase == Phase.HEALED


def test_an_engine_task_that_raises_is_reported_and_never_left_repairing(tmp_path, capfd):
    @dataclasses.dataclass
    class Broken(FakeStep):
        async def verify(self, ctx) -> bool:
            raise AssertionError("unreachable")

    engine, store = make_engine(tmp_path, [Broken("one", heals=True)])

    async def scenario() -> None:
        original = engine._verify

        async def crashing(step):  # a bug in the engine itself, not in a step
            raise KeyError("bug")

        engine._verify = crashing
        await episode(engine)
        engine._verify = original

    asyncio.run(scenario())
    record = store.load().problems["demo"]
    assert record.phase == Phase.EXHAUSTED and "internal error: KeyError" in record.detail
    assert engine.current is None
    assert "the engine's task failed" in capfd.readouterr().err


def test_a_corrupt_state_file_in_a_read_only_dir_still_loads(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_text("{torn")

    def read_only(self, target):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(type(path), "rename", read_only)
    assert StateStore(path, Guard.from_paths([])).load().problems == {}


# -- the pause (item 7) ----------------------------------------------------------------------

def test_a_pause_outlives_a_restart(tmp_path):
    step = FakeStep("one", heals=True)
    engine, store = make_engine(tmp_path, [step])
    engine.gate.paused = True
    engine.save()
    engine, store = make_engine(tmp_path, [step])  # a new daemon on the same state
    assert engine.gate.paused
    asyncio.run(episode(engine))
    assert step.applied == 0 and "paused" in store.load().problems["demo"].detail


def test_a_paused_daemon_resuming_a_step_applies_nothing_more_until_resumed(tmp_path):
    first, second = FakeStep("one", heals=False, idempotent=False), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [first, second])
    interrupted(store)
    state = store.load()
    state.paused = True  # paused (and saved) before the daemon was killed
    store.save(state)
    asyncio.run(resumed(engine, store))
    record = store.load().problems["demo"]
    assert (first.applied, second.applied) == (0, 0) and first.verified >= 1
    assert record.phase == Phase.CONFIRMED and "paused" in record.detail

    async def resume_repairs() -> None:
        engine.gate.paused = False
        engine.retry_held()
        await engine.idle()

    asyncio.run(resume_repairs())
    assert second.applied == 1 and store.load().problems["demo"].phase == Phase.HEALED


@dataclasses.dataclass
class ReloadedDuring(FakeStep):
    """A step during which the operator changes the configuration and reloads the daemon."""

    root: object = None
    conf: str = ""
    engine: object = None

    async def apply(self, ctx) -> str:
        write(self.root, "/etc/nodemedic/conf.d/60-operator.toml", self.conf)
        self.engine.ctx.settings = load_config(HostRoot(self.root)).settings  # what reload does
        return await super().apply(ctx)


@pytest.mark.parametrize(("conf", "why"), [
    ('[daemon]\nmode = "observe"\n', "mode is observe"),
    ("[problems.demo]\nenabled = false\n", "disabled in configuration"),
], ids=["observe", "disabled"])
def test_a_reload_during_a_step_to_observe_or_disabling_the_problem_stops_the_ladder_after_it(tmp_path, conf, why):
    """The step under way finishes; the next one (here a destructive one the same reload
    allowed) is never started. A ladder that climbed on once the operator said stop is how a
    disabled problem reached a node reset in a CI run."""
    first = ReloadedDuring("one", heals=False, root=tmp_path, conf=conf + "[policy]\nallow_destructive = true\n")
    second = FakeStep("two", heals=True, klass=StepClass.DESTRUCTIVE)
    engine, store = make_engine(tmp_path, [first, second])
    first.engine = engine
    asyncio.run(episode(engine))
    record = store.load().problems["demo"]
    assert (first.applied, second.applied) == (1, 0)
    assert record.phase == Phase.CONFIRMED and record.detail == f"next step two held back: {why}", record.detail


def test_an_operators_repair_of_a_disabled_problem_climbs_on(tmp_path):
    """Disabled is for automation: `nodemedic repair` of a disabled problem is not stopped."""
    first = ReloadedDuring("one", heals=False, root=tmp_path, conf="[problems.demo]\nenabled = false\n")
    second = FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [first, second])
    first.engine = engine

    async def forced() -> None:
        engine.suspect(Suspicion("demo", "operator", detail="repair requested by the operator", forced=True))
        await engine.idle()

    asyncio.run(forced())
    assert (first.applied, second.applied) == (1, 1) and store.load().problems["demo"].phase == Phase.HEALED


def confirm_with(engine, monkeypatch, attempts: int, interval: float, take: bool) -> list[float]:
    """Run one episode with this verify schedule; the sleeps the engine asked for (taken, or
    cut to nothing)."""
    engine.ctx.settings = dataclasses.replace(engine.ctx.settings, policy=dataclasses.replace(
        engine.ctx.settings.policy, verify_attempts=attempts, verify_interval=interval))
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float, *args, **kwargs) -> None:
        asked.append(seconds)
        await real_sleep(seconds if take else 0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    asyncio.run(episode(engine))
    return asked


class CountingProbe:
    """A confirming probe that counts its looks and sees the fault from look `broken_from` on
    (never when 0)."""

    def __init__(self, broken_from: int) -> None:
        self.broken_from, self.calls = broken_from, 0

    async def __call__(self, ctx) -> bool:
        self.calls += 1
        return 0 < self.broken_from <= self.calls


def test_a_suspicion_is_looked_at_again_soon_first(tmp_path, monkeypatch):
    """containerd may notice a removed CNI config a few ms after nodemedic: the second look
    comes after 10 ms, not after a whole verify_interval, and doubles from there."""
    probe, step = CountingProbe(broken_from=4), FakeStep("one", heals=True)
    engine, store = make_engine(tmp_path, [step], confirm=probe)
    asked = confirm_with(engine, monkeypatch, attempts=5, interval=1.0, take=False)
    assert probe.calls == 4 and step.applied == 1
    assert asked[:3] == [0.01, 0.02, 0.04], asked


def test_a_suspicion_gets_at_least_its_looks_and_the_waits_grow_to_verify_interval(tmp_path, monkeypatch):
    """Soon first, but never fewer looks than verify_attempts, and the waits grow to
    verify_interval (the window, attempts − 1 intervals, is kept by tenacity's clock)."""
    probe, step = CountingProbe(broken_from=0), FakeStep("one", heals=True)
    engine, store = make_engine(tmp_path, [step], confirm=probe)
    asked = confirm_with(engine, monkeypatch, attempts=3, interval=0.05, take=True)
    assert step.applied == 0 and store.load().problems["demo"].phase == Phase.IDLE
    waits = [a for a in asked if a > 0]
    assert probe.calls >= 3 and waits[:3] == [0.01, 0.02, 0.04] and max(waits) == 0.05, waits


# -- the cooldown gates a flap, not a new fault (item 11) -------------------------------------

@dataclasses.dataclass
class Conditional(FakeStep):
    """Needed only while `faults` says its fault is there; applying it clears that fault."""

    faults: set = dataclasses.field(default_factory=set)

    async def needed(self, ctx) -> bool:
        return self.name in self.faults

    async def apply(self, ctx) -> str:
        self.faults.discard(self.name)
        return await super().apply(ctx)


def test_a_different_fault_of_the_same_problem_is_repaired_at_once_after_a_heal(tmp_path):
    faults = {"placeholder"}
    placeholder = Conditional("placeholder", heals=True, faults=faults)
    restart = Conditional("restart", heals=True, faults=faults)
    engine, store = make_engine(tmp_path, [placeholder, restart])  # cooldown = 1h
    asyncio.run(episode(engine))
    assert store.load().problems["demo"].healed_by == "placeholder"
    faults.add("restart")  # seconds later: the config is there, the runtime did not load it
    asyncio.run(episode(engine))
    assert (placeholder.applied, restart.applied) == (1, 1)
    assert store.load().problems["demo"].phase == Phase.HEALED


def test_a_flap_of_the_same_step_still_backs_off_exponentially(tmp_path):
    faults = {"placeholder"}
    placeholder = Conditional("placeholder", heals=True, faults=faults)
    engine, store = make_engine(tmp_path, [placeholder], conf='cooldown_max = "10h"\n')
    waits = []
    for _ in range(3):
        faults.add("placeholder")
        asyncio.run(episode(engine))
        record = store.load().problems["demo"]
        waits.append(round((record.not_before - record.last_change) / 3600))
        record = engine.ctx.state.problems["demo"]
        record.not_before = 0.0  # the cooldown has passed
    assert placeholder.applied == 3 and waits == [1, 2, 4]
    # inside the cooldown the same step is held back
    faults.add("placeholder")
    engine.ctx.state.problems["demo"].not_before = time.time() + 60
    asyncio.run(episode(engine))
    assert placeholder.applied == 3 and "cooling down" in store.load().problems["demo"].detail


def test_a_live_fault_after_a_heal_waits_for_the_probe_to_catch_up_and_a_late_line_does_not(tmp_path):
    """After a heal, the CNI dir emptied again: containerd's CRI status still says ready at the
    first look (it reloads on its own fsnotify event). A live finding gets the confirmation's
    chances and is repaired; a late journal line about the healed outage is dismissed."""
    looks = []

    async def broken_from_the_second_look(ctx) -> bool:
        looks.append(1)
        return len(looks) % 2 == 0  # each episode: healthy at the first look, broken at the next

    step = FakeStep("placeholder", heals=True)
    engine, store = make_engine(tmp_path, [step], confirm=broken_from_the_second_look)
    asyncio.run(episode(engine))
    assert store.load().problems["demo"].phase == Phase.HEALED and step.applied == 1
    looks.clear()
    asyncio.run(episode(engine))  # a late line: one look, healthy
    assert step.applied == 1 and len(looks) == 1 and store.load().problems["demo"].phase == Phase.HEALED
    looks.clear()
    engine.ctx.state.problems["demo"].not_before = 0.0  # the cooldown has passed

    async def live_episode() -> None:
        engine.suspect(Suspicion("demo", "path:cni_conf_dir", detail="no CNI config", live=True))
        await engine.idle()

    asyncio.run(live_episode())
    assert step.applied == 2 and store.load().problems["demo"].phase == Phase.HEALED
