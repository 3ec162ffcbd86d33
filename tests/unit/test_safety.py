"""The safety module against symlinks and bind mounts aimed at protected paths."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodemedic.safety import Guard, UnsafeOperation, atomic_write, ensure_dir, remove_file, remove_tree

NAMES = st.text(alphabet="abcxyz", min_size=1, max_size=4)
# A tree: each entry is (relative dir path parts, name, kind) where kind is file, dir,
# a link to the protected dir, a link to a file inside it, or a relative link climbing out.
ENTRIES = st.lists(st.tuples(st.lists(NAMES, max_size=3), NAMES,
                             st.sampled_from(["file", "dir", "link-dir", "link-file", "link-up"])),
                   min_size=1, max_size=12)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = Path(dirpath, name)
            h.update(str(full.relative_to(path)).encode() + full.read_bytes())
    return h.hexdigest()


def make_protected(base: Path) -> Path:
    protected = base / "srv" / "media"
    (protected / "album").mkdir(parents=True)
    (protected / "album" / "song.flac").write_bytes(b"\x00music" * 100)
    (protected / "notes.txt").write_text("keep me")
    return protected


def build_tree(top: Path, entries, protected: Path) -> None:
    top.mkdir(parents=True, exist_ok=True)
    for parts, name, kind in entries:
        directory = top.joinpath(*parts)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue
        if Path(os.path.realpath(directory)).is_relative_to(protected):
            continue  # the tree is built beside the protected dir, never through a link into it
        target = directory / name
        if target.exists() or target.is_symlink():
            continue
        if kind == "file":
            target.write_text("x")
        elif kind == "dir":
            target.mkdir()
        elif kind == "link-dir":
            target.symlink_to(protected)
        elif kind == "link-file":
            target.symlink_to(protected / "notes.txt")
        else:
            target.symlink_to(os.path.relpath(protected, directory))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES)
def test_remove_tree_never_follows_links_into_protected_paths(entries):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        protected = make_protected(base)
        top = base / "var" / "lib" / "state"
        before = digest(protected)
        build_tree(top, entries, protected)
        assert digest(protected) == before
        removed = remove_tree(Guard.from_paths([protected]), top)
        assert not top.exists() and not top.is_symlink()
        assert digest(protected) == before
        assert str(top) in removed and all(p == str(top) or Path(p).is_relative_to(top) for p in removed)


@pytest.mark.parametrize("target", ["/", "srv/media", "srv/media/album", "srv", "."])
def test_refuses_root_protected_paths_and_their_ancestors(tmp_path, target):
    protected = make_protected(tmp_path)
    guard = Guard.from_paths([protected])
    path = Path("/") if target == "/" else tmp_path / target
    with pytest.raises(UnsafeOperation):
        remove_tree(guard, path)
    if path == protected or protected in path.parents:
        with pytest.raises(UnsafeOperation):
            atomic_write(guard, path / "new.conf", b"x")
    assert (protected / "notes.txt").read_text() == "keep me"


def test_a_link_to_a_protected_path_is_refused_as_a_target(tmp_path):
    protected = make_protected(tmp_path)
    link = tmp_path / "innocent"
    link.symlink_to(protected)
    guard = Guard.from_paths([protected])
    with pytest.raises(UnsafeOperation):
        remove_tree(guard, link)
    with pytest.raises(UnsafeOperation):
        atomic_write(guard, link / "notes.txt", b"overwritten")
    assert (protected / "notes.txt").read_text() == "keep me"


def test_remove_file_removes_a_link_never_its_target(tmp_path):
    protected = make_protected(tmp_path)
    (tmp_path / "conf").mkdir()
    link = tmp_path / "conf" / "10-x.conflist"
    link.symlink_to(protected / "notes.txt")
    assert remove_file(Guard.from_paths([protected]), link) is True
    assert not link.is_symlink() and (protected / "notes.txt").read_text() == "keep me"
    assert remove_file(Guard.from_paths([protected]), link) is False


def _mount_bind(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def test_a_bind_mount_of_a_protected_dir_inside_the_tree_stops_the_removal(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("bind-mount safety test needs root (CI runs as root)")
    protected = make_protected(tmp_path)
    before = digest(protected)
    top = tmp_path / "var" / "lib" / "containerd"
    (top / "io.containerd.content.v1.content" / "ingest").mkdir(parents=True)
    (top / "a-file").write_text("x")
    mountpoint = top / "mnt"
    mountpoint.mkdir()
    _mount_bind(protected, mountpoint)
    try:
        with pytest.raises(UnsafeOperation, match="mount point"):
            remove_tree(Guard.from_paths([protected]), top)
        assert (top / "a-file").exists(), "nothing may be removed once a mount point is found"
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert digest(protected) == before


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    guard = Guard.from_paths([tmp_path / "protected"])
    target = tmp_path / "conf" / "x.conflist"
    target.parent.mkdir()
    atomic_write(guard, target, b"one", mode=0o644)
    atomic_write(guard, target, b"two", mode=0o600)
    assert target.read_bytes() == b"two" and (target.stat().st_mode & 0o777) == 0o600
    assert os.listdir(target.parent) == ["x.conflist"]


# A protected directory renamed away after the guard was made: its name no longer says what it
# is, and it is on the same mount, so only its identity (st_dev, st_ino) can tell.
RENAMED = ["parent", "ancestor", "tree", "file"]


def renamed_into_place(tmp_path: Path, where: str) -> tuple[Guard, Path, Path]:
    """A guard made first; then the protected dir (or its file) is renamed to where an operation
    under var/lib/state will look. Returns the guard, the target and where the protected data is."""
    protected = make_protected(tmp_path)
    guard = Guard.from_paths([protected, protected / "notes.txt"])
    state = tmp_path / "var" / "lib" / "state"
    state.mkdir(parents=True)
    if where == "parent":  # the target's directory is the protected dir
        protected.rename(state / "conf")
        return guard, state / "conf" / "notes.txt", state / "conf"
    if where == "ancestor":
        protected.rename(state / "conf")
        return guard, state / "conf" / "album" / "song.flac", state / "conf"
    if where == "tree":  # inside the tree a removal walks
        (state / "tree" / "sub").mkdir(parents=True)
        protected.rename(state / "tree" / "sub" / "media")
        return guard, state / "tree", state / "tree" / "sub" / "media"
    (state / "conf").mkdir()
    (protected / "notes.txt").rename(state / "conf" / "notes.txt")
    return guard, state / "conf" / "notes.txt", state / "conf" / "notes.txt"


@pytest.mark.parametrize("operation, where", [(operation, where) for operation in ("remove", "write", "mkdir")
                                               for where in RENAMED if (operation, where) != ("mkdir", "file")])
def test_a_protected_path_renamed_into_the_targets_place_is_refused_by_identity(tmp_path, where, operation):
    guard, target, data = renamed_into_place(tmp_path, where)
    before = digest(data) if data.is_dir() else data.read_bytes()
    with pytest.raises(UnsafeOperation, match="protected"):
        if operation == "remove":
            (remove_tree if where == "tree" else remove_file)(guard, target)
        elif operation == "write":
            atomic_write(guard, target if where != "tree" else data / "notes.txt", b"overwritten")
        else:  # a directory made inside the protected one (beside a renamed file it is harmless)
            ensure_dir(guard, data / "new" / "sub")
    assert (digest(data) if data.is_dir() else data.read_bytes()) == before
    assert not (data / "new").exists()


def test_a_protected_path_made_after_the_guard_is_known_by_identity_at_each_operation(tmp_path):
    protected = tmp_path / "srv" / "media"
    guard = Guard.from_paths([protected])  # not there yet
    assert guard.identities == frozenset()
    make_protected(tmp_path)
    st = protected.stat()
    assert (st.st_dev, st.st_ino) in guard.forbidden()
