"""What a repair step is: check whether it is needed, apply it, verify it with a live probe."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nodemedic.repairs.context import RepairContext


class StepClass(StrEnum):
    SAFE = "safe"  # changes nothing that runs
    DISRUPTIVE = "disruptive"  # restarts a unit
    DESTRUCTIVE = "destructive"  # deletes or moves state; opt-in only


class Step(Protocol):
    name: str
    klass: StepClass
    # Whether applying it twice is harmless; a step that is not is never re-applied on resume.
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
