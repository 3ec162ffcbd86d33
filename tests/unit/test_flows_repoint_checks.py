"""Refusal rules of `nodemedic repoint`: every TARGET it must not take, and the ones it may."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodemedic.flows import mountunit
from nodemedic.flows.manifest import Usage
from nodemedic.flows.repoint_checks import (
    Refused,
    Shape,
    check_quiet,
    check_space,
    check_target,
    inspect_root,
    is_conversion,
)
from nodemedic.mounts import MountInfo, read_mountinfo
from nodemedic.safety import Guard

ALLOWED = ("ext4", "xfs", "btrfs")
# Another filesystem than tmp_path's, so that "on other storage" can be met without a loop device.
OTHER_FS = Path("/dev/shm")


def mount(point: str, fstype: str = "ext4") -> MountInfo:
    return MountInfo(1, 0, "0:1", "/", point, "rw", fstype, "/dev/x", "rw")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "var/lib/containerd"
    (r / "io.containerd.content.v1.content").mkdir(parents=True)
    return r


@pytest.fixture
def other(tmp_path: Path) -> Path:
    assert os.stat(OTHER_FS).st_dev != os.stat(tmp_path).st_dev, "the test needs /dev/shm on its own filesystem"
    d = OTHER_FS / f"nm-test-{os.getpid()}-{tmp_path.name}"
    d.mkdir()
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    d.rmdir()


def layout(root: Path):
    return inspect_root(root, root.parent / "no-unit.mount", read_mountinfo())


def refusal(root: Path, target: Path | str, filesystems=ALLOWED, guard=None) -> str:
    with pytest.raises(Refused) as err:
        check_target(layout(root), Path(target), guard or Guard.from_paths([]), read_mountinfo(), filesystems)
    return str(err.value)


def test_a_relative_target_is_refused(root):
    assert "absolute" in refusal(root, "data/containerd")


def test_the_same_path_is_refused(root):
    assert "is the current root" in refusal(root, root)
    assert "is the current root" in refusal(root, str(root) + "/")


def test_a_target_inside_the_root_is_refused(root):
    assert "inside the current root" in refusal(root, root / "io.containerd.content.v1.content" / "new")


def test_a_target_containing_the_root_is_refused(root):
    assert "contains the current root" in refusal(root, root.parent)


def test_a_target_reached_through_a_link_into_the_root_is_refused(root, tmp_path):
    (tmp_path / "sneaky").symlink_to(root)
    assert "inside the current root" in refusal(root, tmp_path / "sneaky" / "copy")


def test_a_symlink_as_target_is_refused(root, other, tmp_path):
    (tmp_path / "link").symlink_to(other)
    assert "symlink" in refusal(root, tmp_path / "link", filesystems=("tmpfs",))


def test_a_protected_target_is_refused(root, other):
    guard = Guard.from_paths([other])
    assert "protected path" in refusal(root, other / "containerd", filesystems=("tmpfs",), guard=guard)


def test_a_non_empty_target_is_refused(root, other):
    (other / "something").write_text("x")
    assert "not empty" in refusal(root, other, filesystems=("tmpfs",))


def test_the_top_of_a_fresh_filesystem_is_refused_with_a_hint(root, other):
    (other / "lost+found").mkdir()
    message = refusal(root, other, filesystems=("tmpfs",))
    assert "lost+found" in message and str(other / "containerd") in message


def test_a_target_whose_parent_is_missing_is_refused(root, other):
    assert "does not exist" in refusal(root, other / "not-mounted-yet" / "containerd", filesystems=("tmpfs",))


@pytest.mark.parametrize("fstype", ["tmpfs", "nfs4", "overlay", "fuse.sshfs", "vfat"])
def test_a_filesystem_the_snapshotter_cannot_use_is_refused(root, other, fstype):
    mounts = [*read_mountinfo(), mount(str(other), fstype)]
    with pytest.raises(Refused) as err:
        check_target(layout(root), other / "containerd", Guard.from_paths([]), mounts, ALLOWED)
    assert f"on a {fstype} filesystem" in str(err.value) and "d_type" in str(err.value)


def test_a_target_on_the_roots_own_filesystem_is_refused(root, tmp_path):
    assert "same filesystem" in refusal(root, tmp_path / "elsewhere", filesystems=("ext4", "xfs", "tmpfs"))


def test_a_good_target_on_other_storage_is_accepted(root, other):
    target = other / "containerd"
    assert check_target(layout(root), target, Guard.from_paths([]), read_mountinfo(), ("tmpfs",)) == target
    other_empty = other / "empty"
    other_empty.mkdir()
    assert check_target(layout(root), other_empty, Guard.from_paths([]), read_mountinfo(), ("tmpfs",)) == other_empty


def test_a_symlinked_root_repointed_to_its_own_data_is_a_conversion_not_a_refusal(tmp_path, other):
    data = other / "containerd"
    data.mkdir()
    link = tmp_path / "var/lib/containerd"
    link.parent.mkdir(parents=True)
    link.symlink_to(data)
    found = layout(link)
    assert found.shape is Shape.SYMLINK and found.data == data
    assert check_target(found, data, Guard.from_paths([]), read_mountinfo(), ALLOWED) == data
    assert is_conversion(found, data)


def test_a_dangling_or_missing_root_is_refused(tmp_path):
    link = tmp_path / "containerd"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(Refused, match="not a directory"):
        layout(link)
    with pytest.raises(Refused, match="does not exist"):
        layout(tmp_path / "missing")


def test_a_root_mounted_by_someone_else_is_refused_and_our_own_mount_is_recognised(root, tmp_path):
    unit = tmp_path / "var-lib-containerd.mount"
    mounts = [*read_mountinfo(), mount(str(root))]
    with pytest.raises(Refused, match="did not make"):
        inspect_root(root, unit, mounts)
    unit.write_text("[Mount]\nWhat=/data/containerd\n")  # not ours: no marker
    with pytest.raises(Refused, match="did not make"):
        inspect_root(root, unit, mounts)
    unit.write_text(mountunit.unit_text("/data/containerd", str(root)))
    found = inspect_root(root, unit, mounts)
    assert found.shape is Shape.MOUNTED and found.data == Path("/data/containerd")


def test_not_enough_space_or_inodes_is_refused(other):
    st = os.statvfs(other)
    free = st.f_bavail * st.f_frsize
    with pytest.raises(Refused, match="not enough free space"):
        check_space(other / "containerd", Usage(bytes=free, inodes=1))
    with pytest.raises(Refused, match="not enough free inodes"):
        check_space(other / "containerd", Usage(bytes=1, inodes=st.f_favail))
    assert "free at" in check_space(other / "containerd", Usage(bytes=4096, inodes=10))


def test_running_containers_or_mounts_inside_the_root_are_refused(root):
    found = layout(root)
    with pytest.raises(Refused, match="drain"):
        check_quiet(found, read_mountinfo(), [4242])
    shm = str(root / "io.containerd.grpc.v1.cri/sandboxes/abc/shm")
    with pytest.raises(Refused, match="mount"):
        check_quiet(found, [*read_mountinfo(), mount(shm, "tmpfs")], [])
    check_quiet(found, read_mountinfo(), [])
