"""Which files configuration is read from, and whether the daemon itself can read them.

A drop-in that cannot be read is an error, never skipped: a dangling or looping symlink, a
directory or a FIFO named x.toml, a file the daemon may not read. Only what the documentation
says is ignored is ignored (dot-files; names not ending in .toml, with a warning; in
signatures.d the masking rule: an empty file or a symlink to /dev/null).

"The daemon can read it" is judged with the daemon's own credentials, not the caller's:
nodemedic.service runs as uid 0 *without any capability* (CapabilityBoundingSet= empty), so
the kernel checks the mode bits for it as for any user: owner bits when the file is root's,
group bits when its group is root, other bits otherwise. `check-config` run by root (who
bypasses them with CAP_DAC_OVERRIDE) would otherwise call a mode-000 drop-in valid that the
daemon cannot open. POSIX ACLs are not consulted.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nodemedic.config.errors import Problem

# The daemon's credentials (units/nodemedic.service: no User=, no capabilities). Under
# PrivateUsers=yes files of other owners appear as nobody/nogroup: still not root's.
DAEMON_UID = 0
DAEMON_GID = 0
READ, WRITE, SEARCH = 4, 2, 1
DEV_NULL = "/dev/null"

Warn = Callable[[str], None]


def daemon_may(st: os.stat_result, want: int) -> bool:
    """Whether uid 0 without capabilities has the `want` permission bits on this inode."""
    if st.st_uid == DAEMON_UID:
        bits = st.st_mode >> 6
    elif st.st_gid == DAEMON_GID:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def _denied(path: Path, st: os.stat_result, want: int, what: str) -> str:
    mode = stat.S_IMODE(st.st_mode)
    return (f"{what} {path}: mode {mode:04o}, owner uid {st.st_uid}, group gid {st.st_gid}: nodemedic "
            f"(root without capabilities) may not {'read' if want & READ else 'search'} it")


def _search_problem(resolved: Path, base: Path) -> str | None:
    """The first directory above `resolved`, up to `base`, the daemon may not pass through."""
    for parent in resolved.parents:
        if base != Path("/") and not parent.is_relative_to(base):
            break
        try:
            st = parent.stat()
        except OSError:
            return None  # a race with a rename: the read itself will say what is wrong
        if not daemon_may(st, SEARCH):
            return _denied(parent, st, SEARCH, "directory")
    return None


def unreadable(path: Path, base: Path = Path("/")) -> str | None:
    """Why the daemon cannot read `path` as a configuration file, or None if it can.

    `base` is the --root directory: directories above it are not the node's.
    """
    try:
        st = path.stat()  # follows symlinks, as the read does
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        if err.errno == errno.ENOENT and path.is_symlink():
            return f"a dangling symlink (to {os.readlink(path)})"
        return f"cannot read: {err.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a file"
    resolved = Path(os.path.realpath(path))
    if not stat.S_ISREG(st.st_mode) and str(resolved) != DEV_NULL:
        # A FIFO would block the daemon's start or reload for ever; a device is no config.
        return "not a regular file"
    if str(resolved) == DEV_NULL:
        return None
    if not daemon_may(st, READ):
        return _denied(path, st, READ, "file")
    return _search_problem(resolved, Path(os.path.realpath(base)))


def masked(path: Path) -> bool:
    """The masking rule of signatures.d (as systemd's for units): an empty file or a symlink
    to /dev/null disables the file of the same name."""
    try:
        if path.is_symlink() and os.readlink(path) == DEV_NULL:
            return True
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


@dataclass(frozen=True)
class Listing:
    files: tuple[Path, ...]
    masked: tuple[Path, ...]
    problems: tuple[Problem, ...]


def list_dropins(directory: Path, warn: Warn, *, base: Path = Path("/"), allow_masking: bool = False,
                 skip_hidden: bool = True) -> Listing:
    """The *.toml entries of `directory` in lexical order, each one checked as the daemon reads it.

    A missing directory is empty. Names not ending in .toml are ignored with a warning, never
    read; everything else that is not a readable file is a problem.
    """
    files: list[Path] = []
    masks: list[Path] = []
    problems: list[Problem] = []
    if not os.path.lexists(directory):
        return Listing((), (), ())
    try:
        st = directory.stat()
        if not stat.S_ISDIR(st.st_mode):
            return Listing((), (), (Problem(directory, 0, "not a directory"),))
        if not daemon_may(st, READ | SEARCH):
            return Listing((), (), (Problem(directory, 0, _denied(directory, st, READ, "directory")),))
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as err:
        reason = "a symlink loop" if err.errno == errno.ELOOP else f"cannot list: {err.strerror}"
        return Listing((), (), (Problem(directory, 0, reason),))
    for entry in entries:
        if skip_hidden and entry.name.startswith("."):
            continue
        if entry.suffix != ".toml":
            warn(f"{entry}: ignored, drop-ins must end in .toml")
            continue
        if allow_masking and masked(entry):
            masks.append(entry)
            continue
        if (reason := unreadable(entry, base)) is not None:
            problems.append(Problem(entry, 0, reason))
        else:
            files.append(entry)
    return Listing(tuple(files), tuple(masks), tuple(problems))
