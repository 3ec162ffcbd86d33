"""What the engine tells its reporters, and the fan-out that tells each of them.

The interface lives here, beside the engine that emits it, so that the engine never imports the
reporters (report/ sits above it); the daemon assembles the list (report/reporters.py). Adding a
reporter is one module and one entry in that list (node-problem-detector's types.Exporter is the
model).

Reporters are called synchronously on the engine's path and must be cheap: one that does slow
I/O schedules it (the metrics file: report/metrics.py) instead of doing it in the call. One that
raises is reported once and never stops the engine or the reporters after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from nodemedic.report.journal import ERR, NOTICE, Kind, log
from nodemedic.state import Phase, ProblemRecord


@dataclass(frozen=True)
class Transition:
    """A problem moved to `phase`; `kind` is the journal entry it warrants (None: none of its own)."""

    problem: str
    phase: Phase
    detail: str
    kind: Kind | None = None
    priority: int = NOTICE


@dataclass(frozen=True)
class StepFinished:
    """A step of a problem's ladder was applied and verified ("ok") or not ("failed")."""

    problem: str
    step: str
    result: str
    detail: str = ""
    error: str = ""
    resumed: bool = False


class Reporter(Protocol):
    """What the engine calls. A reporter overrides what it needs; the rest are no-ops."""

    def on_transition(self, record: ProblemRecord | None, transition: Transition) -> None:
        """A problem changed phase (record None: the operator forgot it)."""

    def on_step(self, record: ProblemRecord, step: StepFinished) -> None:
        """A repair step finished."""

    def on_change(self) -> None:
        """Anything else a view shows changed: the state was saved or could not be, the current
        step, a pause. Called before every transition too."""


class Fanout:
    """Calls every reporter in turn; one that raises is reported (once, until it works again)
    and the others, and the engine, carry on."""

    def __init__(self, reporters: Iterable[Reporter] = ()) -> None:
        self.reporters: list[Reporter] = list(reporters)
        self._failing: set[int] = set()  # id() of reporters whose failure is already reported

    def on_transition(self, record: ProblemRecord | None, transition: Transition) -> None:
        for reporter in self.reporters:
            self._call(reporter, "on_transition", record, transition)

    def on_step(self, record: ProblemRecord, step: StepFinished) -> None:
        for reporter in self.reporters:
            self._call(reporter, "on_step", record, step)

    def on_change(self) -> None:
        for reporter in self.reporters:
            self._call(reporter, "on_change")

    def _call(self, reporter: Reporter, what: str, *args: object) -> None:
        try:
            getattr(reporter, what)(*args)
        except Exception as err:  # noqa: BLE001 - a reporter never stops the engine or the others
            if id(reporter) not in self._failing:
                self._failing.add(id(reporter))
                name = type(reporter).__name__
                log(Kind.TASK_FAILED, f"reporter {name} failed in {what}: {type(err).__name__}: {err}; "
                    "reported once until it works again", ERR, reporter=name, error=f"{type(err).__name__}: {err}")
        else:
            self._failing.discard(id(reporter))
