"""What is at containerd's root now, and whether a repoint TARGET may take it. Read-only.

Every refusal says why in one line an operator can act on; nothing here changes the node.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from nodemedic.flows import mountunit
from nodemedic.flows.manifest import Usage
from nodemedic.mounts import MountInfo, mount_for
from nodemedic.safety import Guard, UnsafeOperation

# overlayfs needs an upper filesystem with d_type and trusted.* xattrs, local and persistent.
WHY_FSTYPE = ("containerd's overlayfs snapshotter needs a local, persistent filesystem with d_type and "
              "trusted.* xattrs (such as ext4 or xfs); network, FUSE, overlay, FAT and tmpfs filesystems are not")
# Room for containerd's metadata to grow while it starts, and for filesystems that round up.
HEADROOM_FRACTION = 0.05
HEADROOM_BYTES = 32 << 20


class Shape(StrEnum):
    DIRECTORY = "directory"  # a plain directory: copy, move aside, bind mount
    SYMLINK = "symlink"  # a link to the data elsewhere: the data stays, the link becomes a bind mount
    MOUNTED = "mounted"  # an earlier repoint's bind mount: copy from it, point the unit elsewhere


@dataclass(frozen=True)
class Layout:
    root: Path  # the configured root, as this process sees it
    shape: Shape
    data: Path  # where the data really is
    unit_text: str = ""  # the existing nodemedic mount unit, for Shape.MOUNTED


class Refused(Exception):
    """A repoint that must not start; the message says why."""


def inspect_root(root: Path, unit_path: Path, mounts: list[MountInfo]) -> Layout:
    if root.is_symlink():
        data = Path(os.path.realpath(root))
        if not data.is_dir():
            raise Refused(f"{root} is a symlink to {os.readlink(root)}, which is not a directory: nothing to repoint")
        return Layout(root, Shape.SYMLINK, data)
    if not root.is_dir():
        raise Refused(f"{root} does not exist or is not a directory: nothing to repoint")
    if any(m.mount_point == str(root) for m in mounts):
        text = unit_path.read_text() if unit_path.is_file() else ""
        what = mountunit.what_of(text)
        if not mountunit.is_ours(text) or not what:
            raise Refused(f"{root} is a mount point nodemedic did not make (no nodemedic unit {unit_path.name}); "
                          "move that mount by hand")
        return Layout(root, Shape.MOUNTED, Path(what), text)
    return Layout(root, Shape.DIRECTORY, root)


def _inside(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def is_conversion(layout: Layout, target: Path) -> bool:
    """A symlinked root repointed to its own link target: nothing to copy, only the link to replace."""
    return layout.shape is Shape.SYMLINK and Path(os.path.realpath(target)) == layout.data


def check_target(layout: Layout, target: Path, guard: Guard, mounts: list[MountInfo],
                 filesystems: tuple[str, ...]) -> Path:
    """Refuse a TARGET repoint cannot use; returns it resolved. Space is checked by check_space."""
    if not target.is_absolute():
        raise Refused(f"TARGET must be an absolute path, not {target}")
    try:
        guard.check(target)
    except UnsafeOperation as err:
        raise Refused(str(err)) from None
    if target.is_symlink():
        raise Refused(f"TARGET {target} is a symlink; give the real path it points to")
    real = Path(os.path.realpath(target))
    if is_conversion(layout, target):
        return real
    current = {layout.root, Path(os.path.realpath(layout.root)), layout.data}
    for top in current:
        if real == top or Path(os.path.abspath(target)) == top:
            raise Refused(f"TARGET {target} is the current root {top}: nothing would move")
        if _inside(real, top):
            raise Refused(f"TARGET {target} is inside the current root {top}: the copy would copy itself")
        if _inside(top, real):
            raise Refused(f"TARGET {target} contains the current root {top}")
    if real.exists():
        if not real.is_dir():
            raise Refused(f"TARGET {target} exists and is not a directory")
        children = sorted(os.listdir(real))
        if children == ["lost+found"]:
            raise Refused(f"TARGET {target} is the top of a filesystem (it holds lost+found); "
                          f"use a directory on it, such as {real / 'containerd'}")
        if children:
            raise Refused(f"TARGET {target} is not empty ({len(children)} entries); repoint copies into an empty "
                          "or new directory only")
    parent = real.parent
    if not parent.is_dir():
        raise Refused(f"the parent of TARGET, {parent}, does not exist: mount the target filesystem first "
                      "(a typo must not land the copy on the root filesystem)")
    mount = mount_for(str(parent), mounts)
    if mount is None or mount.fstype not in filesystems:
        fstype = mount.fstype if mount else "unknown"
        raise Refused(f"TARGET {target} is on a {fstype} filesystem; {WHY_FSTYPE} "
                      f"(allowed: {', '.join(filesystems)}; see repoint.filesystems)")
    if os.stat(parent).st_dev == os.stat(layout.data).st_dev:
        raise Refused(f"TARGET {target} is on the same filesystem as the current root ({mount.mount_point}); "
                      "repoint moves the root to other storage - is the target filesystem mounted?")
    return real


def check_space(target: Path, need: Usage) -> str:
    """Refuse when the target filesystem cannot hold the copy; returns a line for the plan."""
    st = os.statvfs(existing_ancestor(target))
    free = st.f_bavail * st.f_frsize
    wanted = int(need.bytes * (1 + HEADROOM_FRACTION)) + HEADROOM_BYTES
    if free < wanted:
        raise Refused(f"not enough free space for TARGET {target}: the root uses {size_text(need.bytes)}, "
                      f"{size_text(wanted)} with headroom, and only {size_text(free)} are free there")
    # btrfs reports no inode limit (f_files == 0)
    if st.f_files and st.f_favail < need.inodes * (1 + HEADROOM_FRACTION):
        raise Refused(f"not enough free inodes for TARGET {target}: the root has {need.inodes} entries, "
                      f"only {st.f_favail} inodes are free there")
    return f"the root uses {size_text(need.bytes)} in {need.inodes} entries; {size_text(free)} free at {target}"


def check_quiet(layout: Layout, mounts: list[MountInfo], shims: list[int]) -> None:
    """Refuse while workloads run: their shims hold mounts in the root, and copying a root that
    changes underneath gives a copy of nothing in particular."""
    if shims:
        raise Refused(f"{len(shims)} containerd shim(s) are running (pids {', '.join(map(str, shims[:5]))}); "
                      "drain the node first (kubectl drain), then repoint")
    for top in {layout.root, layout.data}:
        inner = [m.mount_point for m in mounts if m.mount_point.startswith(str(top).rstrip("/") + "/")]
        if inner:
            raise Refused(f"{len(inner)} mount(s) inside {top} ({inner[0]}, ...): containers still use it; drain "
                          "the node first")


def probe_xattrs(directory: Path) -> None:
    """overlayfs keeps whiteouts and opaque dirs in trusted.* xattrs: the target must take them."""
    name = "trusted.nodemedic-probe"
    try:
        os.setxattr(directory, name, b"1", follow_symlinks=False)
        os.removexattr(directory, name, follow_symlinks=False)
    except OSError as err:
        why = "no xattr support" if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) else err.strerror
        raise Refused(f"TARGET {directory} cannot hold trusted.* xattrs ({why}); {WHY_FSTYPE}") from None


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


