"""What a repair step is: check whether it is needed, apply it, verify it with a live probe."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

# The undo log is the context's (repairs/undo.py); the engine still imports NoUndo from here.
from nodemedic.repairs.undo import NoUndo

if TYPE_CHECKING:
    from nodemedic.repairs.context import RepairContext
    from nodemedic.repairs.remedy_probes import Probe

__all__ = ["NoUndo", "Remedy", "Step", "StepClass"]


class StepClass(StrEnum):
    SAFE = "safe"  # changes nothing that runs
    DISRUPTIVE = "disruptive"  # restarts a unit
    DESTRUCTIVE = "destructive"  # deletes or moves state; opt-in only


class Step(Protocol):
    name: str
    klass: StepClass
    # Whether applying it twice is harmless. On resume after a kill mid-apply, an idempotent
    # step whose verification fails is applied again (it may not have finished); one that is
    # not is never re-applied: verified, and on failure undone and the ladder climbed. Without
    # persistence (a state write failed) only idempotent steps run.
    idempotent: bool

    async def needed(self, ctx: RepairContext) -> bool:
        """False when the step cannot help now (its precondition does not hold)."""
        ...

    async def apply(self, ctx: RepairContext) -> str:
        """Do it; returns what was done, for the journal."""
        ...

    async def verify(self, ctx: RepairContext) -> bool:
        """Did it work? Always a live probe, never a look at our own file."""
        ...


@dataclass(frozen=True)
class Remedy:
    problem: str
    steps: tuple[Step, ...]
    # Why nodemedic only reports this problem, when maintainers say not to touch it.
    report_only: str = ""
    # The live probe that says the problem is really there now (none: the signature's threshold).
    confirm: Probe | None = None
