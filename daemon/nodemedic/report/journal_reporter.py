"""The journal reporter: one structured entry per reported transition and per finished step
(MESSAGE_IDs in report/journal.py, explained in units/nodemedic.catalog)."""

from __future__ import annotations

from nodemedic.engine.reporting import StepFinished, Transition
from nodemedic.report.journal import INFO, WARNING, Kind, log
from nodemedic.state import ProblemRecord


class JournalReporter:
    def on_transition(self, record: ProblemRecord | None, transition: Transition) -> None:
        if transition.kind is None:
            return  # a move the engine reports otherwise (a step's start) or not at all (forget)
        trigger, cursor = (record.trigger, record.trigger_cursor) if record is not None else ("", "")
        log(transition.kind, f"{transition.problem}: {transition.phase}: {transition.detail}", transition.priority,
            problem=transition.problem, state=transition.phase, signature=trigger or None,
            trigger_cursor=cursor or None)

    def on_step(self, record: ProblemRecord, step: StepFinished) -> None:
        message = f"{step.problem}: step {step.step} {step.result}" + (f": {step.error}" if step.error else "")
        log(Kind.STEP_FINISHED, message, INFO if step.result == "ok" else WARNING, problem=step.problem,
            step=step.step, result=step.result, detail=step.detail or None, error=step.error or None,
            resumed=1 if step.resumed else None)

    def on_change(self) -> None:
        pass
