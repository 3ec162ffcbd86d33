"""Journal source: entries of the watched units, read with libsystemd on the event loop.

Filtering happens in libsystemd (matches), and only the fields needed are read, which keeps
the ingest rate close to a raw `sd_journal_next()` loop. Which unit an entry belongs to comes
from trusted fields only (`_SYSTEMD_UNIT`, or `_PID=1` with `UNIT=`), never from the forgeable
SYSLOG_IDENTIFIER.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from systemd import journal

from nodemedic.safety import Guard, atomic_write
from nodemedic.sources.events import Event, JournalLine


class Prefilter(Protocol):
    def any_literal(self, text: str) -> bool: ...
    def could_match(self, text: str, unit: str, origin: str) -> bool: ...


class _PassEverything:
    def any_literal(self, text: str) -> bool:
        return True

    def could_match(self, text: str, unit: str, origin: str) -> bool:
        return True


class JournalSource:
    def __init__(self, units: tuple[str, ...], queue: asyncio.Queue[Event], cursor_file: Path, guard: Guard,
                 batch_size: int, replay_window: float, replay_grace: float, path: str | None = None,
                 on_drained: Callable[[bool], None] = lambda _moved: None, prefilter: Prefilter | None = None) -> None:
        self.units = frozenset(units)
        self._unit_bytes = {unit.encode(): unit for unit in units}
        # The detector's matcher as prefilter; replaced on reload together with the catalogue.
        self.prefilter: Prefilter = prefilter or _PassEverything()
        self.queue = queue
        self.cursor_file = cursor_file
        self.guard = guard
        self.batch_size = batch_size
        self.started_us = int((time.time() - replay_grace) * 1_000_000)
        self.replay_window = replay_window
        self.path = path
        self.on_drained = on_drained
        self.entries_read = 0
        self._reader: journal.Reader | None = None
        self._draining = False
        self._cursor = ""
        self._saved = ""

    def open(self) -> None:
        reader = journal.Reader(path=self.path) if self.path else journal.Reader()
        # The four match groups `journalctl -u` uses, so PID 1's lines about a unit are seen too.
        for unit in sorted(self.units):
            reader.add_match(_SYSTEMD_UNIT=unit)
            reader.add_disjunction()
            reader.add_match(UNIT=unit, _PID="1")
            reader.add_disjunction()
            reader.add_match(COREDUMP_UNIT=unit, _UID="0")
            reader.add_disjunction()
            reader.add_match(OBJECT_SYSTEMD_UNIT=unit, _UID="0")
            reader.add_disjunction()
        saved = self._saved_cursor()
        if saved:
            reader.seek_cursor(saved)
            # seek_cursor lands on the saved entry itself (or its nearest survivor after a vacuum)
            if reader._next() and not reader.test_cursor(saved):
                reader._previous()
        else:
            reader.seek_realtime(time.time() - self.replay_window)
        self._reader = reader
        asyncio.get_running_loop().add_reader(reader.fileno(), self._on_readable)
        self._schedule_drain()

    def close(self) -> None:
        if self._reader is not None:
            asyncio.get_running_loop().remove_reader(self._reader.fileno())
            self._reader.close()
            self._reader = None

    def _saved_cursor(self) -> str:
        try:
            return self.cursor_file.read_text().strip()
        except OSError:
            return ""

    def _on_readable(self) -> None:
        if self._reader is None:
            return
        # process() clears the inotify fd; APPEND and INVALIDATE (rotation, vacuum) both mean
        # "read on": libsystemd re-opens rotated files itself.
        if self._reader.process() != journal.NOP:
            self._schedule_drain()

    def _schedule_drain(self) -> None:
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._reader is not None:
                lines = self._read_batch()
                for line in lines:
                    await self.queue.put(line)
                if not self._more_pending:
                    break
                await asyncio.sleep(0)  # let the rest of the loop run between batches
        finally:
            self._draining = False
        # Any write to the journal wakes us; only touch the disk and the metrics when this
        # wake-up actually moved our position.
        moved = self._cursor != self._saved
        if moved:
            self._save_cursor()
        self.on_drained(moved)

    def _read_batch(self) -> list[JournalLine]:
        """Up to batch_size entries; only lines some signature could match become events.

        Most entries match nothing, so the literal prefilter runs first on MESSAGE alone; the
        unit fields, cursor and timestamp are only read for the rare candidate line.
        """
        reader = self._reader
        assert reader is not None
        get = reader._get
        units = self._unit_bytes
        could_match = self.prefilter.could_match
        any_literal = self.prefilter.any_literal
        lines: list[JournalLine] = []
        read = 0
        while read < self.batch_size:
            if not reader._next():
                break
            read += 1
            try:
                raw = get("MESSAGE")
            except KeyError:
                continue
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            # Cheapest test first, inline on this hot path: any signature's literal in the line?
            if not any_literal(text):
                continue
            try:
                unit_raw = get("_SYSTEMD_UNIT")
            except KeyError:
                unit_raw = b""
            if unit_raw in units:
                origin = "unit"
            else:
                try:
                    if get("_PID") != b"1" or (unit_raw := get("UNIT")) not in units:
                        continue  # coredump/object entries: no signature reads them yet
                except KeyError:
                    continue
                origin = "manager"
            unit = units[unit_raw]
            if not could_match(text, unit, origin):
                continue
            realtime = reader._get_realtime()
            lines.append(JournalLine(unit=unit, origin=origin, message=text, cursor=reader._get_cursor(),
                                     realtime_us=realtime, replay=realtime < self.started_us))
        self._more_pending = read == self.batch_size
        if read:
            self.entries_read += read
            self._cursor = reader._get_cursor()  # still on the last entry read, even at the end
        return lines

    def _save_cursor(self) -> None:
        if self._cursor:
            try:
                atomic_write(self.guard, self.cursor_file, self._cursor.encode(), mode=0o600)
                self._saved = self._cursor
            except OSError:
                pass  # a full or read-only disk must not stop detection; the next batch retries

