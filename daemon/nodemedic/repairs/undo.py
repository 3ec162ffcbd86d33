"""How a step records what it must undo: the log the engine keeps for it, and none outside it.

Beneath both the step protocol and the repair context, which carries the log the engine sets."""

from __future__ import annotations

from typing import Protocol


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
