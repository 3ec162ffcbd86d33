"""Which mount holds a path, from /proc/self/mountinfo.

A pure reader of the kernel's table, beneath everything: the file-system safety module
(nodemedic.safety) needs it to refuse a path behind a mount, and probes, repairs and flows ask
it where containerd's root lives.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MountInfo:
    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in mountinfo as \ooo octal.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountInfo]:
    mounts = []
    for line in text.splitlines():
        parts = line.split(" ")
        try:
            sep = parts.index("-", 6)  # optional fields (shared:N, master:N) end at "-"
            mounts.append(
                MountInfo(
                    mount_id=int(parts[0]),
                    parent_id=int(parts[1]),
                    major_minor=parts[2],
                    root=_unescape(parts[3]),
                    mount_point=_unescape(parts[4]),
                    options=parts[5],
                    fstype=parts[sep + 1],
                    source=_unescape(parts[sep + 2]),
                    super_options=parts[sep + 3] if len(parts) > sep + 3 else "",
                )
            )
        except (ValueError, IndexError):
            continue  # a line we do not understand is not a mount we can use
    return mounts


MOUNTINFO = "/proc/self/mountinfo"


class MountTable:
    """/proc/self/mountinfo, parsed again only when the kernel says the table changed.

    A node with many pods has thousands of mounts, and reading and parsing them is milliseconds
    (bench/safety_cost.py: 6–12 ms at 1,500), paid by every file change the safety module
    makes. The kernel marks an open mountinfo file POLLPRI when its mount namespace's table has
    changed since the file was opened or last polled, so a poll with no wait tells whether the
    copy is current. The poll comes before the re-read: a change made during the read shows at
    the next poll. A table that is stale anyway (a mount made between the poll and its use) is
    caught where it matters: every safety decision is checked again against the mount id of the
    open directory, which refuses a change it did not expect."""

    def __init__(self, path: str = MOUNTINFO) -> None:
        self.path = path
        self._fd = -1
        self._poller: select.poll | None = None
        self._mounts: list[MountInfo] = []

    def read(self) -> list[MountInfo]:
        if self._poller is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            poller = select.poll()
            poller.register(fd, select.POLLPRI)
            self._fd, self._poller = fd, poller
            self._parse()
        elif any(events & select.POLLPRI for _fd, events in self._poller.poll(0)):
            self._parse()
        return list(self._mounts)

    def _parse(self) -> None:
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(self._fd, 1 << 16):
                chunks.append(chunk)
        except OSError:
            # The poll that sent us here has been taken: a kept table would look current from
            # now on. Start again from open() at the next read.
            os.close(self._fd)
            self._fd, self._poller, self._mounts = -1, None, []
            raise
        self._mounts = parse_mountinfo(b"".join(chunks).decode("utf-8", errors="surrogateescape"))


_TABLE = MountTable()


def read_mountinfo(path: str = MOUNTINFO) -> list[MountInfo]:
    """The process's mount table (kept, and re-read when it changes: MountTable); any other
    path is read as it is now."""
    if path == MOUNTINFO:
        return _TABLE.read()
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def mount_for(path: str, mounts: list[MountInfo] | None = None) -> MountInfo | None:
    """The mount that holds `path` after resolving symlinks (like `findmnt -T`): the longest
    mount point that is a prefix of the resolved path; among equal ones the last listed, since
    a later mount on the same point hides the earlier one."""
    if mounts is None:
        mounts = read_mountinfo()
    return mount_holding(os.path.realpath(path), mounts)


def mount_holding(path: str, mounts: list[MountInfo]) -> MountInfo | None:
    """mount_for() for an absolute, normalised path taken as it is, its last component not
    resolved: the mount of a symlink is the mount the link itself lies on."""
    best: MountInfo | None = None
    for m in mounts:
        mp = m.mount_point
        inside = path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best
