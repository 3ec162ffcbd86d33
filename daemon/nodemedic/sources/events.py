"""The immutable events every source puts on the daemon's one queue."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JournalLine:
    """One journal entry from a watched unit, identified by trusted fields only."""

    unit: str
    origin: str  # "unit": the unit's own processes; "manager": PID 1 about the unit
    message: str
    cursor: str
    realtime_us: int
    replay: bool  # written before this daemon started: counts, never triggers


@dataclass(frozen=True, slots=True)
class UnitChanged:
    unit: str
    active_state: str
    sub_state: str
    n_restarts: int
    result: str
    # When systemd last entered "active" for it, in CLOCK_MONOTONIC µs (ActiveEnterTimestamp-
    # Monotonic; 0: never, or not read). A restart of any kind moves it.
    active_since_us: int = 0


@dataclass(frozen=True, slots=True)
class PathChanged:
    """Something changed in (or to) a watched directory; `watch` names which one."""

    watch: str
    path: str


@dataclass(frozen=True, slots=True)
class SourceTrouble:
    """A source lost its input (bus gone, directory unwatchable); it retries by itself."""

    source: str
    detail: str


Event = JournalLine | UnitChanged | PathChanged | SourceTrouble
