"""Every file change nodemedic makes goes through here.

- atomic writes: temp file in the same directory, fsync, rename, fsync the directory;
- every operation works relative to a directory fd opened component by component without
  following a symlink, and checks that fd's mount id against the mount mountinfo says holds that
  path: a mount made on the directory (or above it) after the check is refused, one made after the
  open is not followed;
- a path is refused when the mount that holds it exposes a protected path, whatever its name:
  a protected directory bind-mounted onto an ancestor of the target (realpath does not show
  mounts) is judged by where the mount's `root` lies in its filesystem, not by its mount point;
- a protected path is also known by its identity (st_dev, st_ino), taken when the guard is made
  and again at each operation: a protected directory renamed into the target's directory or an
  ancestor's place (names and mounts then look innocent) is refused once the directory is open,
  and so is a protected file renamed onto the target or a protected directory into a tree being
  removed;
- removal never follows a symlink, never crosses a mount point (by mount id, checked again on
  every directory after it is opened, so a mount made during the walk is refused too), refuses
  `/`, any protected path and anything that contains one, and reports exactly what it removed.
  There is one removal walk (remove_tree); every cleanup (ingest, reset, repoint) uses it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nodemedic.mounts import MountInfo, mount_holding, read_mountinfo


class UnsafeOperation(Exception):
    """A change that would touch `/`, a protected path, or leave its target."""


@dataclass(frozen=True)
class Guard:
    """The protected paths of the node, already resolved."""

    protected: tuple[Path, ...]
    # (st_dev, st_ino) of each protected path that existed when the guard was made: a protected
    # directory renamed away since then is still known for what it is.
    identities: frozenset[tuple[int, int]] = field(default=frozenset(), compare=False)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> Guard:
        protected = tuple(Path(os.path.realpath(p)) for p in paths)
        return cls(protected, _identities(protected))

    def forbidden(self) -> frozenset[tuple[int, int]]:
        """The identities no change may touch or happen inside: those taken when the guard was
        made, and those of the protected paths now (one made since). Taken first in every
        operation, before its name checks. A protected directory deleted since the guard was made
        whose inode number the filesystem gives to a new directory makes that one refused too,
        until the next reload makes a new guard: the safe direction."""
        return self.identities | _identities(self.protected)

    def check(self, target: str | Path, mounts: list[MountInfo] | None = None) -> Path:
        """Refuse `/`, a protected path, a path inside one, or a path containing one, by name and
        by what the mount holding it really exposes. `mounts` is /proc/self/mountinfo as read by
        the caller (read here when not given), so the check and the caller's mount-id checks
        judge one and the same table."""
        real = Path(os.path.realpath(target))
        lexical = Path(os.path.abspath(target))
        if real == Path("/") or lexical == Path("/"):
            raise UnsafeOperation(f"refusing to touch /: {target}")
        for protected in self.protected:
            for candidate in (real, lexical):
                if candidate == protected or protected in candidate.parents or candidate in protected.parents:
                    raise UnsafeOperation(f"refusing to touch {target}: protected path {protected}")
        self.check_exposure(real, target, mounts)
        return real

    def check_entry(self, path: str | Path, mounts: list[MountInfo] | None = None) -> Path:
        """Like check() for the directory entry itself: the parent is resolved, the last
        component is not, so a symlink is judged as the link it is, not as its target."""
        entry = Path(path)
        parent = Path(os.path.realpath(entry.parent))
        if mounts is None:
            mounts = _mountinfo(path)
        self.check(parent, mounts)
        lexical = parent / entry.name
        for protected in self.protected:
            if lexical == protected or protected in lexical.parents or lexical in protected.parents:
                raise UnsafeOperation(f"refusing to touch {path}: protected path {protected}")
        # The entry itself may be a mount point: a protected file bind-mounted over it.
        self.check_exposure(lexical, path, mounts)
        return lexical

    def check_exposure(self, real: Path, shown: str | Path, mounts: list[MountInfo] | None = None) -> None:
        """Refuse `real` when the mount holding it shows a protected path (or a directory above or
        below one) under another name: a bind mount of a protected directory onto an ancestor of
        the target. Names cannot tell (realpath does not show mounts); the filesystem can: the
        same major:minor, and the target's place in that filesystem (the mount's `root` plus the
        rest of the path) at, under or above the protected path's place in it."""
        if not self.protected:
            return
        if mounts is None:
            mounts = _mountinfo(shown)
        here = _place(str(real), mounts)
        if here is None:
            raise UnsafeOperation(f"no mount holds {shown} in /proc/self/mountinfo")
        for protected in self.protected:
            there = _place(str(protected), mounts)
            if there is None or there[0] != here[0]:
                continue
            if _related(here[1], there[1]):
                raise UnsafeOperation(f"refusing to touch {shown}: its mount exposes protected path {protected} "
                                      f"({here[0]}:{here[1]})")


