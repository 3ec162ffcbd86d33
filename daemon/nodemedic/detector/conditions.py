"""Conditions read from the node itself rather than from a log line."""

from __future__ import annotations

from nodemedic.config import Settings
from nodemedic.detector.detector import Suspicion
from nodemedic.hostroot import HostRoot
from nodemedic.repairs.cni import CNI_SUFFIXES, real_configs
from nodemedic.sources.events import UnitChanged


def cni_conf_dir(settings: Settings, root: HostRoot) -> tuple[bool, Suspicion | None]:
    """(a real config exists, suspicion when no config at all is there)."""
    conf_dir = root.path(settings.paths.cni_conf_dir)
    real = real_configs(conf_dir, settings.cni.placeholder_file)
    if real:
        return True, None
    placeholder = conf_dir / settings.cni.placeholder_file
    if placeholder.suffix in CNI_SUFFIXES and placeholder.is_file():
        return False, None
    return False, Suspicion("cni-config-missing", "path:cni_conf_dir", detail=f"no CNI config in {conf_dir}")


def unit_condition(change: UnitChanged, runtime_unit: str) -> Suspicion | None:
    """A crash loop (systemd waiting to restart it again) or the runtime being down."""
    if change.sub_state == "auto-restart":
        stem = change.unit.removesuffix(".service")
        return Suspicion(f"{stem}-crash-loop", "unit:auto-restart",
                         detail=f"{change.unit} is crash-looping ({change.n_restarts} restarts, {change.result})")
    # Only "failed": an operator's `systemctl stop` leaves it inactive, and that is their call.
    if change.unit == runtime_unit and change.active_state == "failed":
        return Suspicion("runtime-down", "unit:failed", detail=f"{change.unit} failed ({change.result})")
    return None
