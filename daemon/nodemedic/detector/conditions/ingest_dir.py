"""ingest-stale from containerd's ingest dir: partial downloads nobody writes any more, seen
whenever the dir changes (a pull starting or ending) and at start, without waiting for a pull to
fail on them."""

from __future__ import annotations

from pathlib import Path

from nodemedic.config import Settings
from nodemedic.detector.conditions.base import Finding, NodeView, PathCondition
from nodemedic.detector.detector import Suspicion
from nodemedic.hostroot import HostRoot
from nodemedic.probes.ingest_dir import INGEST, stale_entries_in


class IngestDir(PathCondition):
    name = "ingest_dir"

    def path(self, settings: Settings, root: HostRoot) -> Path:
        return root.path(settings.paths.containerd_root).joinpath(*INGEST)

    def check(self, view: NodeView) -> list[Finding]:
        directory = self.path(view.settings, view.root)
        stale = stale_entries_in(directory, view.settings.ingest.stale_age)
        if not stale:
            return []
        return [Suspicion("ingest-stale", f"path:{self.name}",
                          detail=f"{len(stale)} stale partial download(s) in {directory}")]


CONDITION = IngestDir()