def _identities(paths: Iterable[Path]) -> frozenset[tuple[int, int]]:
    found = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue  # not there (yet): judged by name, and by identity once it exists
        found.add((st.st_dev, st.st_ino))
    return frozenset(found)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _refuse_inside_protected(fd: int, shown: str, forbidden: frozenset[tuple[int, int]]) -> None:
    """Refuse the open directory `fd` if it, or any directory above it, is a protected one by
    identity. Walked up by "..", from the directory itself: where it really is now, whatever its
    path said when it was checked."""
    if not forbidden:
        return
    st = os.fstat(fd)
    up_fd = -1
    try:
        while True:
            if _identity(st) in forbidden:
                raise UnsafeOperation(f"refusing to touch {shown}: it is inside a protected directory "
                                      "(renamed into its place since it was checked)")
            parent_fd = os.open("..", _DIR_FLAGS, dir_fd=fd if up_fd < 0 else up_fd)
            if up_fd >= 0:
                os.close(up_fd)
            up_fd = parent_fd
            parent = os.fstat(up_fd)
            if _identity(parent) == _identity(st):
                return  # "/" is its own parent
            st = parent
    finally:
        if up_fd >= 0:
            os.close(up_fd)


def _place(path: str, mounts: list[MountInfo]) -> tuple[str, str] | None:
    """Where `path` (absolute and normalised; its symlinks already resolved, or meant to be judged
    as links) lies in its filesystem: (major:minor, path from that filesystem's root), through
    the mount that holds it."""
    mount = mount_holding(path, mounts)
    if mount is None:
        return None
    rest = os.path.relpath(path, mount.mount_point)
    return mount.major_minor, posixpath.normpath(posixpath.join(mount.root, "" if rest == "." else rest))


