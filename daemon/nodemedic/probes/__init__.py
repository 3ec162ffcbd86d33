"""Live probes: ask the real components (containerd over CRI, the kernel via statvfs) what is true now.

A probe runs on demand — to confirm a suspicion or verify a repair — never on a busy timer.
"""

from nodemedic.probes.cri import (
    DEFAULT_SOCKET,
    CriCallFailed,
    CriClient,
    CriError,
    CriStatus,
    CriUnavailable,
    ImageFsUsage,
    RuntimeVersion,
    cri_status,
    imagefs_info,
)
from nodemedic.probes.fs import (
    FsCapacity,
    MountInfo,
    fs_capacity,
    fs_capacity_or_none,
    mount_for,
    read_mountinfo,
)

__all__ = [
    "DEFAULT_SOCKET",
    "CriCallFailed",
    "CriClient",
    "CriError",
    "CriStatus",
    "CriUnavailable",
    "FsCapacity",
    "ImageFsUsage",
    "MountInfo",
    "RuntimeVersion",
    "cri_status",
    "fs_capacity",
    "fs_capacity_or_none",
    "imagefs_info",
    "mount_for",
    "read_mountinfo",
]
