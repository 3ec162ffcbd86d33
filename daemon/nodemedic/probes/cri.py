"""CRI probe: RuntimeService.Status and ImageService.ImageFsInfo over containerd's unix socket.

The async client (grpc.aio) is what the daemon uses on its event loop; `cri_status()` and
`imagefs_info()` are blocking conveniences for the CLI and tests (they use grpc's sync API, so
they also work from code that already runs an event loop). Every call has a deadline: a wedged
containerd must turn into `CriUnavailable`, never into a hung probe.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from cri_api.v1 import api_pb2, api_pb2_grpc

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_TIMEOUT = 5.0

# A unix socket never needs a proxy, and grpc would otherwise honour http_proxy from the
# environment; reconnect backoff is kept short because one probe is one short-lived channel.
_CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class CriError(Exception):
    """Any failure to get an answer from the CRI endpoint."""


class CriUnavailable(CriError):
    """The socket is missing, refuses connections, or did not answer before the deadline."""


class CriCallFailed(CriError):
    """The runtime answered with an error (e.g. UNIMPLEMENTED): it is up, but the call failed."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class CriStatus:
    runtime_ready: bool
    network_ready: bool
    network_reason: str
    network_message: str
    runtime_reason: str = ""
    runtime_message: str = ""


@dataclass(frozen=True, slots=True)
class ImageFsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int


def _target(socket: str) -> str:
    """Check the socket before dialling: a missing path is the common case and grpc would
    only report it after its connect attempt; a plain file there is not a runtime either."""
    try:
        mode = os.stat(socket).st_mode
    except OSError as e:
        raise CriUnavailable(f"{socket}: {e.strerror}") from e
    if not stat.S_ISSOCK(mode):
        raise CriUnavailable(f"{socket}: not a socket")
    return f"unix://{os.path.abspath(socket)}"


def _translate(err: grpc.RpcError, socket: str) -> CriError:
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return CriUnavailable(f"{socket}: {code.name}: {details}")
    return CriCallFailed(code.name if code is not None else "UNKNOWN", details)


def _status_from(resp: Any) -> CriStatus:
    # kubelet treats a missing condition as "not ready"; so do we.
    conds = {c.type: c for c in resp.status.conditions}
    rt = conds.get("RuntimeReady")
    net = conds.get("NetworkReady")
    return CriStatus(
        runtime_ready=bool(rt and rt.status),
        network_ready=bool(net and net.status),
        network_reason=net.reason if net else "",
        network_message=net.message if net else "",
        runtime_reason=rt.reason if rt else "",
        runtime_message=rt.message if rt else "",
    )


def _imagefs_from(resp: Any) -> list[ImageFsUsage]:
    out = []
    for fs in resp.image_filesystems:
        out.append(
            ImageFsUsage(
                mountpoint=fs.fs_id.mountpoint,
                used_bytes=fs.used_bytes.value if fs.HasField("used_bytes") else 0,
                inodes_used=fs.inodes_used.value if fs.HasField("inodes_used") else 0,
            )
        )
    return out


class CriClient:
    """Async CRI client; one channel per client. Use as `async with CriClient() as cri:`."""

    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    def _chan(self) -> grpc.aio.Channel:
        target = _target(self.socket)  # re-checked every call: the socket comes and goes
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return self._channel

    async def _unary(self, service: str, method: str, request: Any) -> Any:
        stub = getattr(api_pb2_grpc, f"{service}Stub")(self._chan())
        try:
            return await getattr(stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            await self._reset()
            raise _translate(e, self.socket) from e

    async def status(self) -> CriStatus:
        return _status_from(await self._unary("RuntimeService", "Status", api_pb2.StatusRequest(verbose=False)))

    async def status_info(self) -> dict[str, str]:
        """Status(verbose=True)'s info map: containerd puts its effective CRI config in "config"
        (what `crictl info` shows), the live answer to "which settings is it running with"."""
        resp = await self._unary("RuntimeService", "Status", api_pb2.StatusRequest(verbose=True))
        return dict(resp.info)

    async def imagefs_info(self) -> list[ImageFsUsage]:
        return _imagefs_from(await self._unary("ImageService", "ImageFsInfo", api_pb2.ImageFsInfoRequest()))

    async def _reset(self) -> None:
        # After a failure the runtime may come back on a new socket inode; start over.
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            chan, self._channel = self._channel, None
            await chan.close()

    async def __aenter__(self) -> CriClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _sync_call(socket: str, timeout: float, service: str, method: str, request: Any) -> Any:
    with grpc.insecure_channel(_target(socket), options=_CHANNEL_OPTIONS) as chan:
        stub_cls = getattr(api_pb2_grpc, f"{service}Stub")
        try:
            return getattr(stub_cls(chan), method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise _translate(e, socket) from e


def cri_status(socket: str = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT) -> CriStatus:
    """Blocking RuntimeService.Status."""
    resp = _sync_call(socket, timeout, "RuntimeService", "Status", api_pb2.StatusRequest(verbose=False))
    return _status_from(resp)


def imagefs_info(socket: str = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT) -> list[ImageFsUsage]:
    """Blocking ImageService.ImageFsInfo."""
    resp = _sync_call(socket, timeout, "ImageService", "ImageFsInfo", api_pb2.ImageFsInfoRequest())
    return _imagefs_from(resp)
