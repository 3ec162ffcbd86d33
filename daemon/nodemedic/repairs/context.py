"""Everything a step may use: settings, the node's paths, safety guard, D-Bus, CRI, state."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nodemedic.config import Settings
from nodemedic.hostroot import HostRoot
from nodemedic.probes.cri import CriClient, CriError, CriStatus
from nodemedic.repairs.undo import NoUndo, UndoLog
from nodemedic.safety import Guard
from nodemedic.sources.systemd_bus import SystemdBus
from nodemedic.state import EngineState


@dataclass
class RepairContext:
    settings: Settings
    root: HostRoot
    guard: Guard
    bus: SystemdBus
    cri: CriClient
    state: EngineState
    # Set by the engine around each step's apply: where the step records what to undo.
    undo: UndoLog = field(default_factory=NoUndo)

    def node_path(self, absolute: str) -> Path:
        return self.root.path(absolute)

    async def cri_status(self) -> CriStatus | None:
        """CRI Status, or None when containerd cannot be reached."""
        try:
            return await self.cri.status()
        except CriError:
            return None
