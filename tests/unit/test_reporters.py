"""Issue 17: reporters behind one interface (engine/reporting.py), and the node's own conditions
(detector/conditions/) registering themselves and changing the node only through the engine
(engine/tidy.py)."""

from __future__ import annotations

import asyncio
import textwrap
from types import SimpleNamespace

import pytest

from nodemedic.detector import conditions
from nodemedic.detector.conditions import NodeView, PathCondition, Tidy, UnitCondition
from nodemedic.detector.conditions.cni_dir import CniConfDir
from nodemedic.detector.detector import Suspicion
from nodemedic.engine.reporting import Fanout, StepFinished, Transition
from nodemedic.engine.tidy import Tidier
from nodemedic.report.metrics import MetricsReporter
from nodemedic.safety import Guard, UnsafeOperation
from nodemedic.state import Phase
from tests.unit.helpers import write
from tests.unit.test_engine import FakeStep, episode, make_engine

PLACEHOLDER = "/etc/cni/net.d/zz-nodemedic-placeholder.conflist"
REAL = "/etc/cni/net.d/10-real.conflist"


class Recorder:
    def __init__(self) -> None:
        self.transitions: list[tuple[str, Phase]] = []
        self.steps: list[StepFinished] = []
        self.changes = 0

    def on_transition(self, record, transition: Transition) -> None:
        self.transitions.append((transition.problem, transition.phase))

    def on_step(self, record, step: StepFinished) -> None:
        self.steps.append(step)

    def on_change(self) -> None:
        self.changes += 1


class Boom:
    """A reporter whose every call raises."""

    def on_transition(self, record, transition) -> None:
        raise RuntimeError("transition reporter broke")

    def on_step(self, record, step) -> None:
        raise RuntimeError("step reporter broke")

    def on_change(self) -> None:
        raise RuntimeError("change reporter broke")


def test_a_reporter_that_raises_stops_neither_the_engine_nor_the_others(tmp_path, capfd):
    first, second = FakeStep("one", heals=False), FakeStep("two", heals=True)
    engine, store = make_engine(tmp_path, [first, second])
    recorder = Recorder()
    engine.reporters = Fanout([Boom(), recorder])  # the broken one first: the recorder still hears all
    asyncio.run(episode(engine))
    assert store.load().problems["demo"].phase == Phase.HEALED
    assert recorder.transitions == [("demo", Phase.SUSPECTED), ("demo", Phase.CONFIRMED), ("demo", Phase.REPAIRING),
                                    ("demo", Phase.VERIFYING), ("demo", Phase.REPAIRING), ("demo", Phase.VERIFYING),
                                    ("demo", Phase.HEALED)]
    assert [(s.step, s.result) for s in recorder.steps] == [("one", "failed"), ("two", "ok")]
    assert recorder.changes >= len(recorder.transitions)  # every transition is preceded by a change
    err = capfd.readouterr().err
    assert err.count("reporter Boom failed") == 1, err  # once, not once per call


def test_a_reporter_that_works_again_is_reported_again_when_it_next_fails(capfd):
    flaky = SimpleNamespace(broken=True)

    def on_change() -> None:
        if flaky.broken:
            raise OSError("no space")

    flaky.on_change = on_change
    fanout = Fanout([flaky])
    fanout.on_change()
    fanout.on_change()
    flaky.broken = False
    fanout.on_change()
    flaky.broken = True
    fanout.on_change()
    assert capfd.readouterr().err.count("failed in on_change: OSError: no space") == 2


def test_the_metrics_write_is_scheduled_not_done_in_the_engines_call():
    updates: list[int] = []
    metrics = SimpleNamespace(update=lambda records, entries, hits, state_save_failing: updates.append(entries))
    engine = SimpleNamespace(ctx=SimpleNamespace(state=SimpleNamespace(problems={})), persist_error="")
    reporter = MetricsReporter(metrics, engine, lambda: (7, {}))  # type: ignore[arg-type]

    async def changes() -> list[int]:
        for _ in range(3):
            reporter.on_change()
        during = list(updates)
        await asyncio.sleep(0)
        return during

    assert asyncio.run(changes()) == []  # nothing written inside the calls
    assert updates == [7]  # three changes in one turn of the loop: one write


# -- conditions register by being a module --------------------------------------------------------

def test_the_conditions_are_the_modules_of_their_package():
    paths, units = conditions.registered()
    assert [c.name for c in paths] == ["cni_conf_dir", "ingest_dir"]
    assert [c.name for c in units] == ["unit_states"]


