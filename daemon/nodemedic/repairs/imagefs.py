"""Image filesystem: "invalid capacity 0 on image filesystem".

kubelet sizes the filesystem containerd names in ImageFsInfo; when that mountpoint cannot be
stat'ed (not created yet, a dangling or symlinked containerd root, a dead mount) it sees
capacity 0. The ladder warms containerd up (namespace, image and snapshot listings, CRI calls)
until the mountpoint exists with a capacity > 0, then restarts containerd, then kubelet, in that
order and kubelet only once containerd is healthy. Never: wipe /var/lib/containerd, prune images
or touch GC thresholds for this (a stats problem, not a disk-space problem).

containerd 2.x answers ImageFsInfo with one entry per snapshotter that holds snapshots, the
configured snapshotter's first (kubelet reads only the first); another snapshotter's entry may
name no mountpoint at all. Only the configured snapshotter's entry is the image filesystem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nodemedic.journal import WARNING, Kind, log
from nodemedic.probes import containerd_config
from nodemedic.probes.cri import CriError, ImageFsUsage
from nodemedic.probes.fs import fs_capacity_or_none
from nodemedic.problems import IMAGEFS_CAPACITY_ZERO
from nodemedic.repairs.commands import run
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.step import StepClass

CTR = "ctr"
K8S_NAMESPACE = "k8s.io"


def configured_snapshotter_root(ctx: RepairContext) -> str:
    """<root>/io.containerd.snapshotter.v1.<snapshotter> from containerd's config.toml; "" when
    the file cannot be read (then the first entry, kubelet's, is taken)."""
    try:
        config = containerd_config.load(ctx.root.path(ctx.settings.paths.containerd_config))
    except containerd_config.ContainerdConfigError:
        return ""
    return config.snapshotter_root


def image_filesystem(filesystems: list[ImageFsUsage], snapshotter_root: str) -> ImageFsUsage:
    """The configured snapshotter's entry: the one at its root, else the first (containerd puts
    it first; 1.x has only that one). `filesystems` is not empty."""
    for fs in filesystems:
        if snapshotter_root and fs.mountpoint.rstrip("/") == snapshotter_root.rstrip("/"):
            return fs
    return filesystems[0]


async def imagefs_problem(ctx: RepairContext) -> str:
    """Why the image filesystem has no usable capacity, or "" when it is healthy."""
    try:
        filesystems = await ctx.cri.imagefs_info()
    except CriError as err:
        return f"CRI ImageFsInfo failed: {err}"
    if not filesystems:
        return "CRI ImageFsInfo names no image filesystem"
    fs = image_filesystem(filesystems, configured_snapshotter_root(ctx))
    if not fs.mountpoint:
        return "CRI ImageFsInfo names no mountpoint for the image filesystem"
    capacity = fs_capacity_or_none(str(ctx.root.path(fs.mountpoint)))
    if capacity is None:
        return f"statvfs of {fs.mountpoint} fails"
    if capacity.capacity_bytes == 0:
        return f"{fs.mountpoint} has capacity 0"
    return ""


async def imagefs_broken(ctx: RepairContext) -> bool:
    return bool(await imagefs_problem(ctx))


async def imagefs_healthy(ctx: RepairContext) -> bool:
    return not await imagefs_problem(ctx)


def symlinked_root(ctx: RepairContext) -> str:
    """A containerd root that is a symlink: cAdvisor cannot map it to a device (seed 003)."""
    root = ctx.root.path(ctx.settings.paths.containerd_root)
    if not root.is_symlink():
        return ""
    target = os.path.realpath(root)
    return (f"{ctx.settings.paths.containerd_root} is a symlink to {target}; kubelet cannot map a symlinked "
            f"image filesystem to its device. Fix: `nodemedic repoint {target}` (bind mount instead of a link)")


@dataclass(frozen=True)
class WarmUp:
    """The seed's ctr/crictl warm-up, done through ctr and in-process CRI calls."""

    name: str = "imagefs-warm-up"
    klass: StepClass = StepClass.SAFE
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        return True

    async def apply(self, ctx: RepairContext) -> str:
        if advice := symlinked_root(ctx):
            log(Kind.HELD_BACK, advice, WARNING, problem=IMAGEFS_CAPACITY_ZERO, reason="symlinked containerd root")
        address = str(ctx.root.path(ctx.settings.paths.containerd_socket))
        timeout = ctx.settings.policy.step_timeout
        done = []
        for argv in ([CTR, "--address", address, "namespaces", "create", K8S_NAMESPACE],
                     [CTR, "--address", address, "-n", K8S_NAMESPACE, "images", "ls", "-q"],
                     [CTR, "--address", address, "-n", K8S_NAMESPACE, "snapshots", "ls"]):
            result = await run(argv, timeout)
            # "already exists" from namespaces create is the normal case on a warm node
            done.append(f"{' '.join(argv[3:])}: rc={result.returncode}")
        try:
            await ctx.cri.status()
            await ctx.cri.imagefs_info()
            done.append("CRI Status and ImageFsInfo answered")
        except CriError as err:
            done.append(f"CRI: {err}")
        return "; ".join(done)

    async def verify(self, ctx: RepairContext) -> bool:
        return await imagefs_healthy(ctx)

    def verify_schedule(self, ctx: RepairContext) -> tuple[int, float]:
        return ctx.settings.imagefs.warmup_attempts, ctx.settings.imagefs.warmup_interval