def _related(a: str, b: str) -> bool:
    """The same place, or one inside the other."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(real: str, mounts: list[MountInfo], forbidden: frozenset[tuple[int, int]]) -> int:
    """Open the resolved directory `real` one component at a time from `/`, never following a
    symlink (one made since realpath() looked is refused), and check that the fd is on the mount
    `mounts` says holds `real` and is not inside a `forbidden` (protected) directory. A mount
    made on it or above it since `mounts` was read is refused, and so is a protected directory
    renamed into its place or an ancestor's; a mount made after this returns is not followed,
    since every later step is relative to the fd. FileNotFoundError when a component is gone."""
    expected = mount_holding(real, mounts)
    fd = os.open("/", _DIR_FLAGS)
    try:
        for name in [part for part in real.split("/") if part]:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise UnsafeOperation(f"{real} holds a symlink that was not there when it was resolved") from err
                raise
            os.close(fd)
            fd = child
        if expected is None or mount_id(fd) != expected.mount_id:
            raise UnsafeOperation(f"the mount holding {real} changed since it was checked")
        _refuse_inside_protected(fd, real, forbidden)
        return fd
    except BaseException:
        os.close(fd)
        raise


def atomic_write(guard: Guard, path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a torn one.

    The temp file is made, and renamed over the target, relative to the target's directory fd
    (opened and mount-checked by _open_dir), so a mount made on that directory in between never
    receives the temp file nor the rename."""
    target = Path(path)
    forbidden = guard.forbidden()  # before the name checks: a rename after them is caught by it
    mounts = _mountinfo(target)
    guard.check(target, mounts)  # what a symlink at `path` points to, as before
    guard.check_entry(target, mounts)  # and the directory the rename really happens in
    dir_fd = _open_dir(os.path.realpath(target.parent), mounts, forbidden)
    try:
        _refuse_protected_entry(dir_fd, target.name, target, forbidden)
        tmp = f".{target.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fchmod(handle.fileno(), mode)
                os.fsync(handle.fileno())
            # Again just before the rename: a protected file renamed onto the target while the
            # data was written would be replaced by it.
            _refuse_protected_entry(dir_fd, target.name, target, forbidden)
            os.rename(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _refuse_protected_entry(dir_fd: int, name: str, shown: str | Path,
                            forbidden: frozenset[tuple[int, int]]) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if _identity(st) in forbidden:
        raise UnsafeOperation(f"refusing to touch {shown}: it is a protected path renamed into its place")


def _mountinfo(shown: str | Path) -> list[MountInfo]:
    try:
        return read_mountinfo()
    except OSError as err:  # no /proc: the mount cannot be told, so nothing is changed
        raise UnsafeOperation(f"cannot tell which mount holds {shown}: {err}") from err


def remove_file(guard: Guard, path: str | Path) -> bool:
    """Unlink one file (or symlink itself, never its target); False if it was already gone.

    The unlink is relative to the parent's fd (opened and mount-checked by _open_dir), never by
    path: a mount made on the parent after the check does not redirect it."""
    forbidden = guard.forbidden()
    mounts = _mountinfo(path)
    target = guard.check_entry(path, mounts)
    try:
        dir_fd = _open_dir(str(target.parent), mounts, forbidden)
    except FileNotFoundError:
        return False
    try:
        try:
            st = os.stat(target.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeOperation(f"{target} is a directory; use remove_tree")
        if _identity(st) in forbidden:
            raise UnsafeOperation(f"refusing to touch {target}: it is a protected path renamed into its place")
        try:
            os.unlink(target.name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
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
    forbidden = guard.forbidden()
    mounts = _mountinfo(top)
    guard.check(top, mounts)
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
    for mount in mounts:
        if mount.mount_point == real_top or mount.mount_point.startswith(real_top.rstrip("/") + "/"):
            raise UnsafeOperation(f"{mount.mount_point} is a mount point inside {top}")
    try:
        # A mount on an ancestor made since the look above would move the whole walk elsewhere:
        # _open_dir refuses it.
        parent_fd = _open_dir(os.path.dirname(real_top), mounts, forbidden)
    except FileNotFoundError:
        return []
    try:
        return _RemovalWalk(top, parent_fd, top_st, forbidden).run(os.path.basename(real_top))
    finally:
        os.close(parent_fd)


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

    def __init__(self, top: Path, parent_fd: int, top_st: os.stat_result,
                 forbidden: frozenset[tuple[int, int]]) -> None:
        self.top = top
        self.forbidden = forbidden
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
            if _identity(st) in self.forbidden:
                raise UnsafeOperation(f"{shown} is a protected directory renamed into {self.top}; "
                                      "nothing under it is removed")
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
    """Create a directory (and parents) unless it exists; never inside a protected path.

    Like `mkdir -p`, but each missing level is made and opened relative to the one above it,
    starting from the deepest existing ancestor opened and mount-checked by _open_dir, and each
    new level must stay on that mount: a mount made meanwhile gets no directory made in it."""
    target = Path(path)
    forbidden = guard.forbidden()
    mounts = _mountinfo(target)
    real = Path(guard.check(target, mounts))
    existing, missing = real, []
    while not os.path.lexists(existing):
        missing.insert(0, existing.name)
        existing = existing.parent
    fd = _open_dir(str(existing), mounts, forbidden)
    try:
        mount = mount_id(fd)
        for n, name in enumerate(missing):
            try:  # intermediate levels get the default mode, as Path.mkdir(parents=True) gives them
                os.mkdir(name, mode if n == len(missing) - 1 else 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise UnsafeOperation(f"{existing / name} became a symlink while {target} was made") from err
                raise
            os.close(fd)
            fd = child
            existing = existing / name
            if mount_id(fd) != mount:
                raise UnsafeOperation(f"{existing} is a mount point made while {target} was made")
            if _identity(os.fstat(fd)) in forbidden:
                raise UnsafeOperation(f"{existing} is a protected directory renamed into its place "
                                      f"while {target} was made")
    finally:
        os.close(fd)
