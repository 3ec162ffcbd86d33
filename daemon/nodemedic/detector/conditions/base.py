"""What a condition read from the node itself (not from a log line) declares and returns.

A condition says what it watches (a path condition its directory, a unit condition its units)
and, when looked at, returns findings: suspicions for the engine, and requests for changes to
the node that repair no problem (Tidy), which the engine gates and reports like any other
change. A condition never changes the node or the state itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from nodemedic.config import Settings
from nodemedic.detector.detector import Suspicion
from nodemedic.hostroot import HostRoot
from nodemedic.sources.events import UnitChanged
from nodemedic.state import EngineState, Phase


@dataclass(frozen=True)
class Tidy:
    """A change to the node asked of the engine (engine/tidy.py names the actions)."""

    action: str
    what: str  # for a refusal: "removing the superseded placeholder CNI config"


Finding = Suspicion | Tidy


@dataclass(frozen=True)
class NodeView:
    """What a condition may read: the settings, the host, the engine's state (never to write)."""

    settings: Settings
    root: HostRoot
    state: EngineState
    runtime_unit: str  # the container runtime's unit (containerd.service)

    def exhausted(self, problem: str) -> bool:
        record = self.state.problems.get(problem)
        return record is not None and record.phase == Phase.EXHAUSTED


class PathCondition(ABC):
    """A condition looked at whenever its directory changes (inotify), and at start."""

    name: str  # the watch's name, also the suspicion's trigger ("path:<name>")

    @abstractmethod
    def path(self, settings: Settings, root: HostRoot) -> Path:
        """The directory watched (it may not exist yet)."""

    @abstractmethod
    def check(self, view: NodeView) -> list[Finding]: ...


class UnitCondition(ABC):
    """A condition looked at whenever one of its units changes state (systemd over D-Bus)."""

    name: str

    @abstractmethod
    def units(self, view: NodeView) -> frozenset[str]:
        """The units whose changes it reads."""

    @abstractmethod
    def check(self, change: UnitChanged, view: NodeView) -> list[Finding]: ...
