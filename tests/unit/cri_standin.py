"""A CRI stand-in for unit tests: a real grpclib server on a unix socket that answers CRI v1
Status, Version, RuntimeConfig, ImageFsInfo with the messages containerd 2.x sends (see
containerd's internal/cri/server/status.go and images/imagefs_info.go). Unit tests cannot run
containerd; the node tests (tests/node) ask the real one. Runs in a thread with its own loop,
so blocking code under test (the CLI) can call it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from nodemedic.probes.cri import api_pb2


@dataclass
class Answers:
    version: str = "v2.1.9"
    deprecations: dict[str, str] | None = None  # None: no such condition (containerd 1.x)
    cgroup_driver: str | None = "systemd"  # None: RuntimeConfig is UNIMPLEMENTED
    imagefs: list[str] = field(default_factory=list)  # mountpoints, in answer order
    config: dict[str, Any] = field(default_factory=dict)  # Status(verbose) info["config"]


class CriStandin:
    def __init__(self, socket: Path, answers: Answers) -> None:
        self.socket = socket
        self.answers = answers
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __mapping__(self) -> dict[str, Handler]:
        unary = Cardinality.UNARY_UNARY
        return {
            "/runtime.v1.RuntimeService/Status": Handler(self._status, unary, api_pb2.StatusRequest,
                                                         api_pb2.StatusResponse),
            "/runtime.v1.RuntimeService/Version": Handler(self._version, unary, api_pb2.VersionRequest,
                                                          api_pb2.VersionResponse),
            "/runtime.v1.RuntimeService/RuntimeConfig": Handler(self._runtime_config, unary,
                                                                api_pb2.RuntimeConfigRequest,
                                                                api_pb2.RuntimeConfigResponse),
            "/runtime.v1.ImageService/ImageFsInfo": Handler(self._imagefs, unary, api_pb2.ImageFsInfoRequest,
                                                            api_pb2.ImageFsInfoResponse),
        }

    async def _status(self, stream: Any) -> None:
        request = await stream.recv_message()
        conds = [api_pb2.RuntimeCondition(type="RuntimeReady", status=True),
                 api_pb2.RuntimeCondition(type="NetworkReady", status=True)]
        if self.answers.deprecations is not None:
            deps = self.answers.deprecations
            conds.append(api_pb2.RuntimeCondition(
                type="ContainerdHasNoDeprecationWarnings", status=not deps,
                reason="ContainerdHasDeprecationWarnings" if deps else "",
                message=json.dumps(deps) if deps else ""))
        info = {"config": json.dumps(self.answers.config)} if request.verbose else {}
        await stream.send_message(api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=conds), info=info))

    async def _version(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.VersionResponse(version="0.1.0", runtime_name="containerd",
                                                          runtime_version=self.answers.version,
                                                          runtime_api_version="v1"))

    async def _runtime_config(self, stream: Any) -> None:
        await stream.recv_message()
        if self.answers.cgroup_driver is None:
            raise GRPCError(Status.UNIMPLEMENTED, "unknown method RuntimeConfig")
        driver = api_pb2.CGROUPFS if self.answers.cgroup_driver == "cgroupfs" else api_pb2.SYSTEMD
        await stream.send_message(api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=driver)))

    async def _imagefs(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.ImageFsInfoResponse(image_filesystems=[
            api_pb2.FilesystemUsage(fs_id=api_pb2.FilesystemIdentifier(mountpoint=m),
                                    used_bytes=api_pb2.UInt64Value(value=1), inodes_used=api_pb2.UInt64Value(value=1))
            for m in self.answers.imagefs]))

    def __enter__(self) -> CriStandin:
        self._thread.start()
        self.socket.parent.mkdir(parents=True, exist_ok=True)

        async def start() -> None:
            self._server = Server([self])
            await self._server.start(path=str(self.socket))

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
