"""Which processes run on the node, by their kernel name (/proc/PID/comm)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def pids_by_comm(match: Callable[[str], bool], proc: Path = Path("/proc")) -> list[int]:
    """PIDs whose comm matches. A /proc that cannot be listed raises: "none running" is what
    unlocks destructive steps, so it must never be the answer to "could not look"."""
    pids = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if match((entry / "comm").read_text().strip()):
                    pids.append(int(entry.name))
            except OSError:  # the process ended while we looked
                continue
    return pids
