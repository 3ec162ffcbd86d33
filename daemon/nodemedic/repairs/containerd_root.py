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

from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedy_probes import runtime_ready
from nodemedic.repairs.step import StepClass
from nodemedic.sources.systemd_bus import BusError

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"


def running_shims(proc: Path = Path("/proc")) -> list[int]:
    pids = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip().startswith("containerd-shim"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass(frozen=True)
class MoveRootAside:
    name: str = "move-containerd-root-aside"
    klass: StepClass = StepClass.DESTRUCTIVE
    idempotent: bool = False

    async def needed(self, ctx: RepairContext) -> bool:
        root = ctx.root.path(ctx.settings.paths.containerd_root)
        # With running containers their shims hold mounts in the root: drain the node first.
        return root.is_dir() and not root.is_symlink() and not running_shims()

    async def apply(self, ctx: RepairContext) -> str:
        root = ctx.root.path(ctx.settings.paths.containerd_root)
        ctx.guard.check(root)
        aside = root.with_name(f"{root.name}.nodemedic-{time.strftime('%Y%m%dT%H%M%S')}")
        timeout = ctx.settings.policy.step_timeout
        try:
            await ctx.bus.unit_job("StopUnit", KUBELET, timeout)
            await ctx.bus.unit_job("StopUnit", CONTAINERD, timeout)
            os.rename(root, aside)  # same filesystem: a rename, nothing is copied or deleted
            await ctx.bus.unit_job("StartUnit", CONTAINERD, timeout)
            await ctx.bus.unit_job("StartUnit", KUBELET, timeout)
        except BusError as err:
            raise RuntimeError(f"systemd refused: {err}") from err
        return f"moved {root} aside to {aside}; containerd and kubelet started fresh"

    async def verify(self, ctx: RepairContext) -> bool:
        return await runtime_ready(ctx)
