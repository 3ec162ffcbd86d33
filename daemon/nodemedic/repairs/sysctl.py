"""inotify limits: raise fs.inotify.max_user_instances / max_user_watches, never lower them.

A file in /etc/sysctl.d keeps the values across reboots; a live write to /proc/sys applies them
now. containerd's CRI plugin is only loaded at start, so the ladder restarts containerd next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedy_probes import runtime_ready
from nodemedic.repairs.step import StepClass
from nodemedic.safety import atomic_write

# Values used widely for container hosts (failure-modes: >= 512 instances minimum).
TARGETS = {"fs.inotify.max_user_instances": 8192, "fs.inotify.max_user_watches": 524288}
SYSCTL_FILE = "/etc/sysctl.d/90-nodemedic-inotify.conf"


def _proc_path(ctx: RepairContext, key: str) -> Path:
    return ctx.root.path("/proc/sys/" + key.replace(".", "/"))


def current(ctx: RepairContext) -> dict[str, int]:
    return {key: int(_proc_path(ctx, key).read_text().split()[0]) for key in TARGETS}


def too_low(ctx: RepairContext) -> dict[str, int]:
    return {key: value for key, value in current(ctx).items() if value < TARGETS[key]}


async def limits_too_low(ctx: RepairContext) -> bool:
    return bool(too_low(ctx))


@dataclass(frozen=True)
class RaiseInotifyLimits:
    name: str = "raise-inotify-limits"
    klass: StepClass = StepClass.SAFE
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        return bool(too_low(ctx))

    async def apply(self, ctx: RepairContext) -> str:
        now = current(ctx)
        # never lower: keep whatever is already higher than our target
        wanted = {key: max(now[key], target) for key, target in TARGETS.items()}
        lines = "".join(f"{key} = {value}\n" for key, value in wanted.items())
        atomic_write(ctx.guard, ctx.root.path(SYSCTL_FILE),
                     f"# Written by nodemedic: containerd and kubelet need more inotify instances.\n{lines}".encode())
        for key, value in wanted.items():
            if now[key] < value:
                _proc_path(ctx, key).write_text(f"{value}\n")  # /proc/sys: not a file to replace atomically
        return "set " + ", ".join(f"{k}={v}" for k, v in wanted.items())

    async def verify(self, ctx: RepairContext) -> bool:
        # Read back from the kernel, not from our file. Raised limits alone heal nothing that
        # already failed: containerd loads its CRI plugin only at start (the next rung).
        return not too_low(ctx) and await runtime_ready(ctx)
