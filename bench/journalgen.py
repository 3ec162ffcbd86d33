"""Real journal files for benchmarks and tests, written by systemd-journal-remote from the
journal export format, so no running journald is needed and trusted fields can be chosen."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"


@dataclass(frozen=True)
class Entry:
    message: str | bytes
    unit: str | None = None  # trusted _SYSTEMD_UNIT
    pid: int = 4242
    fields: tuple[tuple[str, str], ...] = ()


def _field(name: str, value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if b"\n" in raw or isinstance(value, bytes):
        # binary-safe form: name, newline, little-endian 64-bit length, data
        return name.encode() + b"\n" + len(raw).to_bytes(8, "little") + raw + b"\n"
    return name.encode() + b"=" + raw + b"\n"


def export_stream(entries: Iterable[Entry], start_us: int | None = None, step_us: int = 10) -> bytes:
    boot = uuid.uuid4().hex
    now = int(time.time() * 1_000_000) if start_us is None else start_us
    chunks = []
    for i, entry in enumerate(entries):
        record = [_field("__REALTIME_TIMESTAMP", str(now + i * step_us)),
                  _field("__MONOTONIC_TIMESTAMP", str(1_000_000 + i * step_us)),
                  _field("_BOOT_ID", boot), _field("_PID", str(entry.pid)), _field("MESSAGE", entry.message)]
        if entry.unit:
            record.append(_field("_SYSTEMD_UNIT", entry.unit))
        record += [_field(k, v) for k, v in entry.fields]
        chunks.append(b"".join(record) + b"\n")
    return b"".join(chunks)


def write_journal(directory: Path, entries: Iterable[Entry], start_us: int | None = None,
                  name: str = "bench.journal") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    subprocess.run([JOURNAL_REMOTE, "-o", str(target), "-"], input=export_stream(entries, start_us),
                   check=True, capture_output=True)
    return target
