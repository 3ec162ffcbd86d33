"""A manifest of a directory tree, and the comparison that proves a copy is faithful.

containerd's overlayfs snapshots depend on more than file contents: whiteouts are 0/0 character
devices, opaque directories carry `trusted.overlay.*` xattrs, layers share hard links, and
images hold sparse files. The manifest records, per entry, kind, mode, owner, size, link target,
device numbers, xattrs, hard-link group and a SHA-256 of every regular file; both trees are
walked in the same order and compared as streams, so a root of a million entries needs no more
memory than its hard-link table.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the top; "." is the top itself
    kind: str
    mode: int
    uid: int
    gid: int
    size: int  # regular files and symlinks; 0 otherwise
    link: str  # symlink target
    rdev: tuple[int, int]  # character and block devices (overlayfs whiteouts are 0/0)
    xattrs: tuple[tuple[str, bytes], ...]
    digest: str  # SHA-256 of a regular file's contents
    hardlink_group: str  # for a file with several links: the first path of its inode, in walk order
    sparse: bool  # fewer blocks allocated than its size: a copy must stay sparse

    @property
    def key(self) -> tuple[str, ...]:
        return () if self.path == "." else tuple(self.path.split("/"))


_KINDS = ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"), (stat.S_ISCHR, "char"),
          (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "other")


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()  # a filesystem without xattr support has none to lose
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def _digest(path: str) -> str:
    with open(path, "rb", buffering=0) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _entry(top: str, rel: str, links: dict[tuple[int, int], str]) -> Entry:
    path = top if rel == "." else os.path.join(top, rel)
    st = os.lstat(path)
    kind = _kind(st.st_mode)
    group = ""
    if kind != "dir" and st.st_nlink > 1:
        group = links.setdefault((st.st_dev, st.st_ino), rel)
    return Entry(
        path=rel, kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        size=st.st_size if kind in ("file", "symlink") else 0,
        link=os.readlink(path) if kind == "symlink" else "",
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else (0, 0),
        xattrs=_xattrs(path),
        digest=_digest(path) if kind == "file" else "",
        hardlink_group=group,
        sparse=kind == "file" and st.st_blocks * 512 < st.st_size,
    )


def walk(top: str | Path) -> Iterator[Entry]:
    """Every entry under `top` (itself first), depth first, names sorted; symlinks never followed
    and other filesystems never entered (their mount point is listed, not its contents)."""
    top = str(top)
    top_dev = os.lstat(top).st_dev
    links: dict[tuple[int, int], str] = {}

    def visit(rel: str) -> Iterator[Entry]:
        entry = _entry(top, rel, links)
        yield entry
        if entry.kind != "dir":
            return
        directory = top if rel == "." else os.path.join(top, rel)
        if os.lstat(directory).st_dev != top_dev:
            return
        for name in sorted(os.listdir(directory)):
            yield from visit(name if rel == "." else f"{rel}/{name}")

    yield from visit(".")


def manifest(top: str | Path) -> list[Entry]:
    return list(walk(top))


def _differences(a: Entry, b: Entry) -> list[str]:
    out = []
    for f in fields(Entry):
        if f.name in ("path", "sparse"):
            continue
        left, right = getattr(a, f.name), getattr(b, f.name)
        if left != right:
            if f.name == "xattrs":
                left, right = sorted(n for n, _ in left), sorted(n for n, _ in right)
                if left == right:
                    left, right = "values", "differ"
            out.append(f"{a.path}: {f.name} {left!r} != {right!r}")
    if a.sparse and not b.sparse:
        out.append(f"{a.path}: sparse file copied without holes")
    return out


def compare(source: str | Path, copy: str | Path, limit: int = 20) -> list[str]:
    """Differences between two trees (at most `limit`, then a count); [] when the copy is faithful."""
    problems: list[str] = []
    extra = 0
    left, right = walk(source), walk(copy)
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.key < b.key):
            assert a is not None
            found = [f"{a.path}: missing in the copy"]
            a = next(left, None)
        elif a is None or b.key < a.key:
            found = [f"{b.path}: only in the copy"]
            b = next(right, None)
        else:
            found = _differences(a, b)
            a, b = next(left, None), next(right, None)
        for problem in found:
            if len(problems) < limit:
                problems.append(problem)
            else:
                extra += 1
    if extra:
        problems.append(f"... and {extra} more difference(s)")
    return problems


@dataclass(frozen=True)
class Usage:
    """What a tree needs on another filesystem: allocated bytes (hard links counted once) and inodes."""

    bytes: int
    inodes: int


def usage(top: str | Path) -> Usage:
    seen: set[tuple[int, int]] = set()
    total = inodes = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            inodes += 1
    return Usage(total + os.lstat(top).st_blocks * 512, inodes + 1)
