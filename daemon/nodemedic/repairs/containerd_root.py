"""The destructive last rung: move containerd's whole root aside and start it fresh.

Used for a corrupt metadata database, never as "delete meta.db" (containerd would then garbage
collect every snapshot). The old root is renamed next to itself, never deleted, so it stays
available for forensics; a root holding a protected path, or running shims, is refused.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from nodemedic.mounts import read_mountinfo
from nodemedic.probes.procs import pids_by_comm
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedy_probes import runtime_settled
from nodemedic.repairs.step import StepClass
from nodemedic.repairs.units import start_unit, stop_unit

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"
CONTAINERD_SETTLED = runtime_settled(CONTAINERD)


def running_shims(proc: Path = Path("/proc")) -> list[int]:
    return pids_by_comm(lambda comm: comm.startswith("containerd-shim"), proc)


def root_refusal(ctx: RepairContext) -> str:
    """Why containerd's root must not be moved aside now, or ""."""
    root = ctx.root.path(ctx.settings.paths.containerd_root)
    if root.is_symlink() or not root.is_dir():
        return f"{root} is a symlink or not a directory"
    # A repointed root is a mount point: renaming it fails, and its data is not ours to move.
    if any(m.mount_point == str(root) for m in read_mountinfo()):
        return f"{root} is a mount point"
    # With running containers their shims hold mounts in the root: drain the node first.
    if shims := running_shims():
        return f"{len(shims)} container shim(s) running: drain the node first"
    return ""


def move_root_aside(ctx: RepairContext) -> Path:
    """Rename the (stopped) root next to itself; same filesystem, nothing copied or deleted."""
    root = ctx.root.path(ctx.settings.paths.containerd_root)
    ctx.guard.check(root)
    aside = root.with_name(f"{root.name}.nodemedic-{time.strftime('%Y%m%dT%H%M%S')}")
    os.rename(root, aside)
    return aside


@dataclass(frozen=True)
class MoveRootAside:
    name: str = "move-containerd-root-aside"
    klass: StepClass = StepClass.DESTRUCTIVE
    idempotent: bool = False

    async def needed(self, ctx: RepairContext) -> bool:
        return not root_refusal(ctx)

    async def apply(self, ctx: RepairContext) -> str:
        # Each stop is recorded (persisted) first: killed or failed from here on, the engine
        # starts them again before it verifies or climbs.
        await stop_unit(ctx, KUBELET)
        await stop_unit(ctx, CONTAINERD)
        aside = move_root_aside(ctx)
        # containerd first: kubelet is only worth starting against a runtime that is up. A fresh
        # root is a fresh start: the crash loop's restarts must not hit its start limit.
        await ctx.bus.reset_failed(CONTAINERD)
        await start_unit(ctx, CONTAINERD, require=False)
        await start_unit(ctx, KUBELET, require=False)
        return f"moved {ctx.root.path(ctx.settings.paths.containerd_root)} aside to {aside}; " \
               "containerd and kubelet started fresh"

    async def verify(self, ctx: RepairContext) -> bool:
        return await CONTAINERD_SETTLED(ctx)
