"""nodemedic.probes on the host: parsing, error mapping and deadlines, against an in-process CRI
server. (Against real containerd they run inside the node: every Node.cri_status() call in the
node tests goes through `python -m nodemedic.probes`.) These tests need no node and no root."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from nodemedic.probes import cri, fs
from nodemedic.probes.__main__ import main as probes_main


class FakeRuntime(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, conditions: list[tuple[str, bool, str, str]]) -> None:
        self.conditions = conditions

    def Status(self, request, context):  # noqa: N802 - gRPC method name
        conds = [
            api_pb2.RuntimeCondition(type=t, status=s, reason=r, message=m) for t, s, r, m in self.conditions
        ]
        return api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=conds))


class FakeImages(api_pb2_grpc.ImageServiceServicer):
    def ImageFsInfo(self, request, context):  # noqa: N802
        usage = api_pb2.FilesystemUsage(
            timestamp=1,
            fs_id=api_pb2.FilesystemIdentifier(
                mountpoint="/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"
            ),
            used_bytes=api_pb2.UInt64Value(value=4096),
            inodes_used=api_pb2.UInt64Value(value=7),
        )
        return api_pb2.ImageFsInfoResponse(image_filesystems=[usage])


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    # unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    short = Path(f"/tmp/nmprobe-{os.getpid()}-{time.monotonic_ns()}")
    short.mkdir()
    yield str(short / "cri.sock")
    for p in short.iterdir():
        p.unlink()
    short.rmdir()


def serve(path: str, runtime: object | None = None, images: object | None = None) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    if runtime is not None:
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
    if images is not None:
        api_pb2_grpc.add_ImageServiceServicer_to_server(images, server)
    server.add_insecure_port(f"unix://{path}")
    server.start()
    return server


READY = [("RuntimeReady", True, "", ""), ("NetworkReady", True, "", "")]
NO_CNI = [
    ("RuntimeReady", True, "", ""),
    (
        "NetworkReady",
        False,
        "NetworkPluginNotReady",
        "Network plugin returns error: cni plugin not initialized",
    ),
]


def test_status_and_imagefs_from_a_cri_server(sock_path: str) -> None:
    server = serve(sock_path, FakeRuntime(NO_CNI), FakeImages())
    try:
        st = cri.cri_status(sock_path, timeout=2)
        assert st == cri.CriStatus(
            runtime_ready=True,
            network_ready=False,
            network_reason="NetworkPluginNotReady",
            network_message="Network plugin returns error: cni plugin not initialized",
        )
        [usage] = cri.imagefs_info(sock_path, timeout=2)
        assert usage == cri.ImageFsUsage(
            "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs", 4096, 7
        )

        async def both() -> tuple[cri.CriStatus, list[cri.ImageFsUsage]]:
            async with cri.CriClient(sock_path, timeout=2) as client:
                return await client.status(), await client.imagefs_info()

        assert asyncio.run(both()) == (st, [usage])
    finally:
        server.stop(None)


def test_missing_condition_counts_as_not_ready(sock_path: str) -> None:
    server = serve(sock_path, FakeRuntime([("RuntimeReady", True, "", "")]))
    try:
        st = cri.cri_status(sock_path, timeout=2)
        assert st.runtime_ready and not st.network_ready and st.network_reason == ""
    finally:
        server.stop(None)


def test_unimplemented_service_is_a_call_failure_not_unavailability(sock_path: str) -> None:
    server = serve(sock_path, runtime=FakeRuntime(READY))  # no ImageService
    try:
        with pytest.raises(cri.CriCallFailed) as e:
            cri.imagefs_info(sock_path, timeout=2)
        assert e.value.code == "UNIMPLEMENTED"
    finally:
        server.stop(None)


def test_missing_socket_and_plain_file_are_unavailable_at_once(sock_path: str) -> None:
    started = time.monotonic()
    with pytest.raises(cri.CriUnavailable, match="No such file"):
        cri.cri_status(sock_path, timeout=5)
    Path(sock_path).write_text("not a socket")
    with pytest.raises(cri.CriUnavailable, match="not a socket"):
        cri.cri_status(sock_path, timeout=5)
    with pytest.raises(cri.CriUnavailable):
        asyncio.run(cri.CriClient(sock_path, timeout=5).status())
    assert time.monotonic() - started < 1.0


def test_refused_connection_is_unavailable_quickly(sock_path: str) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock_path)  # bound, never listening: connect() is refused, as after containerd died
    try:
        started = time.monotonic()
        with pytest.raises(cri.CriUnavailable):
            cri.cri_status(sock_path, timeout=5)
        assert time.monotonic() - started < 5.5
    finally:
        s.close()


def test_wedged_runtime_hits_the_deadline_not_a_hang(sock_path: str) -> None:
    # Accepts connections and never says a word: the probe must give up at its deadline.
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock_path)
    s.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(s.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        with pytest.raises(cri.CriUnavailable):
            cri.cri_status(sock_path, timeout=1.0)
        with pytest.raises(cri.CriUnavailable):
            asyncio.run(cri.CriClient(sock_path, timeout=1.0).status())
        assert time.monotonic() - started < 4.0
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        s.close()


def test_cli_prints_json_and_exit_codes(sock_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert probes_main(["--socket", sock_path, "cri-status"]) == 3
    assert json.loads(capsys.readouterr().out)["error"] == "unavailable"
    server = serve(sock_path, FakeRuntime(READY), FakeImages())
    try:
        assert probes_main(["--socket", sock_path, "cri-status"]) == 0
        assert json.loads(capsys.readouterr().out)["network_ready"] is True
        assert probes_main(["--socket", sock_path, "imagefs"]) == 0
        [entry] = json.loads(capsys.readouterr().out)["image_filesystems"]
        # The fake's mountpoint does not exist on this host: statvfs fails and says so.
        assert entry["capacity_bytes"] is None and entry["statvfs_error"]
    finally:
        server.stop(None)
    assert probes_main(["fs-capacity", "/"]) == 0
    assert json.loads(capsys.readouterr().out)["capacity_bytes"] > 0
    assert probes_main(["fs-capacity", "/nonexistent/nodemedic"]) == 5
    assert json.loads(capsys.readouterr().out)["errno"] == 2


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /var/lib/containerd rw,relatime shared:5 master:2 - xfs /dev/sdb1 rw
31 30 0:26 / /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs rw - tmpfs tmpfs rw,size=1024k
32 22 0:27 / /mnt/with\\040space rw - tmpfs none rw
33 22 0:28 / /var/lib/containerd2 rw - ext4 /dev/sdc1 rw
34 30 0:29 / /var/lib/containerd rw - ext4 /dev/sdd1 rw
"""


def test_mountinfo_parsing_and_lookup() -> None:
    mounts = fs.parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert len(mounts) == 6
    assert mounts[1].fstype == "xfs" and mounts[1].source == "/dev/sdb1" and mounts[1].major_minor == "0:25"
    assert mounts[3].mount_point == "/mnt/with space"
    by = {m.mount_point: m for m in mounts}
    assert (
        fs.mount_for("/var/lib/containerd/io.containerd.content.v1.content", mounts).mount_id == 34
    )  # stacked
    assert fs.mount_for("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/x", mounts).mount_id == 31
    assert fs.mount_for("/var/lib/containerd2/x", mounts) is by["/var/lib/containerd2"]  # not a prefix match
    assert fs.mount_for("/etc", mounts).mount_point == "/"
    assert fs.mount_for("/", fs.read_mountinfo()) is not None


def test_fs_capacity_reports_the_kernels_error() -> None:
    cap = fs.fs_capacity("/")
    assert cap.path == "/" and cap.capacity_bytes >= cap.available_bytes > 0
    with pytest.raises(FileNotFoundError):
        fs.fs_capacity("/nonexistent/nodemedic")
    assert fs.fs_capacity_or_none("/nonexistent/nodemedic") is None
