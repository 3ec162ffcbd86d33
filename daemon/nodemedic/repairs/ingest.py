"""Stale partial downloads in containerd's content ingest dir ("failed size validation",
"unexpected commit digest", "failed reading status of resume write").

Only entries nobody is writing are removed: every file in them older than `ingest.stale_age`
and none of them open for writing. The ingest dir itself stays. Never: blobs/, meta.db, snapshots.
Each entry is removed on its own: one the safety module refuses (a mount point in it) is kept and
reported, and the others are still removed.

"Open for writing" is asked of the kernel, not of /proc: nodemedic runs without capabilities and
in its own user namespace, where containerd's file descriptors cannot be read (a /proc scan would
silently see no writer at all). A read lease (F_SETLEASE F_RDLCK) is refused with EAGAIN exactly
while some process has the file open for writing, and needs nothing but owning the file. What
cannot be asked (another owner, a filesystem without leases) counts as being written: an entry
is removed only when it provably is not.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedy_probes import runtime_ready
from nodemedic.repairs.step import StepClass
from nodemedic.safety import Guard, UnsafeOperation, remove_tree

INGEST = ("io.containerd.content.v1.content", "ingest")


def ingest_dir(ctx: RepairContext) -> Path:
    return ctx.root.path(ctx.settings.paths.containerd_root).joinpath(*INGEST)


def open_for_writing(path: str) -> bool:
    """Whether some process has the regular file `path` open for writing (True when unsure)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return False  # gone: nobody writes it any more
    except OSError:
        return True
    try:
        # A writer opening the file in the instant the lease exists breaks it, and the kernel
        # signals the lease holder: SIGURG, which is ignored by default, instead of SIGIO,
        # which would end the daemon.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError:
            return True  # EAGAIN: open for writing; anything else: cannot tell
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def _newest_mtime_and_files(entry: Path) -> tuple[float, list[str]]:
    newest = entry.lstat().st_mtime
    files = []
    for dirpath, _dirs, names in os.walk(entry):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            newest = max(newest, st.st_mtime)
            if stat.S_ISREG(st.st_mode):
                files.append(path)
    return newest, files


def stale_entries_in(directory: Path, stale_age: float, now: float | None = None) -> list[Path]:
    """The entries of an ingest dir that are old and that no process is writing."""
    try:
        entries = [e for e in directory.iterdir() if e.is_dir() and not e.is_symlink()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time() if now is None else now
    stale = []
    for entry in entries:
        try:
            newest, files = _newest_mtime_and_files(entry)
        except FileNotFoundError:
            continue
        # Age first (a stat walk); the kernel is asked about writers only for what is old enough.
        if now - newest >= stale_age and not any(open_for_writing(f) for f in files):
            stale.append(entry)
    return stale


def remove_entries(guard: Guard, entries: list[Path]) -> tuple[list[str], list[str]]:
    """Remove each entry on its own: one the safety module refuses (a mount point in it, one
    made while it is walked) is reported and kept, and the others are still removed."""
    removed, refused = [], []
    for entry in entries:
        try:
            remove_tree(guard, entry)
        except UnsafeOperation as err:
            refused.append(f"{entry.name} ({err})")
            continue
        removed.append(entry.name)
    return removed, refused


def stale_entries(ctx: RepairContext, now: float | None = None) -> list[Path]:
    return stale_entries_in(ingest_dir(ctx), ctx.settings.ingest.stale_age, now)


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
        removed, refused = remove_entries(ctx.guard, stale_entries(ctx))
        done = f"removed {len(removed)} stale ingest entr{'y' if len(removed) == 1 else 'ies'}: {', '.join(removed)}"
        # A refused entry stays stale, so verify() fails and the ladder ends reporting it.
        return done + (f"; refused {len(refused)}: {'; '.join(refused)}" if refused else "")

    async def verify(self, ctx: RepairContext) -> bool:
        # containerd's own view: its runtime answers and no stale ingest remains under it.
        return await runtime_ready(ctx) and not stale_entries(ctx)
