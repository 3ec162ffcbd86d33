"""Durations as operators write them: "250ms", "90s", "5m", "1h", "1d", or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds from a duration; raises ValueError with a message fit for an operator."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"30s\" or \"5m\", got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
        raise ValueError(f"not a duration: {value!r} (use e.g. \"30s\", \"5m\", \"1h\")")
    raise ValueError(f"expected a duration such as \"30s\", got {type(value).__name__}")


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"
