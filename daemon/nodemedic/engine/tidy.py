"""Changes to the node that repair no problem, asked for by a condition (detector/conditions):
today, nodemedic's own placeholder CNI config giving way to a real one. They pass the engine's
gate (observe mode and a pause hold them; a resume looks at every path condition again) and are
reported like a step's change; a change the safety module refuses propagates as UnsafeOperation
for the daemon to report once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from nodemedic.detector.conditions.base import Tidy
from nodemedic.engine.engine import Engine
from nodemedic.repairs import cni
from nodemedic.repairs.context import RepairContext
from nodemedic.report.journal import NOTICE, Kind, log
from nodemedic.state import EngineState


@dataclass(frozen=True)
class Done:
    """What a tidy action changed, as its journal entry."""

    kind: Kind
    message: str
    fields: dict[str, object] = field(default_factory=dict)


class Action(Protocol):
    def note(self, state: EngineState) -> bool:
        """Record what the finding tells (state, not the node: never held); True when it changed."""
        ...

    def apply(self, ctx: RepairContext) -> Done | None:
        """Make the change, or None when there was nothing to change."""
        ...


class RealCniConfig:
    """A real CNI config exists: it has been seen (placeholder policy until-first-real), and the
    placeholder, superseded, is removed."""

    def note(self, state: EngineState) -> bool:
        if state.real_cni_seen:
            return False
        state.real_cni_seen = True
        return True

    def apply(self, ctx: RepairContext) -> Done | None:
        removed = cni.remove_placeholder_if_superseded(ctx)
        if removed is None:
            return None
        return Done(Kind.PLACEHOLDER_REMOVED, f"removed placeholder CNI config {removed}: a real config exists",
                    {"path": removed})


ACTIONS: Mapping[str, Action] = {"real-cni-config": RealCniConfig()}


class Tidier:
    def __init__(self, engine: Engine, actions: Mapping[str, Action] = ACTIONS) -> None:
        self.engine = engine
        self.actions = actions

    def request(self, tidy: Tidy) -> None:
        action = self.actions[tidy.action]
        if action.note(self.engine.ctx.state):
            self.engine.save()
        if self.engine.gate.refuse_change():
            return  # held: looked at again when the operator resumes
        done = action.apply(self.engine.ctx)
        if done is not None:
            log(done.kind, done.message, NOTICE, **done.fields)
            self.engine.reporters.on_change()
