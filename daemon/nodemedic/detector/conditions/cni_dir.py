"""cni-config-missing from the CNI config dir itself, and the placeholder giving way to a real
config (containerd loads the lexically first config, so a real one always wins; the placeholder
is removed as soon as one appears, through the engine)."""

from __future__ import annotations

from pathlib import Path

from nodemedic.config import Settings
from nodemedic.detector.conditions.base import Finding, NodeView, PathCondition, Tidy
from nodemedic.detector.detector import Suspicion
from nodemedic.hostroot import HostRoot
from nodemedic.probes.cni_dir import placeholder_present, real_configs

PROBLEM = "cni-config-missing"
REAL_CONFIG = Tidy("real-cni-config", "removing the superseded placeholder CNI config")


class CniConfDir(PathCondition):
    name = "cni_conf_dir"

    def path(self, settings: Settings, root: HostRoot) -> Path:
        return root.path(settings.paths.cni_conf_dir)

    def check(self, view: NodeView) -> list[Finding]:
        conf_dir = self.path(view.settings, view.root)
        placeholder = view.settings.cni.placeholder_file
        if real_configs(conf_dir, placeholder):
            # Remember it (placeholder policy until-first-real) and tidy the placeholder away;
            # a problem waiting for an operator is looked at again, so that it clears once CRI
            # says the network is ready.
            findings: list[Finding] = [REAL_CONFIG]
            if view.exhausted(PROBLEM):
                findings.append(Suspicion(PROBLEM, f"path:{self.name}", detail="a CNI config appeared"))
            return findings
        if placeholder_present(conf_dir, placeholder):
            return []
        # containerd reads the dir on its own fsnotify event: its CRI status may still say
        # ready when this is looked at, so the engine's confirmation gives it time (live).
        return [Suspicion(PROBLEM, f"path:{self.name}", detail=f"no CNI config in {conf_dir}", live=True)]


CONDITION = CniConfDir()
