"""The policy gate in front of every episode and every step."""

from __future__ import annotations

import time

from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.step import Remedy, Step, StepClass
from nodemedic.state import ProblemRecord


class Gate:
    def __init__(self, ctx: RepairContext) -> None:
        self.ctx = ctx

    @property
    def paused(self) -> bool:
        """Set by the operator (or a repoint/join flow); observe-only until resumed. Kept in the
        engine's state, so that it outlives a restart of the daemon."""
        return self.ctx.state.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self.ctx.state.paused = value

    def refuse_episode(self, record: ProblemRecord, remedy: Remedy | None, forced: bool = False) -> str:
        """Why no repair may start for this problem now, or "" when it may."""
        if remedy is None:
            return "no remedy is known for this problem; reporting only"
        if remedy.report_only:
            return remedy.report_only
        # The cooldown is not an episode's business: it holds back only the step that healed the
        # last episode (a flap), and the engine applies it once it knows the first step needed.
        return self.refuse_next_step(record, forced)

    def refuse_next_step(self, record: ProblemRecord, forced: bool) -> str:
        """Why a ladder may not start, or go on to its next step: what the operator says now, by
        pausing or by the configuration (observe mode, the problem disabled). A step under way
        finishes; none is started after it."""
        held = self.refuse_change()
        if held:
            return held
        if not forced and not self.ctx.settings.problem_enabled(record.problem):
            # An operator's explicit request passes: disabled (and cooldown) are for automation.
            return "disabled in configuration"
        return ""

    def refuse_change(self) -> str:
        """Why nodemedic may change nothing on the node now: a change that repairs no problem
        (engine/tidy.py) asks this alone, a repair step asks it through refuse_next_step."""
        if self.ctx.settings.daemon.mode == "observe":
            return "mode is observe"
        if self.paused:
            return "paused by the operator"
        return ""

    @staticmethod
    def cooldown_left(record: ProblemRecord) -> float:
        return max(0.0, record.not_before - time.time())

    def refuse_step(self, step: Step) -> str:
        if step.klass == StepClass.DESTRUCTIVE and not self.ctx.settings.policy.allow_destructive:
            return "destructive steps are off (policy.allow_destructive = false)"
        return ""
