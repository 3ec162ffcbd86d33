"""Every file change nodemedic makes goes through here.

- atomic writes: temp file in the same directory, fsync, rename, fsync the directory;
- removal never follows a symlink, never crosses a mount point, refuses `/`, any protected path
  and anything that contains one, and reports exactly what it removed.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nodemedic.probes.fs import read_mountinfo


class UnsafeOperation(Exception):
    """A change that would touch `/`, a protected path, or leave its target."""


@dataclass(frozen=True)
class Guard:
    """The protected paths of the node, already resolved."""

    protected: tuple[Path, ...]

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> Guard:
        return cls(tuple(Path(os.path.realpath(p)) for p in paths))

    def check(self, target: str | Path) -> Path:
        """Refuse `/`, a protected path, a path inside one, or a path containing one."""
        real = Path(os.path.realpath(target))
        lexical = Path(os.path.abspath(target))
        if real == Path("/") or lexical == Path("/"):
            raise UnsafeOperation(f"refusing to touch /: {target}")
        for protected in self.protected:
            for candidate in (real, lexical):
                if candidate == protected or protected in candidate.parents or candidate in protected.parents:
                    raise UnsafeOperation(f"refusing to touch {target}: protected path {protected}")
        return real

    def check_entry(self, path: str | Path) -> Path:
        """Like check() for the directory entry itself: the parent is resolved, the last
        component is not, so a symlink is judged as the link it is, not as its target."""
        entry = Path(path)
        parent = Path(os.path.realpath(entry.parent))
        self.check(parent)
        lexical = parent / entry.name
        for protected in self.protected:
            if lexical == protected or protected in lexical.parents or lexical in protected.parents:
                raise UnsafeOperation(f"refusing to touch {path}: protected path {protected}")
        return lexical


def atomic_write(guard: Guard, path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a torn one."""
    target = Path(path)
    guard.check(target)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.rename(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_file(guard: Guard, path: str | Path) -> bool:
    """Unlink one file (or symlink itself, never its target); False if it was already gone."""
    target = guard.check_entry(path)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise UnsafeOperation(f"{target} is a directory; use remove_tree")
    os.unlink(target)
    _fsync_dir(target.parent)
    return True


def remove_tree(guard: Guard, path: str | Path) -> list[str]:
    """Remove a directory tree by file descriptor, staying on its filesystem and inside it.

    Uses os.fwalk (openat with O_NOFOLLOW semantics): a symlink inside the tree is removed as a
    link, never followed; a directory on another device (a mount point) is left alone and
    reported. Returns the paths removed, deepest first.
    """
    top = Path(path)
    guard.check(top)
    try:
        top_st = os.lstat(top)
    except FileNotFoundError:
        return []
    if stat.S_ISLNK(top_st.st_mode) or not stat.S_ISDIR(top_st.st_mode):
        raise UnsafeOperation(f"{top} is not a real directory")
    # Before anything is removed: refuse the whole removal if the tree holds a mount point, so
    # a bind mount of a protected directory can never be emptied through it. A bind mount from
    # the same filesystem has the same st_dev as its parent, so the kernel's mount table is
    # the authority; the st_dev check below also catches mounts made after this look.
    real_top = os.path.realpath(top)
    for mount in read_mountinfo():
        if mount.mount_point == real_top or mount.mount_point.startswith(real_top.rstrip("/") + "/"):
            raise UnsafeOperation(f"{mount.mount_point} is a mount point inside {top}")
    for dirpath, dirnames, _files, dirfd in os.fwalk(top, topdown=True, follow_symlinks=False):
        for name in dirnames:
            if os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_dev != top_st.st_dev:
                raise UnsafeOperation(f"{os.path.join(dirpath, name)} is a mount point inside {top}")
    removed: list[str] = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, topdown=False, follow_symlinks=False):
        for name in filenames:
            os.unlink(name, dir_fd=dirfd)
            removed.append(os.path.join(dirpath, name))
        for name in dirnames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):  # fwalk lists links to directories here; never follow them
                os.unlink(name, dir_fd=dirfd)
                removed.append(os.path.join(dirpath, name))
                continue
            if st.st_dev != top_st.st_dev:
                raise UnsafeOperation(f"{os.path.join(dirpath, name)} became a mount point during removal")
            os.rmdir(name, dir_fd=dirfd)
            removed.append(os.path.join(dirpath, name))
    os.rmdir(top)
    removed.append(str(top))
    return removed


def ensure_dir(guard: Guard, path: str | Path, mode: int = 0o755) -> None:
    """Create a directory (and parents) unless it exists; never inside a protected path."""
    target = Path(path)
    guard.check(target)
    target.mkdir(mode=mode, parents=True, exist_ok=True)
