"""`nodemedic repoint` on a booted node: containerd's populated root moved to a loop-mounted ext4.

The root is populated through containerd itself: `ctr images import` of two OCI image archives
built here (no network), whose layers unpack into overlayfs snapshots with hard links, symlinks,
a whiteout (a 0/0 character device) and an opaque directory (a trusted.overlay.opaque xattr).
The target filesystem is an ext4 image on a loop device: the host sets the loop device up (a
node under systemd-nspawn has no /dev/loop*), the node gets its device node and mounts it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest

from nodemedic.journal import Kind
from tests.node.testbed.node import Node

ROOT = "/var/lib/containerd"
UNIT = "var-lib-containerd.mount"
DISK = "/mnt/nmtest-disk"
TARGET = f"{DISK}/containerd"
IMAGES = ("docker.io/nodemedic/test:1", "docker.io/nodemedic/test:2")
SPARSE = f"{ROOT}/nmtest-sparse.img"
IMAGEFS = f"{ROOT}/io.containerd.snapshotter.v1.overlayfs"
PROTECTED = ("/srv/media", "/mnt/media")
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())

# ---- a small OCI image archive, built here ---------------------------------------------------------

Entry = tuple[str, str, Any]
BASE: list[Entry] = [
    ("etc", "dir", None), ("etc/os-release", "file", b"ID=nmtest\n"), ("etc/to-delete", "file", b"bye\n"),
    ("data", "dir", None), ("data/hello.txt", "file", b"hello\n"), ("data/hello-link.txt", "link", "data/hello.txt"),
    ("data/latest", "symlink", "hello.txt"), ("opaque", "dir", None), ("opaque/old.txt", "file", b"old\n"),
]
# The second layer deletes a file (a whiteout) and replaces a directory's contents (opaque).
TOP: list[Entry] = [
    ("etc", "dir", None), ("etc/.wh.to-delete", "file", b""), ("opaque", "dir", None),
    ("opaque/.wh..wh..opq", "file", b""), ("opaque/new.txt", "file", b"new\n"), ("data", "dir", None),
    ("data/added.txt", "file", b"added\n"),
]


def _layer(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, data
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, data, 0o777
            else:
                info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(name: str, layers: list[list[Entry]]) -> bytes:
    """An OCI image layout tarball (uncompressed layers) that `ctr images import` accepts."""
    blobs: dict[str, bytes] = {}
    descriptors = []
    for entries in layers:
        data = _layer(entries)
        blobs[_digest(data)] = data
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(data),
                            "size": len(data)})
    config = json.dumps({"architecture": ARCH, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]}}).encode()
    blobs[_digest(config)] = config
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": descriptors}).encode()
    blobs[_digest(manifest)] = manifest
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
        "size": len(manifest), "platform": {"architecture": ARCH, "os": "linux"},
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
        files.update({f"blobs/sha256/{d.split(':')[1]}": data for d, data in blobs.items()})
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 1700000000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# ---- what the node looks like -------------------------------------------------------------------------

def ctr(node: Node, *args: str) -> str:
    return node.run(["ctr", "-n", "k8s.io", *args]).stdout


def state(node: Node) -> dict[str, Any]:
    """Images, snapshots and the merged view of image 1, as containerd sees them now."""
    view = "/mnt/nmtest-view"
    node.run(["mkdir", "-p", view])
    ctr(node, "images", "mount", IMAGES[0], view)
    try:
        files = node.run(["find", view, "-mindepth", "1", "-printf", "%P %y\n"]).stdout.split("\n")
        hello = node.read_file(f"{view}/data/hello.txt")
    finally:
        ctr(node, "images", "unmount", "--rm", view)
    return {"images": sorted(ctr(node, "images", "ls", "-q").split()),
            "snapshots": sorted(ctr(node, "snapshots", "ls").splitlines()[1:]),
            "view": sorted(f for f in files if f), "hello": hello}


def is_mountpoint(node: Node, path: str) -> bool:
    return node.run(["mountpoint", "-q", path], check=False).returncode == 0


def capacity(node: Node, path: str) -> int:
    blocks, size = node.run(["stat", "-f", "-c", "%b %S", path]).stdout.split()
    return int(blocks) * int(size)


def nodemedic(node: Node, *args: str) -> subprocess.CompletedProcess[Any]:
    return node.run(["nodemedic", *args], check=False, timeout=300)


def entries(node: Node, kind: Kind, since: str) -> list[dict[str, Any]]:
    return node.journal(message_id=kind.value, since=since)


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media(node: Node) -> dict[str, str]:
    return {p: node.checksum_tree(p) for p in PROTECTED}


@pytest.fixture(scope="module")
def populated(node: Node, media: dict[str, str]) -> dict[str, Any]:
    """Two images imported (sharing their base layer), plus a sparse file in the root."""
    node.write_file("/var/tmp/nmtest-1.tar", oci_archive(IMAGES[0], [BASE, TOP]))
    node.write_file("/var/tmp/nmtest-2.tar", oci_archive(IMAGES[1], [BASE]))
    for archive in ("/var/tmp/nmtest-1.tar", "/var/tmp/nmtest-2.tar"):
        ctr(node, "images", "import", archive)
    node.run(["truncate", "-s", "64M", SPARSE])
    node.run(["dd", f"of={SPARSE}", "bs=1", "seek=1000000", "conv=notrunc", "status=none"], input=b"tail")
    before = state(node)
    assert set(IMAGES) <= set(before["images"]) and len(before["snapshots"]) == 2, before
    assert "etc/to-delete f" not in before["view"] and "opaque/new.txt f" in before["view"], before["view"]
    return before


@pytest.fixture(scope="module")
def disk(node: Node) -> Iterator[str]:
    """A 512 MiB ext4 on a loop device, mounted at DISK inside the node."""
    losetup = shutil.which("losetup")
    assert losetup, "node tests of repoint need losetup on the host (apt-get install util-linux)"
    image = "/var/tmp/nmtest-disk.img"
    node.run(["truncate", "-s", "512M", image])
    node.run(["mkfs.ext4", "-q", "-F", image], timeout=120)
    host_image = node.root / image.lstrip("/")
    device = subprocess.run([losetup, "--find", "--show", str(host_image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        rdev = os.stat(device).st_rdev
        node.run(["mknod", "/dev/nmtest-disk", "b", str(os.major(rdev)), str(os.minor(rdev))])
        node.run(["mkdir", "-p", DISK])
        node.run(["mount", "/dev/nmtest-disk", DISK])
        yield DISK
    finally:
        # Still mounted inside the node: the kernel detaches it once the node's mounts are gone.
        subprocess.run([losetup, "--detach", device], check=False)


@pytest.fixture
def healthy(node: Node, media: dict[str, str]) -> Iterator[None]:
    """Every test leaves the services running and the protected paths byte-identical."""
    yield
    for unit in ("containerd.service", "kubelet.service"):
        assert node.unit_state(unit).active_state == "active", unit
    assert {p: node.checksum_tree(p) for p in PROTECTED} == media


# ---- tests ------------------------------------------------------------------------------------------

def test_bad_targets_are_refused_with_a_reason_and_nothing_changes(node, populated, disk, cursor, healthy):
    node.run(["mkdir", "-p", "/mnt/nmtest-tmpfs", "/mnt/nmtest-small"])
    node.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", "/mnt/nmtest-tmpfs"])
    # a filesystem allowed by configuration, but too small for the root
    node.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/mnt/nmtest-small"])
    node.write_file("/etc/nodemedic/conf.d/50-nmtest-small.toml", '[repoint]\nfilesystems = ["ext4", "tmpfs"]\n')
    try:
        small = nodemedic(node, "repoint", "/mnt/nmtest-small/containerd")
    finally:
        node.run(["rm", "-f", "/etc/nodemedic/conf.d/50-nmtest-small.toml"])
    cases = {
        f"{ROOT}/io.containerd.content.v1.content/moved": "inside the current root",
        ROOT: "is the current root",
        "/var/lib": "contains the current root",
        "/var/tmp/nmtest-containerd": "same filesystem",
        "/mnt/nmtest-tmpfs/containerd": "on a tmpfs filesystem",
        DISK: "lost+found",
        "/srv/media/containerd": "protected path",
        "relative/containerd": "absolute path",
    }
    for target, reason in cases.items():
        result = nodemedic(node, "repoint", target)
        assert result.returncode == 5 and reason in result.stdout, (target, result.stdout, result.stderr)
    assert small.returncode == 5 and "not enough free space" in small.stdout, small.stdout
    assert len(entries(node, Kind.REPOINT_REFUSED, cursor)) == len(cases) + 1
    assert not entries(node, Kind.REPOINT_STARTED, cursor)
    assert not is_mountpoint(node, ROOT) and not node.exists(f"/etc/systemd/system/{UNIT}")
    assert node.run(["ls", "-A", DISK]).stdout.split() == ["lost+found"]
    assert state(node) == populated
    node.run(["umount", "/mnt/nmtest-tmpfs", "/mnt/nmtest-small"])


def test_dry_run_prints_the_plan_and_changes_nothing(node, populated, disk, cursor, healthy):
    result = nodemedic(node, "repoint", "--dry-run", TARGET)
    assert result.returncode == 0, result.stdout + result.stderr
    for words in ("stop kubelet.service, then containerd.service", "cp --archive --preserve=xattr --sparse=always",
                  f"What={TARGET} Where={ROOT}", "never a symlink", "undo every step"):
        assert words in result.stdout, result.stdout
    assert not node.exists(TARGET) and not is_mountpoint(node, ROOT)
    assert not entries(node, Kind.REPOINT_STARTED, cursor)


def test_a_failure_after_the_stop_rolls_back_to_the_old_root(node, populated, disk, cursor, healthy):
    # A real fault: containerd refuses to start on the new root (its start fails after the copy,
    # the verification, the move aside and the mount), so every step must be undone.
    node.drop_in("containerd.service", "90-nmtest-fault",
                 '[Service]\nExecStartPre=/bin/sh -c "! mountpoint -q /var/lib/containerd"\n')
    try:
        result = nodemedic(node, "repoint", TARGET)
    finally:
        node.remove_drop_in("containerd.service", "90-nmtest-fault")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolling back" in result.stdout
    [rolled_back] = entries(node, Kind.REPOINT_ROLLED_BACK, cursor)
    assert "containerd.service" in rolled_back["NODEMEDIC_REASON"]
    steps = [e["NODEMEDIC_STEP"] for e in entries(node, Kind.REPOINT_STEP, cursor)]
    assert any(s.startswith("verified the copy") for s in steps) and any(s.startswith("undone: moved") for s in steps)
    # the old root is back in place, no mount, no unit, nothing left aside, no copy on the disk
    assert not is_mountpoint(node, ROOT) and not node.exists(f"/etc/systemd/system/{UNIT}")
    assert node.run(["sh", "-c", "ls -d /var/lib/containerd.nodemedic-* 2>/dev/null || true"]).stdout == ""
    assert node.run(["ls", "-A", DISK]).stdout.split() == ["lost+found"]
    node.wait_for(lambda: node.cri_status().runtime_ready, timeout=30, what="containerd back on the old root")
    assert state(node) == populated
    [imagefs] = node.imagefs_capacity()
    assert imagefs["capacity_bytes"] == capacity(node, "/var/lib") != capacity(node, DISK)


def test_repoint_moves_the_root_to_the_disk_with_a_bind_mount(node, populated, disk, cursor, healthy):
    result = nodemedic(node, "repoint", TARGET)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "copying" in result.stdout or "(100%)" in result.stdout  # progress on stdout
    # a bind mount from a systemd mount unit, never a symlink
    assert not node.run(["test", "-L", ROOT], check=False).returncode == 0
    assert node.run(["findmnt", "-n", "-o", "SOURCE", ROOT]).stdout.strip() == "/dev/nmtest-disk[/containerd]"
    unit = node.read_file(f"/etc/systemd/system/{UNIT}").decode()
    for line in (f"What={TARGET}", f"Where={ROOT}", "Options=bind", "Type=none"):
        assert line in unit.splitlines()
    assert node.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    assert node.unit_state(UNIT).active_state == "active"
    # containerd still knows every image and snapshot, and the snapshots still mount
    assert state(node) == populated
    # CRI's image filesystem is now the disk, with its capacity
    [imagefs] = node.imagefs_capacity()
    assert imagefs["mountpoint"] == IMAGEFS
    assert imagefs["capacity_bytes"] == capacity(node, DISK) > 0
    assert node.run(["findmnt", "-n", "-o", "SOURCE", "-T", IMAGEFS]).stdout.strip() == "/dev/nmtest-disk[/containerd]"
    # the sparse file stayed sparse
    blocks, size = node.run(["stat", "-c", "%b %s", f"{TARGET}/nmtest-sparse.img"]).stdout.split()
    assert int(blocks) * 512 < int(size) // 100
    # the old root is kept aside, whole
    [done] = entries(node, Kind.REPOINT_DONE, cursor)
    aside = done["NODEMEDIC_ASIDE"]
    assert aside.startswith("/var/lib/containerd.nodemedic-")
    assert node.exists(f"{aside}/io.containerd.metadata.v1.bolt/meta.db") and node.exists(f"{aside}/nmtest-sparse.img")
    # doctor agrees: the root is root-owned, not a link, and has no dangling snapshot links
    doctor = json.loads(node.run(["nodemedic", "doctor", "--json"], check=False).stdout)
    found = {f["check"]: f for f in doctor["findings"]}
    assert found["containerd root"]["ok"] and found["containerd snapshots"]["ok"], found
    assert found["image filesystem"]["ok"], found
    # and the same target again is refused: it already is the root
    again = nodemedic(node, "repoint", TARGET)
    assert again.returncode == 5 and "is the current root" in again.stdout
