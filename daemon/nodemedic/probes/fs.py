"""Filesystem probe: statvfs capacity of a path (which mount holds it: nodemedic.mounts).

kubelet reports "invalid capacity 0 on image filesystem" when it cannot size the filesystem that
containerd names as its image filesystem; statvfs on that mountpoint is the ground truth that
confirms (or refutes) the log line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Which mount holds a path is read beneath everything (file-system safety needs it); the probe
# package still offers it, as it did before the reader moved down.
from nodemedic.mounts import MountInfo, mount_for, mount_holding, parse_mountinfo, read_mountinfo

__all__ = ["FsCapacity", "MountInfo", "fs_capacity", "fs_capacity_or_none", "mount_for", "mount_holding",
           "parse_mountinfo", "read_mountinfo"]


@dataclass(frozen=True, slots=True)
class FsCapacity:
    path: str
    capacity_bytes: int
    available_bytes: int


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
