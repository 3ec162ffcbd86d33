"""Conditions read from the node itself rather than from a log line."""

from __future__ import annotations

from collections.abc import Collection

from nodemedic.config import Settings
from nodemedic.detector.detector import Suspicion
from nodemedic.hostroot import HostRoot
from nodemedic.repairs.cni import CNI_SUFFIXES, real_configs
from nodemedic.repairs.ingest import INGEST, stale_entries_in
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


def ingest_dir(settings: Settings, root: HostRoot) -> Suspicion | None:
    """Partial downloads nobody writes any more, seen whenever the ingest dir changes (a pull
    starting or ending) and at start: evidence without waiting for a pull to fail on them."""
    directory = root.path(settings.paths.containerd_root).joinpath(*INGEST)
    stale = stale_entries_in(directory, settings.ingest.stale_age)
    if not stale:
        return None
    return Suspicion("ingest-stale", "path:ingest_dir",
                     detail=f"{len(stale)} stale partial download(s) in {directory}")


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


def unit_recovered(change: UnitChanged, runtime_unit: str, exhausted: Collection[str]) -> list[Suspicion]:
    """A unit running again while a problem about it waits, exhausted, for an operator: look
    again, so that the problem clears once its live probe is healthy (no log line would)."""
    if change.active_state != "active" or change.sub_state != "running":
        return []
    problems = [f"{change.unit.removesuffix('.service')}-crash-loop"]
    if change.unit == runtime_unit:
        problems.append("runtime-down")
    return [Suspicion(p, "unit:running", detail=f"{change.unit} is running again") for p in problems if p in exhausted]
