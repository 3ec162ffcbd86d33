"""doctor's companion checks for repoint: the root's shape, owner and mode, dangling snapshot links."""

import json
import os

import pytest

from tests.unit.helpers import run_cli

SNAPSHOTTER = "io.containerd.snapshotter.v1.overlayfs"


def findings(capsys, root) -> dict[str, dict]:
    _code, out, _ = run_cli(capsys, "--root", str(root), "doctor", "--json")
    return {f["check"]: f for f in json.loads(out)["findings"]}


def test_a_symlinked_root_names_the_repoint_that_fixes_it(tmp_path, capsys):
    (tmp_path / "data/containerd").mkdir(parents=True)
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "var/lib/containerd").symlink_to(tmp_path / "data/containerd")
    root = findings(capsys, tmp_path)["containerd root"]
    assert not root["ok"] and "a symlink to" in root["detail"]
    assert "Fix: nodemedic repoint /data/containerd" in root["detail"]  # the node's path, not the test's


def test_a_dangling_relative_root_link_is_named(tmp_path, capsys):
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "var/lib/containerd").symlink_to("../../gone")
    root = findings(capsys, tmp_path)["containerd root"]
    assert "a relative symlink to ../../gone (dangling)" in root["detail"]


@pytest.mark.parametrize("mode, ok", [(0o700, True), (0o711, True), (0o755, True), (0o777, False), (0o750, False)])
def test_the_roots_mode(tmp_path, capsys, mode, ok):
    root = tmp_path / "var/lib/containerd"
    root.mkdir(parents=True)
    os.chmod(root, mode)
    found = findings(capsys, tmp_path)["containerd root"]
    assert found["ok"] is (ok and os.geteuid() == 0), found


def test_a_root_owned_by_someone_else_is_reported(tmp_path, capsys):
    root = tmp_path / "var/lib/containerd"
    root.mkdir(parents=True, mode=0o711)
    owner = (1000, 1000) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(root, *owner)
    found = findings(capsys, tmp_path)["containerd root"]
    assert not found["ok"] and f"{owner[0]}:{owner[1]}" in found["detail"]


def test_dangling_snapshot_links_are_reported(tmp_path, capsys):
    snapshots = tmp_path / "var/lib/containerd" / SNAPSHOTTER / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / "1").mkdir()
    (snapshots / "2").symlink_to("/mnt/old-disk/containerd/snapshots/2")
    found = findings(capsys, tmp_path)["containerd snapshots"]
    assert not found["ok"] and found["problem"] == "snapshot-parent-missing"
    assert "snapshots/2 -> /mnt/old-disk/containerd/snapshots/2" in found["detail"]
    (snapshots / "2").unlink()
    assert findings(capsys, tmp_path)["containerd snapshots"]["ok"]


def test_a_snapshotter_dir_linked_to_a_missing_place_is_reported(tmp_path, capsys):
    root = tmp_path / "var/lib/containerd"
    root.mkdir(parents=True)
    (root / SNAPSHOTTER).symlink_to("/mnt/unmounted/overlayfs")
    found = findings(capsys, tmp_path)["containerd snapshots"]
    assert not found["ok"] and SNAPSHOTTER in found["detail"]
