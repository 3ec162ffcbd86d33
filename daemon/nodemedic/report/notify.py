"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING (no-ops outside systemd)."""

from __future__ import annotations

import os

try:
    from systemd import daemon as _daemon
except ImportError:  # pragma: no cover
    _daemon = None


def notify(*assignments: str) -> None:
    if _daemon is not None and os.environ.get("NOTIFY_SOCKET"):
        _daemon.notify("\n".join(assignments))


def watchdog_interval() -> float | None:
    """Half the WatchdogSec systemd asked for, or None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
