"""Crash loops of the watched units and the container runtime being down, from systemd's own
view of the units; and, for a problem about a unit that waits exhausted for an operator, the
unit running again."""

from __future__ import annotations

from collections.abc import Collection

from nodemedic.detector.conditions.base import Finding, NodeView, UnitCondition
from nodemedic.detector.detector import Suspicion
from nodemedic.problems import RUNTIME_DOWN, crash_loop_problem
from nodemedic.sources.events import UnitChanged


def unit_condition(change: UnitChanged, runtime_unit: str) -> Suspicion | None:
    """A crash loop (systemd waiting to restart it again) or the runtime being down."""
    if change.sub_state == "auto-restart":
        return Suspicion(crash_loop_problem(change.unit), "unit:auto-restart",
                         detail=f"{change.unit} is crash-looping ({change.n_restarts} restarts, {change.result})")
    # Only "failed": an operator's `systemctl stop` leaves it inactive, and that is their call.
    if change.unit == runtime_unit and change.active_state == "failed":
        return Suspicion(RUNTIME_DOWN, "unit:failed", detail=f"{change.unit} failed ({change.result})")
    return None


def unit_recovered(change: UnitChanged, runtime_unit: str, exhausted: Collection[str]) -> list[Suspicion]:
    """A unit running again while a problem about it waits, exhausted, for an operator: look
    again, so that the problem clears once its live probe is healthy (no log line would)."""
    if change.active_state != "active" or change.sub_state != "running":
        return []
    problems = [crash_loop_problem(change.unit)]
    if change.unit == runtime_unit:
        problems.append(RUNTIME_DOWN)
    return [Suspicion(p, "unit:running", detail=f"{change.unit} is running again") for p in problems if p in exhausted]


class UnitStates(UnitCondition):
    name = "unit_states"

    def units(self, view: NodeView) -> frozenset[str]:
        return frozenset(view.settings.daemon.units) | {view.runtime_unit}

    def check(self, change: UnitChanged, view: NodeView) -> list[Finding]:
        findings: list[Finding] = []
        suspicion = unit_condition(change, view.runtime_unit)
        if suspicion is not None:
            findings.append(suspicion)
        exhausted = {problem for problem in view.state.problems if view.exhausted(problem)}
        findings.extend(unit_recovered(change, view.runtime_unit, exhausted))
        return findings


CONDITION = UnitStates()
