"""JournalSource on real journal files (libsystemd reading what systemd-journal-remote wrote)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.journalgen import Entry, write_journal
from nodemedic.detector.matcher import Matcher
from nodemedic.detector.signatures import load_catalogue
from nodemedic.hostroot import HostRoot
from nodemedic.safety import Guard
from nodemedic.sources.events import JournalLine
from nodemedic.sources.journal import JournalSource

UNITS = ("containerd.service", "kubelet.service")
CAPACITY = ('E1020 20:40:12.924972   95277 kubelet.go:1462] "Image garbage collection failed multiple times in a row"'
            ' err="invalid capacity 0 on image filesystem"')
CNI_INIT = ('time="2024-05-20T17:43:10.281533213Z" level=error msg="failed to load cni during init, please check CRI '
            'plugin status before setting up network for pods" error="cni config load failed: no network config found '
            'in /etc/cni/net.d: cni plugin not initialized: failed to load cni config"')
MATCHER = Matcher(load_catalogue(HostRoot(Path("/nonexistent-root"))).signatures)


def drain(directory: Path, cursor_file: Path, **kw) -> list[JournalLine]:
    async def go() -> list[JournalLine]:
        queue: asyncio.Queue = asyncio.Queue()
        done = asyncio.Event()
        source = JournalSource(UNITS, queue, cursor_file, Guard.from_paths([]), batch_size=kw.get("batch", 7),
                               replay_window=kw.get("window", 3600), replay_grace=5, path=str(directory),
                               on_drained=lambda _moved: done.set(), prefilter=kw.get("prefilter", MATCHER))
        source.open()
        await done.wait()
        source.close()
        return [queue.get_nowait() for _ in range(queue.qsize())]

    return asyncio.run(go())


def test_only_trusted_unit_fields_count_never_syslog_identifier(tmp_path):
    write_journal(tmp_path / "j", [
        Entry(CAPACITY, unit="kubelet.service"),
        Entry(CAPACITY, unit="session-3.scope", fields=(("SYSLOG_IDENTIFIER", "kubelet"),)),  # logger -t kubelet
        Entry(CAPACITY, unit=None, fields=(("SYSLOG_IDENTIFIER", "kubelet"), ("UNIT", "kubelet.service"))),
        Entry(CAPACITY, unit="evil.service", fields=(("SYSLOG_IDENTIFIER", "kubelet"),)),
        Entry("kubelet.service: Main process exited, code=exited, status=1/FAILURE", unit="init.scope", pid=1,
              fields=(("UNIT", "kubelet.service"),)),
    ])
    lines = drain(tmp_path / "j", tmp_path / "cursor", prefilter=_Everything())
    assert [(line.unit, line.origin) for line in lines] == [("kubelet.service", "unit"),
                                                            ("kubelet.service", "manager")]


class _Everything:
    def any_literal(self, text: str) -> bool:
        return True

    def could_match(self, text: str, unit: str, origin: str) -> bool:
        return True


def test_prefilter_drops_lines_no_signature_can_match_and_decodes_binary(tmp_path):
    write_journal(tmp_path / "j", [
        Entry("I0101 00:00:00.000000 1 kubelet.go:1] \"Attempting to register node\"", unit="kubelet.service"),
        Entry(b"\xff\xfe not utf-8 \x00 invalid capacity 0 on image filesystem", unit="kubelet.service"),
        Entry(CAPACITY, unit="kubelet.service"),
    ])
    lines = drain(tmp_path / "j", tmp_path / "cursor")
    assert len(lines) == 2
    assert lines[0].message.startswith("\ufffd\ufffd not utf-8")
    assert lines[1].message == CAPACITY


def test_old_entries_are_replayed_for_counting_only_and_the_cursor_resumes(tmp_path):
    old = int((time.time() - 600) * 1_000_000)
    write_journal(tmp_path / "j", [Entry(CAPACITY, unit="kubelet.service")] * 20, start_us=old, name="a.journal")
    cursor_file = tmp_path / "cursor"
    first = drain(tmp_path / "j", cursor_file, batch=7)
    assert len(first) == 20 and all(line.replay for line in first)
    assert cursor_file.read_text() == first[-1].cursor
    # a restart continues after the saved cursor: nothing is read twice
    write_journal(tmp_path / "j", [Entry(CNI_INIT, unit="containerd.service")] * 3, name="b.journal")
    second = drain(tmp_path / "j", cursor_file)
    assert [line.message for line in second] == [CNI_INIT] * 3
    # a fresh line (written after start) is live, not a replay
    write_journal(tmp_path / "j", [Entry(CAPACITY, unit="kubelet.service")], name="c.journal")
    third = drain(tmp_path / "j", cursor_file)
    assert [line.replay for line in third] == [False]


def test_without_a_cursor_only_the_replay_window_is_read(tmp_path):
    write_journal(tmp_path / "j", [Entry(CAPACITY, unit="kubelet.service")] * 5,
                  start_us=int((time.time() - 7200) * 1_000_000), name="old.journal")
    write_journal(tmp_path / "j", [Entry(CAPACITY, unit="kubelet.service")] * 2,
                  start_us=int((time.time() - 60) * 1_000_000), name="new.journal")
    lines = drain(tmp_path / "j", tmp_path / "cursor", window=900)
    assert len(lines) == 2 and all(line.replay for line in lines)
