"""An undo stack: every change a flow makes is recorded with the action that reverses it.

Rolling back runs the undos newest first and does not stop at the first error: after a failed
repoint the node must get as close to where it was as it can, and every undo that could not be
done is reported for the operator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Undo = Callable[[], Awaitable[object]]


@dataclass
class Done:
    what: str
    undo: Undo | None


class Transaction:
    def __init__(self, report: Callable[[str], None]) -> None:
        self._done: list[Done] = []
        self._report = report

    def did(self, what: str, undo: Undo | None = None) -> None:
        self._done.append(Done(what, undo))
        self._report(what)

    @property
    def steps(self) -> list[str]:
        return [d.what for d in self._done]

    async def rollback(self) -> list[str]:
        """Undo everything done so far, newest first; returns the undos that failed."""
        failed = []
        while self._done:
            done = self._done.pop()
            if done.undo is None:
                continue
            try:
                await done.undo()
                self._report(f"undone: {done.what}")
            except Exception as err:  # noqa: BLE001 - keep undoing the rest, report every failure
                failed.append(f"could not undo '{done.what}': {err or type(err).__name__}")
                self._report(failed[-1])
        return failed


def failure_reason(err: BaseException) -> str:
    """What a flow's rollback reports as the cause. An interrupted flow (CancelledError) is
    uncancelled first: the rollback's own waits must not count as cancelled."""
    if isinstance(err, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return "interrupted"
    return str(err) or type(err).__name__
