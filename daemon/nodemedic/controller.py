"""The operator's API (org.nodemedic1, served by report/dbus_api.py): what `nodemedic status`,
`pause`, `resume`, `repair`, `forget` and `reload` ask of the running daemon. It lives beside the
daemon (tuned's controller.py is the model): the daemon assembles and runs the loop, this answers
the operator, and both act through the engine.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from nodemedic.doctor import plan_for
from nodemedic.problems import problem_class
from nodemedic.repairs.remedies import REMEDIES
from nodemedic.report.dbus_api import RefusedError
from nodemedic.report.journal import NOTICE, Kind, log

if TYPE_CHECKING:  # the daemon holds the controller; the type only, to avoid a cycle
    from nodemedic.daemon import Daemon


class Controller:
    """Implements report/dbus_api.py's Steering for the daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def _known_problem(self, problem: str) -> None:
        # A problem a signature names without a ladder (report-only) is known too: it has a
        # record to forget and a plan ("would not repair: ...") to show.
        daemon = self.daemon
        known = frozenset(REMEDIES) | daemon.loaded.catalogue.problems | frozenset(daemon.ctx.state.problems)
        if problem not in known:
            raise RefusedError("UnknownProblem", f"unknown problem {problem!r}; known: {', '.join(sorted(known))}")

    def api_state(self) -> str:
        return self.daemon.status.text()

    def api_mode(self) -> str:
        return "paused" if self.daemon.engine.gate.paused else self.daemon.ctx.settings.daemon.mode

    def api_problems(self) -> list[list[object]]:
        return [[r.problem, r.phase.value, r.step_name, r.attempts, int(r.last_change), r.detail]
                for r in sorted(self.daemon.ctx.state.problems.values(), key=lambda r: r.problem)]

    def api_details(self) -> str:
        """Problems() with what a Node condition's message says: class, step i of n, attempts
        and budget (JSON, read by nodemedic-kube.service)."""
        daemon = self.daemon
        settings = daemon.ctx.settings
        details = []
        for r in sorted(daemon.ctx.state.problems.values(), key=lambda r: r.problem):
            remedy = REMEDIES.get(r.problem)
            details.append({
                "problem": r.problem, "class": problem_class(r.problem).value, "phase": r.phase.value,
                "step": r.step_name, "step_index": r.step + 1 if r.step_name else 0,
                "steps": len(remedy.steps) if remedy is not None else 0,
                "attempts": r.attempts, "budget": settings.attempt_budget(r.problem),
                "last_change": r.last_change, "detail": r.detail,
            })
        return json.dumps({"paused": daemon.engine.gate.paused, "problems": details})

    def api_pause(self) -> None:
        # Kept in state.json: a daemon restarted (SIGKILL, a repoint or join flow's restart) is
        # still paused. Without persistence the pause holds only until a restart: reported.
        engine = self.daemon.engine
        engine.gate.paused = True
        saved = engine.save()
        log(Kind.PAUSED, "paused by the operator: observing only until resumed"
            + ("" if saved else " (NOT saved: a restart of the daemon forgets this pause)"), NOTICE)
        self.daemon.update_status()

    def api_resume(self) -> None:
        engine = self.daemon.engine
        engine.gate.paused = False
        engine.save()
        log(Kind.RESUMED, "resumed by the operator: repairing again", NOTICE)
        self.daemon.update_status()
        engine.retry_held()
        # What the conditions asked for while paused (the placeholder giving way) is asked again.
        self.daemon.look_at_paths()

    def api_check(self, member: str, args: list[object]) -> None:
        """Refuse a call that cannot be done, with a reason, before anything changes."""
        if member in ("Repair", "Plan", "Forget"):
            problem = str(args[0]) if args else ""
            self._known_problem(problem)
            engine = self.daemon.engine
            if member == "Repair" and engine.gate.paused:
                raise RefusedError("Paused", "nodemedic is paused; `nodemedic resume` first")
            if member in ("Repair", "Forget") and engine.running(problem):
                raise RefusedError("Busy", f"{problem} is already being handled; wait for it to finish")

    def api_repair(self, problem: str) -> str:
        self.daemon.engine.repair_now(problem)
        return f"repair of {problem} started"

    def api_plan(self, problem: str) -> list[str]:
        return plan_for(self.daemon.ctx, problem, forced=True)

    def api_forget(self, problem: str) -> None:
        self.daemon.engine.forget(problem)
        self.daemon.detector.forget(problem)

    async def api_reload(self) -> tuple[bool, list[str]]:
        return await self.daemon.reload()
