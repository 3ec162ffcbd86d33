"""The one-line status (sd_notify STATUS=, the D-Bus State property, `nodemedic status`), and
the reporter that sends it to systemd whenever it changes."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from nodemedic.engine.reporting import StepFinished, Transition
from nodemedic.hostroot import HostRoot
from nodemedic.report.notify import notify
from nodemedic.state import ACTIVE, Phase, ProblemRecord

if TYPE_CHECKING:  # the type only: the text is composed from the daemon's engine
    from nodemedic.engine.engine import Engine


def status_text(engine: Engine, root: HostRoot, signatures: int) -> str:
    settings = engine.ctx.settings
    watching = f"watching {', '.join(settings.daemon.units)}; {signatures} signatures"
    records = engine.ctx.state.problems.values()
    current = engine.current
    if current is not None:
        problem, number, total, name = current
        state = f"repairing {problem}: step {number}/{total} ({name})"
    elif active := [r for r in records if r.phase in ACTIVE]:
        state = "; ".join(f"{r.problem} {r.phase}" for r in active)
    elif exhausted := [r for r in records if r.phase == Phase.EXHAUSTED]:
        state = "needs an operator: " + ", ".join(f"{r.problem} exhausted" for r in exhausted)
    else:
        state = "healthy"
    placeholder = root.path(settings.paths.cni_conf_dir) / settings.cni.placeholder_file
    if _is_regular_file(placeholder):
        state += "; placeholder CNI config active (real network not yet configured)"
    for problem, reason in sorted(engine.fleet.holds.items()):  # the fleet guard's hold
        state += f"; {problem}: {reason}"
    if engine.persist_error:
        state += f"; state not saved ({engine.persist_error}): non-idempotent steps held back"
    if settings.daemon.mode == "observe":
        state += "; observe mode"
    if engine.gate.paused:
        state += "; paused by the operator"
    return f"{watching}; {state}"


def _is_regular_file(path: os.PathLike[str]) -> bool:
    """Judged by lstat: our placeholder is a regular file we wrote; a symlink at its name (to
    another network's config, say) is not it."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class StatusReporter:
    """STATUS= to systemd, sent only when the text changed (a datagram: cheap)."""

    def __init__(self, text: Callable[[], str]) -> None:
        self.text = text
        self._sent = ""

    def on_transition(self, record: ProblemRecord | None, transition: Transition) -> None:
        pass  # every transition is preceded by on_change

    def on_step(self, record: ProblemRecord, step: StepFinished) -> None:
        pass

    def on_change(self) -> None:
        status = self.text()
        if status != self._sent:
            self._sent = status
            notify(f"STATUS={status}")

    def forget_sent(self) -> None:
        """Another STATUS= went out in between (reloading): the next change sends it again."""
        self._sent = ""
