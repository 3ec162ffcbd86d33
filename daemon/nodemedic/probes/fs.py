"""Filesystem probe: statvfs capacity of a path and which mount holds it.

kubelet reports "invalid capacity 0 on image filesystem" when it cannot size the filesystem that
containerd names as its image filesystem; statvfs on that mountpoint is the ground truth that
confirms (or refutes) the log line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FsCapacity:
    path: str
    capacity_bytes: int
    available_bytes: int


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


def fs_capacity(path: str) -> FsCapacity:
    """statvfs(path); raises OSError (ENOENT for a dangling root symlink, ENOTCONN for a dead
    FUSE mount, …) exactly as the kernel reports it, so callers can log the real reason."""
    st = os.statvfs(path)
    return FsCapacity(
        path=path, capacity_bytes=st.f_blocks * st.f_frsize, available_bytes=st.f_bavail * st.f_frsize
    )


def fs_capacity_or_none(path: str) -> FsCapacity | None:
    try:
        return fs_capacity(path)
    except OSError:
        return None


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


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
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
