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
        settings = self.ctx.settings
        if remedy is None:
            return "no remedy is known for this problem; reporting only"
        if remedy.report_only:
            return remedy.report_only
        if settings.daemon.mode == "observe":
            return "mode is observe"
        if self.paused:
            return "paused by the operator"
        if forced:
            return ""  # an operator's explicit request: disabled and cooldown are for automation
        if not settings.problem_enabled(record.problem):
            return "disabled in configuration"
        # The cooldown is not an episode's business: it holds back only the step that healed the
        # last episode (a flap), and the engine applies it once it knows the first step needed.
        return ""

    def refuse_next_step(self, record: ProblemRecord, forced: bool) -> str:
        """Why a ladder under way may not go on to its next step: what the operator changed while
        a step ran, by pausing or by a reload (observe mode, the problem disabled). The step under
        way finishes; none is started after it."""
        settings = self.ctx.settings
        if self.paused:
            return "paused by the operator"
        if settings.daemon.mode == "observe":
            return "mode is observe"
        if not forced and not settings.problem_enabled(record.problem):
            return "disabled in configuration"
        return ""

    def refuse_change(self) -> str:
        """Why no change to the node that repairs no problem (engine/tidy.py) may be made now."""
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
