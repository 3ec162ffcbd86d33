"""The copy manifest: a faithful `cp` copy compares equal, and each kind of loss is caught."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from nodemedic.flows.copy import copy_argv, copy_tree
from nodemedic.flows.manifest import compare, manifest, usage

IS_ROOT = os.geteuid() == 0


def build_tree(top: Path) -> None:
    """A small snapshot-like tree: hard links, symlinks, a sparse file, xattrs, a whiteout."""
    (top / "snapshots/1/fs/etc").mkdir(parents=True)
    (top / "snapshots/2/fs").mkdir(parents=True)
    (top / "snapshots/1/fs/etc/os-release").write_text("ID=test\n")
    os.link(top / "snapshots/1/fs/etc/os-release", top / "snapshots/1/fs/etc/os-release.hardlink")
    (top / "snapshots/1/fs/bin").symlink_to("usr/bin")
    (top / "snapshots/1/fs/dangling").symlink_to("/nowhere")
    with open(top / "snapshots/1/fs/sparse.img", "wb") as f:
        f.write(b"head")
        f.seek(8 << 20)
        f.write(b"tail")
    os.setxattr(top / "snapshots/2/fs", "user.nodemedic.test", b"opaque")
    if IS_ROOT:
        os.setxattr(top / "snapshots/2/fs", "trusted.overlay.opaque", b"y")
        os.mknod(top / "snapshots/2/fs/deleted", 0o600 | 0o020000, os.makedev(0, 0))  # overlayfs whiteout
    os.mkfifo(top / "snapshots/2/fs/fifo")
    os.chmod(top / "snapshots/2", 0o700)


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    source, copy = tmp_path / "root", tmp_path / "copy"
    source.mkdir(mode=0o711)
    build_tree(source)
    subprocess.run(copy_argv(source, copy), check=True)
    return source, copy


def test_a_cp_copy_is_faithful_and_keeps_sparseness_hardlinks_xattrs(trees):
    source, copy = trees
    assert compare(source, copy) == []
    entries = {e.path: e for e in manifest(copy)}
    assert entries["snapshots/1/fs/sparse.img"].sparse
    assert entries["snapshots/1/fs/etc/os-release.hardlink"].hardlink_group == "snapshots/1/fs/etc/os-release"
    assert dict(entries["snapshots/2/fs"].xattrs)["user.nodemedic.test"] == b"opaque"
    assert entries["."].mode == 0o711
    if IS_ROOT:
        assert entries["snapshots/2/fs/deleted"].kind == "char" and entries["snapshots/2/fs/deleted"].rdev == (0, 0)


def test_a_broken_hard_link_is_caught(trees):
    source, copy = trees
    link = copy / "snapshots/1/fs/etc/os-release.hardlink"
    link.unlink()
    link.write_text("ID=test\n")
    assert any("hardlink_group" in d for d in compare(source, copy))


def test_a_changed_symlink_target_is_caught(trees):
    source, copy = trees
    (copy / "snapshots/1/fs/bin").unlink()
    (copy / "snapshots/1/fs/bin").symlink_to("/usr/bin")
    assert any("snapshots/1/fs/bin: link" in d for d in compare(source, copy))


def test_a_sparse_file_filled_in_is_caught(trees):
    source, copy = trees
    sparse = copy / "snapshots/1/fs/sparse.img"
    data = sparse.read_bytes()
    sparse.unlink()
    with open(sparse, "wb") as f:
        f.write(data)  # same bytes, zeros written out
        f.flush()
        os.fsync(f.fileno())
    assert compare(source, copy) == ["snapshots/1/fs/sparse.img: sparse file copied without holes"]


def test_a_lost_xattr_is_caught(trees):
    source, copy = trees
    os.removexattr(copy / "snapshots/2/fs", "user.nodemedic.test")
    assert any("snapshots/2/fs: xattrs" in d for d in compare(source, copy))


def test_an_xattr_value_change_is_caught(trees):
    source, copy = trees
    os.setxattr(copy / "snapshots/2/fs", "user.nodemedic.test", b"other")
    assert any("snapshots/2/fs: xattrs" in d and "differ" in d for d in compare(source, copy))


def test_content_mode_owner_and_membership_changes_are_caught(trees):
    source, copy = trees
    (copy / "snapshots/1/fs/etc/os-release").write_text("ID=tset\n")  # same size, other content
    os.chmod(copy / "snapshots/2", 0o755)
    (copy / "snapshots/2/fs/fifo").unlink()
    (copy / "snapshots/2/fs/extra").write_text("")
    if IS_ROOT:
        os.lchown(copy / "snapshots/1/fs/bin", 1, 1)
    problems = compare(source, copy)
    assert any("os-release: digest" in d for d in problems)
    assert "snapshots/2: mode 448 != 493" in problems
    assert "snapshots/2/fs/fifo: missing in the copy" in problems
    assert "snapshots/2/fs/extra: only in the copy" in problems
    if IS_ROOT:
        assert any("snapshots/1/fs/bin: uid" in d for d in problems)


def test_the_difference_list_is_capped(trees):
    source, copy = trees
    for i in range(30):
        (copy / f"extra-{i:02}").write_text("")
    problems = compare(source, copy, limit=5)
    assert len(problems) == 6 and problems[-1] == "... and 25 more difference(s)"


def test_usage_counts_hard_links_once(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 65536)
    once = usage(tmp_path)
    os.link(tmp_path / "a", tmp_path / "b")
    assert usage(tmp_path).bytes == once.bytes
    assert usage(tmp_path).inodes == once.inodes


def test_copy_tree_reports_progress_and_a_faithful_copy(tmp_path):
    source = tmp_path / "root"
    source.mkdir()
    build_tree(source)
    lines: list[str] = []
    asyncio.run(copy_tree(source, tmp_path / "copy", usage(source).bytes, 60, 0.05, lines.append))
    assert lines[-1].endswith("(100%)") and compare(source, tmp_path / "copy") == []
