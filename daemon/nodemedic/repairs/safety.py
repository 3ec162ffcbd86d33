"""Every file change nodemedic makes goes through here.

- atomic writes: temp file in the same directory, fsync, rename, fsync the directory;
- removal never follows a symlink, never crosses a mount point (by mount id, checked again on
  every directory after it is opened, so a mount made during the walk is refused too), refuses
  `/`, any protected path and anything that contains one, and reports exactly what it removed.
  There is one removal walk (remove_tree); every cleanup (ingest, reset, repoint) uses it.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nodemedic.probes.fs import mount_for, read_mountinfo


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
    """Remove a directory tree by file descriptor, staying on its mount and inside it.

    Every directory is opened relative to its parent (O_DIRECTORY|O_NOFOLLOW, never a path, never
    a symlink) and, once open and before anything in it is removed, must still be on the walk
    root's mount (`mount_id`, not st_dev: a same-filesystem bind mount shares st_dev) and still
    hang where the walk found it. A directory that fails either is refused with UnsafeOperation
    and nothing further is removed, so a bind mount or a rename made *during* the walk (an
    attacker's, or kubelet's own bind mounts while the reset walks its state) is never followed.
    Returns the paths removed, deepest first.
    """
    top = Path(path)
    guard.check(top)
    try:
        top_st = os.lstat(top)
    except FileNotFoundError:
        return []
    if stat.S_ISLNK(top_st.st_mode) or not stat.S_ISDIR(top_st.st_mode):
        raise UnsafeOperation(f"{top} is not a real directory")
    # Before anything is removed: refuse the whole removal if the tree holds a mount point known
    # now, so the common case removes nothing at all. Mounts made after this look are caught by
    # the walk itself (_RemovalWalk.enter).
    real_top = os.path.realpath(top)
    mounts = read_mountinfo()
    for mount in mounts:
        if mount.mount_point == real_top or mount.mount_point.startswith(real_top.rstrip("/") + "/"):
            raise UnsafeOperation(f"{mount.mount_point} is a mount point inside {top}")
    home = mount_for(real_top, mounts)
    try:
        parent_fd = os.open(os.path.dirname(real_top), _DIR_FLAGS)
    except FileNotFoundError:
        return []
    try:
        # A mount on an ancestor made since the look above would move the whole walk elsewhere.
        if home is None or mount_id(parent_fd) != home.mount_id:
            raise UnsafeOperation(f"the mount holding {top} changed before its removal")
        return _RemovalWalk(top, parent_fd, top_st).run(os.path.basename(real_top))
    finally:
        os.close(parent_fd)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def mount_id(fd: int) -> int:
    """The id of the mount `fd` is on (`mnt_id:` in /proc/self/fdinfo, the first field of
    /proc/self/mountinfo). Unlike st_dev it tells a bind mount from the filesystem it binds."""
    try:
        info_fd = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            info = os.read(info_fd, 4096)
        finally:
            os.close(info_fd)
    except OSError as err:  # no /proc: the mount cannot be told, so nothing is removed
        raise UnsafeOperation(f"cannot tell which mount fd {fd} is on: {err}") from err
    for line in info.splitlines():
        if line.startswith(b"mnt_id:"):
            return int(line.split()[1])
    raise UnsafeOperation(f"no mnt_id for fd {fd} in /proc/self/fdinfo")


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@dataclass
class _Dir:
    """One open directory of the walk: its fd, its shown path, its identity, what is left in it."""

    fd: int
    path: str
    st: os.stat_result
    entries: list[tuple[str, bool]]


class _RemovalWalk:
    """Depth first, one fd per level, every step relative to an fd checked before it is used."""

    def __init__(self, top: Path, parent_fd: int, top_st: os.stat_result) -> None:
        self.top = top
        self.parent_fd = parent_fd
        self.parent_st = os.fstat(parent_fd)
        self.top_st = top_st
        self.mount = mount_id(parent_fd)  # the root's mount; enter() checks the root against it too
        self.stack: list[_Dir] = []
        self.removed: list[str] = []

    def run(self, name: str) -> list[str]:
        try:
            root = self.enter(self.parent_fd, name, str(self.top))
            if root is None:
                return []  # gone before the walk reached it
            if not _same(root.st, self.top_st):
                os.close(root.fd)
                raise UnsafeOperation(f"{self.top} was replaced before its removal")
            self.stack.append(root)
            self.in_place()
            while self.stack:
                self.step()
        finally:
            for level in self.stack:
                os.close(level.fd)
            self.stack.clear()
        self.rmdir(self.parent_fd, name, root)
        return self.removed

    def enter(self, dir_fd: int, name: str, shown: str) -> _Dir | None:
        """Open a directory for removal; None when it is gone or no longer a directory."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                return None  # swapped for a symlink or a file since it was listed: never followed
            raise
        try:
            # After the open, before anything in it is touched: the open may have crossed into a
            # mount made after the directory was listed.
            st = os.fstat(fd)
            if mount_id(fd) != self.mount or st.st_dev != self.top_st.st_dev:
                raise UnsafeOperation(f"{shown} is a mount point inside {self.top}; nothing under it is removed")
            return _Dir(fd, shown, st, self.listing(fd, shown))
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def listing(fd: int, shown: str) -> list[tuple[str, bool]]:
        entries = []
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append((entry.name, is_dir))
        return entries

    def in_place(self) -> None:
        """Each open directory still hangs under the one above it: a subtree renamed out of the
        tree (into a protected directory, say) is not emptied where it now is."""
        above = self.parent_st
        for level in self.stack:
            try:
                up = os.stat("..", dir_fd=level.fd, follow_symlinks=False)
            except FileNotFoundError:
                up = None
            if up is None or not _same(up, above):
                raise UnsafeOperation(f"{level.path} was moved or removed during the removal of {self.top}")
            above = level.st

    def step(self) -> None:
        here = self.stack[-1]
        if not here.entries:
            self.stack.pop()
            os.close(here.fd)
            if self.stack:
                self.rmdir(self.stack[-1].fd, os.path.basename(here.path), here)
                self.in_place()
            return
        name, is_dir = here.entries.pop()
        shown = os.path.join(here.path, name)
        if is_dir and self.descend(here, name, shown):
            return
        # Before each removal, not once per directory: a rename of this directory (or one above
        # it) out of the tree then costs at most the one entry whose removal was under way.
        self.in_place()
        try:
            os.unlink(name, dir_fd=here.fd)
        except FileNotFoundError:
            return
        except IsADirectoryError:  # a file when listed, a directory now
            self.descend(here, name, shown)
            return
        except OSError as err:
            if err.errno == errno.EBUSY:  # a file bind-mounted over this entry
                raise UnsafeOperation(f"{shown} is a mount point inside {self.top}") from err
            raise
        self.removed.append(shown)

    def descend(self, here: _Dir, name: str, shown: str) -> bool:
        child = self.enter(here.fd, name, shown)
        if child is None:
            return False
        self.stack.append(child)
        self.in_place()
        return True

    def rmdir(self, dir_fd: int, name: str, emptied: _Dir) -> None:
        """Remove the directory just emptied, if the name still means that directory."""
        try:
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is None or not _same(now, emptied.st):
            raise UnsafeOperation(f"{emptied.path} was moved or replaced during the removal of {self.top}")
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError as err:
            # Moved, swapped for a link, written into or mounted over since the look above.
            if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                raise UnsafeOperation(f"{emptied.path} changed during the removal of {self.top}: {err}") from err
            raise
        self.removed.append(emptied.path)


def ensure_dir(guard: Guard, path: str | Path, mode: int = 0o755) -> None:
    """Create a directory (and parents) unless it exists; never inside a protected path."""
    target = Path(path)
    guard.check(target)
    target.mkdir(mode=mode, parents=True, exist_ok=True)
