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
    """One compiled pattern; `search` finds it anywhere unless the pattern anchors itself, and
    `found` only says whether it does."""

    __slots__ = ("text", "_regexp", "_set")

    def __init__(self, text: str) -> None:
        self.text = text
        regexp = _re2.RE2(text.encode("utf-8"), _OPTIONS)
        if not regexp.ok():
            raise PatternError(regexp.error().decode("utf-8", errors="replace"))
        self._regexp = regexp
        self._set: _re2.Set | bool | None = None  # None: not made yet; False: RE2 refused it

    def search(self, data: bytes, start: int = 0) -> tuple[int, int] | None:
        """(start, end) byte offsets of the first match in `data[start:]`, or None."""
        span = self._regexp.Match(_UNANCHORED, data, start, len(data))[0]
        return None if span == _NO_MATCH else span

    def found(self, data: bytes) -> bool:
        """Whether it occurs anywhere in `data`. The binding's Match always asks for the span,
        which makes RE2 build a reverse program and a second DFA to find where a match starts;
        a one-pattern RE2::Set answers with the forward DFA alone. Measured on the benches' mix
        (bench/RESULTS.md, memory): the automata the matcher builds up take 1.24 MiB instead of
        1.93, and a line costs 0.91x the CPU. The Set is made on first use: only patterns that
        are run cost it."""
        matcher = self._set
        if matcher is None:
            matcher = self._set = _one_pattern_set(self.text)
        if matcher is False:
            return self.search(data) is not None
        return bool(matcher.Match(data))

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def _one_pattern_set(text: str) -> _re2.Set | bool:
    """A Set has no NFA to fall back on. RE2 refuses to compile one whose DFA cannot start within
    max_mem, and then the pattern is judged by `search` instead. Once running, a Set's DFA clears
    its cache when full and goes on (it does not bail out on slow input as a single RE2 may); it
    would fail, and answer "no match", only if one state alone outgrew the cache: a state holds at
    most one entry per instruction, and patterns RE2 compiled within 8 MiB leave that far out of
    reach."""
    matcher = _re2.Set(_UNANCHORED, _OPTIONS)
    if matcher.Add(text.encode("utf-8")) < 0 or not matcher.Compile():
        return False
    return matcher
