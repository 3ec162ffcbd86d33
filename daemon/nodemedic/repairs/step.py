"""What a repair step is: check whether it is needed, apply it, verify it with a live probe."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nodemedic.repairs.context import RepairContext
    from nodemedic.repairs.remedy_probes import Probe


class StepClass(StrEnum):
    SAFE = "safe"  # changes nothing that runs
    DISRUPTIVE = "disruptive"  # restarts a unit
    DESTRUCTIVE = "destructive"  # deletes or moves state; opt-in only


class UndoLog(Protocol):
    """How a step records what it must undo if it is interrupted (tuned's unapply is the model).

    The engine persists each entry before the call returns, so the entry is on disk before the
    step acts; it restores the recorded units when the step fails, times out or the daemon is
    killed mid-apply (on resume), and before it climbs or gives up."""

    def will_stop(self, unit: str) -> None:
        """`unit` is about to be stopped; raises when that cannot be recorded (the step then
        must not stop it)."""
        ...

    def started(self, unit: str) -> None:
        """The step started `unit` again itself: nothing to undo for it any more."""
        ...


class NoUndo:
    """Outside the engine (`nodemedic step`, doctor): nothing restores, nothing is recorded."""

    def will_stop(self, unit: str) -> None:
        pass

    def started(self, unit: str) -> None:
        pass


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
