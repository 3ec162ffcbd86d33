"""Signature patterns on RE2: matching time is linear in the line, whoever wrote the pattern.

Python's `re` backtracks: an operator's `^(a+)+$` against a 45-character line ran for 30 s
at full CPU until the watchdog killed the daemon. RE2 compiles to automata and has no
backtracking, so no pattern can do that; what it cannot express in linear time
(backreferences, lookaround) it refuses at compile time, which becomes a load-time error
naming the file and line.

The low-level binding (`re2._re2.RE2.Match`) is used on UTF-8 bytes: the pure-Python `re2`
wrapper converts every str and its offsets and costs several times more per call.
"""

from __future__ import annotations

import re2
from re2 import _re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every rejected operator pattern to stderr
_OPTIONS.never_capture = True  # only the span of the whole match is used
# Generous but bounded: RE2 falls back to a slower engine instead of growing memory further.
_OPTIONS.max_mem = 8 << 20
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)


class PatternError(ValueError):
    """A pattern RE2 cannot compile (invalid, or not expressible in linear time)."""


class Pattern:
    """One compiled pattern; `search` finds it anywhere unless the pattern anchors itself."""

    __slots__ = ("text", "_regexp")

    def __init__(self, text: str) -> None:
        self.text = text
        regexp = _re2.RE2(text.encode("utf-8"), _OPTIONS)
        if not regexp.ok():
            raise PatternError(regexp.error().decode("utf-8", errors="replace"))
        self._regexp = regexp

    def search(self, data: bytes, start: int = 0) -> tuple[int, int] | None:
        """(start, end) byte offsets of the first match in `data[start:]`, or None."""
        span = self._regexp.Match(_UNANCHORED, data, start, len(data))[0]
        return None if span == _NO_MATCH else span

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"
