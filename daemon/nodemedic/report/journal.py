"""Structured journal entries: SYSLOG_IDENTIFIER=nodemedic, a stable MESSAGE_ID per event kind,
and NODEMEDIC_* fields; units/nodemedic.catalog explains each MESSAGE_ID for `journalctl -x`."""

from __future__ import annotations

import os
import sys
from enum import Enum

try:
    from systemd import journal as _journal
except ImportError:  # pragma: no cover - python3-systemd is a hard dependency on a node
    _journal = None


class Kind(Enum):
    """Event kinds and their MESSAGE_IDs (never change an ID once shipped)."""

    STARTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f01"
    STOPPING = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f02"
    CONFIG_RELOADED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f03"
    CONFIG_REJECTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f04"
    SOURCE_TROUBLE = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f05"
    SUSPECTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f10"
    NOT_CONFIRMED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f11"
    CONFIRMED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f12"
    STEP_STARTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f13"
    STEP_FINISHED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f14"
    HEALED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f15"
    EXHAUSTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f16"
    HELD_BACK = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f17"
    PLACEHOLDER_ACTIVE = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f20"
    PLACEHOLDER_REMOVED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f21"
    PAUSED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f22"
    RESUMED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f23"
    # the engine's own troubles (issue 18)
    STATE_NOT_SAVED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f80"
    STATE_SAVED_AGAIN = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f81"
    TASK_FAILED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f82"
    OPERATION_REFUSED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f83"
    RESTORED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f84"
    # the fleet guard (issue 15): the daemon waiting for a slot, nodemedic-kube holding slots
    FLEET_HELD = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fb0"
    FLEET_SLOT_TAKEN = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fb1"
    FLEET_SLOT_RELEASED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fb2"
    FLEET_SLOT_LOST = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fb3"
    FLEET_TROUBLE = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fb4"
    FLEET_SERVING = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fb5"
    # `nodemedic repoint`
    REPOINT_REFUSED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f30"
    REPOINT_STARTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f31"
    REPOINT_STEP = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f32"
    REPOINT_DONE = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f33"
    REPOINT_ROLLED_BACK = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f34"
    REPOINT_ROLLBACK_INCOMPLETE = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f35"
    # `nodemedic join`
    JOIN_PREFLIGHT = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f40"
    JOIN_REFUSED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f41"
    JOIN_ATTEMPT_STARTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f42"
    JOIN_ATTEMPT_FAILED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f43"
    JOIN_SYMPTOM = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f44"
    JOIN_CLEANUP = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f45"
    JOIN_SUCCEEDED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f46"
    JOIN_EXHAUSTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f47"
    # `nodemedic mirrors migrate`
    MIRRORS_REFUSED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f60"
    MIRRORS_STARTED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f61"
    MIRRORS_STEP = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f62"
    MIRRORS_DONE = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f63"
    MIRRORS_ROLLED_BACK = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f64"
    MIRRORS_ROLLBACK_INCOMPLETE = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5f65"
    KUBE_TROUBLE = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fa0"
    KUBE_RECOVERED = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fa1"
    KUBE_SENT = "9c6f3bf0a6a34d4e8f8b9a1c2d7e5fa2"


JOURNAL_SOCKET = "/run/systemd/journal/socket"

# syslog priorities
ERR, WARNING, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7


def log(kind: Kind, message: str, priority: int = INFO, **fields: object) -> None:
    """Write one entry; field names are upper-cased and prefixed NODEMEDIC_."""
    extra = {f"NODEMEDIC_{name.upper()}": str(value) for name, value in fields.items() if value is not None}
    # sd_journal_send reports success even with no journald to receive it: look for the socket.
    if _journal is not None and os.path.exists(JOURNAL_SOCKET):
        try:
            _journal.send(message, MESSAGE_ID=kind.value, PRIORITY=str(priority),
                          SYSLOG_IDENTIFIER="nodemedic", **extra)
            return
        except OSError:
            pass  # no journald (a plain shell, a test): fall through to stderr
    details = " ".join(f"{k}={v}" for k, v in extra.items())
    print(f"<{priority}>nodemedic: {message} {details}".rstrip(), file=sys.stderr)
