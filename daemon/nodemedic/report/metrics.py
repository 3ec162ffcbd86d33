"""Prometheus textfile for node-exporter's textfile collector, rewritten atomically on every
change and never on a timer: an idle daemon leaves the file (and the disk) alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest

from nodemedic.engine.reporting import StepFinished, Transition
from nodemedic.report.journal import WARNING, Kind, log
from nodemedic.safety import Guard, UnsafeOperation, atomic_write, ensure_dir
from nodemedic.state import Phase, ProblemRecord

if TYPE_CHECKING:  # the type only: the reporter is handed the daemon's engine
    from nodemedic.engine.engine import Engine

disable_created_metrics()


class Metrics:
    def __init__(self, path: Path | None, guard: Guard, create_dir: bool) -> None:
        self.path = path
        self.guard = guard
        self.create_dir = create_dir
        self._warned = False
        self._written = b""
        self._seen_entries = 0
        self._seen_hits: dict[str, int] = {}
        self.registry = registry = CollectorRegistry()
        self.problems = Gauge("nodemedic_problems", "Problems known to nodemedic, by state.", ["state"],
                              registry=registry)
        self.problem_state = Gauge("nodemedic_problem_state", "1 for the state each problem is in.",
                                   ["problem", "state"], registry=registry)
        self.repairs = Counter("nodemedic_repairs", "Repair steps run, by problem, step and result.",
                               ["problem", "step", "result"], registry=registry)
        self.last_repair = Gauge("nodemedic_last_repair_timestamp_seconds",
                                 "When the last repair step finished (Unix time).", registry=registry)
        self.entries = Counter("nodemedic_journal_entries_read", "Journal entries read from the watched units.",
                               registry=registry)
        self.save_failing = Gauge("nodemedic_state_save_failing",
                                  "1 while the engine's state cannot be saved (non-idempotent steps held back).",
                                  registry=registry)
        self.hits = Counter("nodemedic_signature_hits", "Journal lines that matched a signature.", ["signature"],
                            registry=registry)

    def step_finished(self, problem: str, step: str, result: str) -> None:
        self.repairs.labels(problem, step, result).inc()
        self.last_repair.set(time.time())

    def update(self, records: Iterable[ProblemRecord], entries_read: int, hits: Mapping[str, int],
               state_save_failing: bool = False) -> None:
        """Bring every series up to date and rewrite the file if anything changed."""
        records = list(records)
        self.save_failing.set(1 if state_save_failing else 0)
        self.problem_state.clear()
        for phase in Phase:
            self.problems.labels(phase.value).set(sum(1 for r in records if r.phase == phase))
        for record in records:
            self.problem_state.labels(record.problem, record.phase.value).set(1)
        self.entries.inc(max(0, entries_read - self._seen_entries))
        self._seen_entries = entries_read
        for signature, count in hits.items():
            before = self._seen_hits.get(signature, 0)
            # a reload starts the detector's counts afresh: count from zero again
            self.hits.labels(signature).inc(count - before if count >= before else count)
            self._seen_hits[signature] = count
        self.write()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def write(self) -> None:
        if self.path is None:
            return
        if not self.path.parent.is_dir():
            if not self.create_dir:
                if not self._warned:  # once, not on every change
                    log(Kind.SOURCE_TROUBLE, f"metrics: {self.path.parent} does not exist (no node-exporter "
                        "textfile collector?); not writing metrics", WARNING)
                    self._warned = True
                return
            try:
                ensure_dir(self.guard, self.path.parent)
            except (OSError, UnsafeOperation) as err:
                self._warn(f"metrics: cannot create {self.path.parent}: {err}")
                return
        text = self.render()
        if text == self._written:
            return  # nothing changed: leave the file and the disk alone
        try:
            atomic_write(self.guard, self.path, text, mode=0o644)
            self._written = text
        except OSError as err:
            self._warn(f"metrics: cannot write {self.path}: {err.strerror}")
        except UnsafeOperation as err:  # a protected path: refused, reported, never raised
            self._warn(f"metrics: refused to write {self.path}: {err}")

    def _warn(self, message: str) -> None:
        if not self._warned:  # once, not on every change
            log(Kind.SOURCE_TROUBLE, message, WARNING)
            self._warned = True


class MetricsReporter:
    """Counts finished steps; on any change brings the series up to date and rewrites the file.
    The write (an fsync'd atomic replace) is scheduled on the loop, never done in the engine's
    call: several changes in one turn of the loop are one write."""

    def __init__(self, metrics: Metrics, engine: Engine, counters: Callable[[], tuple[int, Mapping[str, int]]]) -> None:
        self.metrics = metrics
        self.engine = engine
        self.counters = counters  # (journal entries read, hits per signature): their holders change at reload
        self._pending = False

    def on_transition(self, record: ProblemRecord | None, transition: Transition) -> None:
        pass  # every transition is preceded by on_change

    def on_step(self, record: ProblemRecord, step: StepFinished) -> None:
        self.metrics.step_finished(step.problem, step.step, step.result)

    def on_change(self) -> None:
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a one-shot command): at once
            self.update()
            return
        self._pending = True
        loop.call_soon(self.update)

    def update(self) -> None:
        self._pending = False
        entries, hits = self.counters()
        self.metrics.update(self.engine.ctx.state.problems.values(), entries, hits,
                            state_save_failing=bool(self.engine.persist_error))