def test_adding_a_condition_is_adding_a_module(tmp_path, monkeypatch):
    (tmp_path / "nmtest_flag.py").write_text(textwrap.dedent('''
        from nodemedic.detector.conditions.base import PathCondition
        from nodemedic.detector.detector import Suspicion

        class Flag(PathCondition):
            name = "nmtest_flag"

            def path(self, settings, root):
                return root.path("/run/nmtest")

            def check(self, view):
                return [Suspicion("nmtest", "path:nmtest_flag")]

        CONDITION = Flag()
    '''))
    monkeypatch.setattr(conditions, "__path__", [*conditions.__path__, str(tmp_path)])
    paths, _units = conditions.registered()
    assert "nmtest_flag" in [c.name for c in paths]
    assert all(isinstance(c, PathCondition) for c in paths) and all(isinstance(c, UnitCondition) for c in _units)


# -- the CNI dir: findings, and the placeholder's removal through the engine ------------------------

def cni_view(tmp_path, engine) -> NodeView:
    return NodeView(engine.ctx.settings, engine.ctx.root, engine.ctx.state, "containerd.service")


def test_cni_dir_findings(tmp_path):
    engine, _ = make_engine(tmp_path, [])
    condition = CniConfDir()
    [missing] = condition.check(cni_view(tmp_path, engine))
    assert isinstance(missing, Suspicion) and missing.problem == "cni-config-missing"
    write(tmp_path, PLACEHOLDER, "{}")
    assert condition.check(cni_view(tmp_path, engine)) == []
    write(tmp_path, REAL, "{}")
    [tidy] = condition.check(cni_view(tmp_path, engine))
    assert isinstance(tidy, Tidy)
    engine.ctx.state.record("cni-config-missing").move(Phase.EXHAUSTED, "waits for an operator")
    assert [type(f) for f in condition.check(cni_view(tmp_path, engine))] == [Tidy, Suspicion]


@pytest.mark.parametrize("hold", ["observe", "paused"])
def test_the_placeholder_gives_way_only_through_the_gate(tmp_path, capfd, hold):
    engine, store = make_engine(tmp_path, [], conf='[daemon]\nmode = "observe"\n' if hold == "observe" else "")
    engine.gate.paused = hold == "paused"
    placeholder, _ = write(tmp_path, PLACEHOLDER, "{}"), write(tmp_path, REAL, "{}")
    [tidy] = CniConfDir().check(cni_view(tmp_path, engine))
    recorder = Recorder()
    engine.reporters = Fanout([recorder])
    Tidier(engine).request(tidy)
    assert placeholder.exists(), "held by the gate: nothing changed on the node"
    assert store.load().real_cni_seen, "what was seen is still remembered"
    engine.gate.paused = False
    engine.ctx.settings = make_engine(tmp_path, [])[0].ctx.settings  # repair mode
    before = recorder.changes
    Tidier(engine).request(tidy)
    assert not placeholder.exists()
    assert "removed placeholder CNI config" in capfd.readouterr().err
    assert recorder.changes > before, "the views hear of it"


def test_a_refused_placeholder_removal_propagates_for_the_daemon_to_report(tmp_path):
    engine, _ = make_engine(tmp_path, [])
    placeholder, _ = write(tmp_path, PLACEHOLDER, "{}"), write(tmp_path, REAL, "{}")
    engine.ctx.guard = Guard.from_paths([tmp_path / "etc/cni/net.d"])
    with pytest.raises(UnsafeOperation):
        Tidier(engine).request(Tidy("real-cni-config", "removing the superseded placeholder CNI config"))
    assert placeholder.exists()


def test_the_daemon_assembles_the_four_reporters_and_watches_what_the_conditions_declare(tmp_path):
    from nodemedic.daemon import Daemon, load
    from nodemedic.hostroot import HostRoot

    root = HostRoot(tmp_path)
    daemon = Daemon(root, load(root))
    assert [type(r).__name__ for r in daemon.reporters.reporters] == [
        "MetricsReporter", "StatusReporter", "DbusSignals", "JournalReporter"]
    assert daemon.engine.reporters is daemon.reporters
    assert daemon.paths.watches == {
        "cni_conf_dir": tmp_path / "etc/cni/net.d",
        "ingest_dir": tmp_path / "var/lib/containerd/io.containerd.content.v1.content/ingest"}
    assert daemon.controller.api_mode() == "repair"
    assert daemon.controller.api_state().startswith("watching ") and "healthy" in daemon.controller.api_state()
