"""CRI probe: RuntimeService.Status, Version, RuntimeConfig and ImageService.ImageFsInfo over
containerd's unix socket (CRI v1: the only version containerd 2.x serves).

The client is grpclib, a pure-asyncio gRPC implementation, over the message classes of the CRI
stubs package: it runs on the daemon's one event loop with no threads of its own, so an idle
daemon is not woken by a gRPC runtime's timers (grpcio's event engine woke it ~15 times a second
once a channel existed; see bench/RESULTS.md). `cri_status()` and `imagefs_info()` are blocking
conveniences for the CLI and tests; they also work from code that already runs an event loop.
Every call has a deadline: a wedged containerd must turn into `CriUnavailable`, never into a hung
probe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import json
import os
import stat
import sys
import types
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError


def _cri_messages() -> types.ModuleType:
    """The CRI v1 message classes, without the stubs package's __init__, which imports its grpcio
    service stubs (and so grpcio, ~10 MiB resident) that nodemedic never uses: an empty package
    object on the same path lets Python import just the messages module."""
    if "cri_api" not in sys.modules:
        spec = importlib.util.find_spec("cri_api")
        if spec is not None and spec.submodule_search_locations:
            shell = types.ModuleType("cri_api")
            shell.__path__ = list(spec.submodule_search_locations)
            sys.modules["cri_api"] = shell
    return importlib.import_module("cri_api.v1.api_pb2")


api_pb2 = _cri_messages()

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_TIMEOUT = 5.0
T = TypeVar("T")

STATUS = "/runtime.v1.RuntimeService/Status"
IMAGEFS_INFO = "/runtime.v1.ImageService/ImageFsInfo"
LIST_POD_SANDBOX = "/runtime.v1.RuntimeService/ListPodSandbox"
VERSION = "/runtime.v1.RuntimeService/Version"
RUNTIME_CONFIG = "/runtime.v1.RuntimeService/RuntimeConfig"

# containerd 2.x adds this condition to Status (1.6 does not): false when the daemon has
# deprecation warnings (introspection's Deprecations, minus ignore_deprecation_warnings); its
# message is a JSON object, warning id -> text.
DEPRECATIONS_CONDITION = "ContainerdHasNoDeprecationWarnings"


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
    # None: the runtime reports no such condition (containerd 1.6, older 1.7); {} none listed.
    deprecations: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RuntimeVersion:
    runtime_name: str  # "containerd"
    runtime_version: str  # "v2.1.9", "1.6.20~ds1"
    runtime_api_version: str  # "v1"


@dataclass(frozen=True, slots=True)
class ImageFsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int


@dataclass(frozen=True, slots=True)
class PodSandbox:
    id: str
    name: str
    namespace: str
    ready: bool  # SANDBOX_READY; otherwise SANDBOX_NOTREADY


def _check_socket(socket: str) -> None:
    """Check the socket before dialling: a missing path is the common case, and a plain file
    there is not a runtime either; both are answered at once, without a connect attempt."""
    try:
        mode = os.stat(socket).st_mode
    except OSError as e:
        raise CriUnavailable(f"{socket}: {e.strerror}") from e
    if not stat.S_ISSOCK(mode):
        raise CriUnavailable(f"{socket}: not a socket")


def _translate(err: Exception, socket: str) -> CriError:
    if isinstance(err, GRPCError):
        if err.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
            return CriUnavailable(f"{socket}: {err.status.name}: {err.message}")
        return CriCallFailed(err.status.name, err.message or "")
    if isinstance(err, TimeoutError):
        return CriUnavailable(f"{socket}: no answer before the deadline")
    return CriUnavailable(f"{socket}: {err}")  # refused, reset, or not speaking HTTP/2


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
        deprecations=_deprecations(conds.get(DEPRECATIONS_CONDITION)),
    )


def _deprecations(cond: Any) -> dict[str, str] | None:
    if cond is None:
        return None
    if cond.status:
        return {}
    try:
        listed = json.loads(cond.message)
    except ValueError:
        listed = None
    if isinstance(listed, dict) and listed:
        return {str(k): str(v) for k, v in listed.items()}
    # Not the JSON object containerd writes: keep the text rather than lose the warning.
    return {cond.reason or "deprecation": cond.message}


def _imagefs_from(resp: Any) -> list[ImageFsUsage]:
    """One entry per snapshotter in use (containerd 2.x), the configured snapshotter's first:
    kubelet reads only the first. containerd 1.x answers with that one entry alone."""
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
        self._channel: Channel | None = None

    async def _unary(self, method: str, request: Any, reply_type: type, timeout: float | None = None) -> Any:
        _check_socket(self.socket)  # re-checked every call: the socket comes and goes
        if self._channel is None:
            self._channel = Channel(path=self.socket)
        call = UnaryUnaryMethod(self._channel, method, type(request), reply_type)
        try:
            return await call(request, timeout=self.timeout if timeout is None else timeout)
        except (GRPCError, TimeoutError, OSError, ProtocolError, StreamTerminatedError) as e:
            # After a failure the runtime may come back on a new socket inode; start over.
            await self.close()
            raise _translate(e, self.socket) from e

    async def status(self) -> CriStatus:
        return _status_from(await self._unary(STATUS, api_pb2.StatusRequest(verbose=False), api_pb2.StatusResponse))

    async def status_info(self) -> dict[str, str]:
        """Status(verbose=True)'s info map: containerd puts its effective CRI config in "config"
        (what `crictl info` shows), the live answer to "which settings is it running with"."""
        resp = await self._unary(STATUS, api_pb2.StatusRequest(verbose=True), api_pb2.StatusResponse)
        return dict(resp.info)

    async def imagefs_info(self) -> list[ImageFsUsage]:
        return _imagefs_from(await self._unary(IMAGEFS_INFO, api_pb2.ImageFsInfoRequest(),
                                               api_pb2.ImageFsInfoResponse))

    async def list_pod_sandboxes(self, timeout: float | None = None) -> list[PodSandbox]:
        """RuntimeService.ListPodSandbox, unfiltered: what kubelet's PLEG relists every second.
        `timeout` overrides the client's deadline for this call (a relist should answer at once)."""
        resp = await self._unary(LIST_POD_SANDBOX, api_pb2.ListPodSandboxRequest(), api_pb2.ListPodSandboxResponse,
                                 timeout)
        return [PodSandbox(id=s.id, name=s.metadata.name, namespace=s.metadata.namespace,
                           ready=s.state == api_pb2.SANDBOX_READY) for s in resp.items]

    async def version(self) -> RuntimeVersion:
        resp = await self._unary(VERSION, api_pb2.VersionRequest(), api_pb2.VersionResponse)
        return RuntimeVersion(resp.runtime_name, resp.runtime_version, resp.runtime_api_version)

    async def cgroup_driver(self) -> str | None:
        """RuntimeService.RuntimeConfig's cgroup driver, "systemd" or "cgroupfs"; None when the
        runtime does not implement it (containerd before 2.0): kubelet then uses its own
        cgroupDriver setting. A kubelet >= 1.31 (KubeletCgroupDriverFromCRI) takes the driver
        from this answer instead, so kubelet and runtime cannot disagree."""
        try:
            resp = await self._unary(RUNTIME_CONFIG, api_pb2.RuntimeConfigRequest(), api_pb2.RuntimeConfigResponse)
        except CriCallFailed as err:
            if err.code == Status.UNIMPLEMENTED.name:
                return None
            raise
        if not resp.HasField("linux"):  # SYSTEMD is the enum's zero: an absent message is no answer
            return None
        return "cgroupfs" if resp.linux.cgroup_driver == api_pb2.CGROUPFS else "systemd"

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            channel.close()

    async def __aenter__(self) -> CriClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from blocking code, even where an event loop already runs."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _once(socket: str, timeout: float, call: str) -> Any:
    async with CriClient(socket, timeout) as client:
        return await getattr(client, call)()


def cri_status(socket: str = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT) -> CriStatus:
    """Blocking RuntimeService.Status."""
    return _blocking(_once(socket, timeout, "status"))


def imagefs_info(socket: str = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT) -> list[ImageFsUsage]:
    """Blocking ImageService.ImageFsInfo."""
    return _blocking(_once(socket, timeout, "imagefs_info"))
