"""containerd's content ingest dir: partial downloads, and which of them nobody writes any more.

"Open for writing" is asked of the kernel, not of /proc: nodemedic runs without capabilities and
in its own user namespace, where containerd's file descriptors cannot be read (a /proc scan would
silently see no writer at all). A read lease (F_SETLEASE F_RDLCK) is refused with EAGAIN exactly
while some process has the file open for writing, and needs nothing but owning the file. What
cannot be asked (another owner, a filesystem without leases) counts as being written: an entry
is stale only when it provably is not written.

Read by the detector's condition and by the repair alike, so it lives beneath both.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import time
from pathlib import Path

INGEST = ("io.containerd.content.v1.content", "ingest")


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
