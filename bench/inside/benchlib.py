"""Shared by the benchmark scripts that run INSIDE the test node (on the node's nodemedic venv).

They are copied next to each other into the node, so `import benchlib` finds this file. Timing
comes from the journal (`__REALTIME_TIMESTAMP`, stamped by journald on receipt) and from
CLOCK_REALTIME in these scripts: the node shares the host's kernel, so both are one clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc
from systemd import journal

from nodemedic.journal import Kind

SOCKET = "/run/containerd/containerd.sock"
T = TypeVar("T")
STEP_STARTED, HEALED = Kind.STEP_STARTED.value, Kind.HEALED.value
SUSPECTED, CONFIRMED = Kind.SUSPECTED.value, Kind.CONFIRMED.value


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


class Cri:
    """A sync CRI client on one reused channel: cheap enough to poll every few milliseconds."""

    def __init__(self, socket: str = SOCKET) -> None:
        self.socket = socket
        self.channel = grpc.insecure_channel(f"unix://{socket}", options=[("grpc.enable_http_proxy", 0)])
        self.stub = api_pb2_grpc.RuntimeServiceStub(self.channel)

    def conditions(self) -> dict[str, bool] | None:
        """{"RuntimeReady": …, "NetworkReady": …}, or None while containerd does not answer."""
        try:
            resp = self.stub.Status(api_pb2.StatusRequest(), timeout=2)
        except grpc.RpcError:
            return None
        return {c.type: bool(c.status) for c in resp.status.conditions}

    def network_ready(self) -> bool | None:
        conds = self.conditions()
        return None if conds is None else conds.get("NetworkReady", False)

    def runtime_ready(self) -> bool:
        conds = self.conditions()
        return bool(conds and conds.get("RuntimeReady"))


def poll_until(check: Callable[[], T], timeout: float, interval: float = 0.005) -> float | None:
    """CLOCK_REALTIME when `check()` first returned something truthy, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(interval)
    return None


@dataclass(frozen=True)
class Entry:
    realtime: float  # seconds, journald's receive time
    cursor: str
    message: str
    fields: dict[str, str]


def _field(reader: journal.Reader, name: str) -> str:
    try:
        raw = reader._get(name)
    except KeyError:
        return ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


FIELDS = ("MESSAGE", "NODEMEDIC_STEP", "NODEMEDIC_PROBLEM", "NODEMEDIC_SIGNATURE", "NODEMEDIC_TRIGGER_CURSOR")


def find_entry(matches: dict[str, str], since: float, timeout: float,
               accept: Callable[[Entry], bool] = lambda _e: True) -> Entry | None:
    """The first entry at or after `since` (seconds) with all `matches` that `accept` takes;
    waits for new entries up to `timeout`."""
    reader = journal.Reader()
    for name, value in matches.items():
        reader.add_match(f"{name}={value}")
    reader.seek_realtime(since)
    deadline = time.monotonic() + timeout
    while True:
        while reader._next():
            entry = Entry(reader._get_realtime() / 1e6, reader._get_cursor(), _field(reader, "MESSAGE"),
                          {f: _field(reader, f) for f in FIELDS[1:]})
            if entry.realtime >= since and accept(entry):
                reader.close()
                return entry
        left = deadline - time.monotonic()
        if left <= 0:
            reader.close()
            return None
        reader.wait(min(left, 1.0))


def at(entry: Entry | None) -> float | None:
    return entry.realtime if entry else None


def unit_active(unit: str) -> bool:
    out = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, check=False)
    return out.stdout.strip() == "active"


def fsync_cost(directory: str = "/var/lib/nodemedic-bench") -> float:
    """Seconds for one atomic write the way nodemedic persists its state (temp file, fsync,
    rename, fsync of the directory), on the filesystem of /var/lib/nodemedic."""
    os.makedirs(directory, exist_ok=True)
    start = time.perf_counter()
    tmp = os.path.join(directory, ".probe.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"x" * 1024)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, "probe"))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return time.perf_counter() - start
