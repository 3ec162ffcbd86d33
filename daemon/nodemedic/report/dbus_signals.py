"""The D-Bus reporter: ProblemChanged, and the new State property, for every transition. Cheap
enough for the engine's path: dbus-next queues the message and the loop writes it."""

from __future__ import annotations

from nodemedic.engine.reporting import StepFinished, Transition
from nodemedic.report.dbus_api import ApiServer
from nodemedic.state import ProblemRecord


class DbusSignals:
    def __init__(self, api: ApiServer) -> None:
        self.api = api

    def on_transition(self, record: ProblemRecord | None, transition: Transition) -> None:
        self.api.problem_changed(transition.problem, transition.phase)

    def on_step(self, record: ProblemRecord, step: StepFinished) -> None:
        pass

    def on_change(self) -> None:
        pass
