"""Stale partial downloads in containerd's content ingest dir ("failed size validation",
"unexpected commit digest", "failed reading status of resume write").

Only entries nobody is writing are removed: every file in them older than `ingest.stale_age`
and no process holding one open. The ingest dir itself stays. Never: blobs/, meta.db, snapshots.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedy_probes import runtime_ready
from nodemedic.repairs.safety import remove_tree
from nodemedic.repairs.step import StepClass

INGEST = ("io.containerd.content.v1.content", "ingest")


def ingest_dir(ctx: RepairContext) -> Path:
    return ctx.root.path(ctx.settings.paths.containerd_root).joinpath(*INGEST)


def open_files(proc: Path = Path("/proc")) -> set[str]:
    """Every path some process holds open (what containerd's content writer keeps open)."""
    held: set[str] = set()
    for pid in proc.iterdir():
        if not pid.name.isdigit():
            continue
        try:
            fds = list((pid / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to see
        for fd in fds:
            try:
                held.add(os.readlink(fd))
            except OSError:
                continue
    return held


def _newest_mtime(entry: Path) -> float:
    newest = entry.lstat().st_mtime
    for dirpath, _dirs, files in os.walk(entry):
        for name in files:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def stale_entries(ctx: RepairContext, now: float | None = None) -> list[Path]:
    directory = ingest_dir(ctx)
    try:
        entries = [e for e in directory.iterdir() if e.is_dir() and not e.is_symlink()]
    except FileNotFoundError:
        return []
    if not entries:
        return []
    now = time.time() if now is None else now
    held = open_files()
    stale = []
    for entry in entries:
        real = os.path.realpath(entry)
        if any(h == real or h.startswith(real + os.sep) for h in held):
            continue  # a writer has it open: a pull in progress
        try:
            if now - _newest_mtime(entry) >= ctx.settings.ingest.stale_age:
                stale.append(entry)
        except FileNotFoundError:
            continue
    return stale


async def stale_ingest_present(ctx: RepairContext) -> bool:
    return bool(stale_entries(ctx))


@dataclass(frozen=True)
class RemoveStaleIngests:
    name: str = "remove-stale-ingests"
    # Partial downloads only, re-fetched by the next pull; never blobs, metadata or snapshots.
    klass: StepClass = StepClass.SAFE
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        return bool(stale_entries(ctx))

    async def apply(self, ctx: RepairContext) -> str:
        removed = []
        for entry in stale_entries(ctx):
            remove_tree(ctx.guard, entry)
            removed.append(entry.name)
        return f"removed {len(removed)} stale ingest entr{'y' if len(removed) == 1 else 'ies'}: {', '.join(removed)}"

    async def verify(self, ctx: RepairContext) -> bool:
        # containerd's own view: its runtime answers and no stale ingest remains under it.
        return await runtime_ready(ctx) and not stale_entries(ctx)
