"""Read one TOML file, and remember on which line every key was set.

tomllib returns plain dicts without positions, and neither it nor tomlkit exposes line
numbers, so a small scanner maps each key path to the line that set it. It only needs to be
right for well-formed files: broken ones are reported by tomllib itself.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodemedic.config.errors import ConfigError, Problem

KeyPath = tuple[str, ...]

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_TABLE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ARRAY_TABLE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY_PART)
_DECODE_POSITION = re.compile(r"\(at line (\d+), column \d+\)")
# Deeper than any real config or signature (they nest three levels at most), and far below
# the depth at which tomllib's recursive parser, or our own merge, hits Python's recursion
# limit: a deeper file is refused with its line instead of a RecursionError.
MAX_NESTING = 32


def _split_key(dotted: str) -> KeyPath:
    return tuple(part.strip("\"'") for part in _PART.findall(dotted))


def locate_keys(text: str) -> dict[KeyPath, int]:
    """Line number (1-based) of each key path and table header in a TOML document."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        if array := _ARRAY_TABLE.match(line):
            table = _split_key(array.group(1))
            lines.setdefault(table, number)
            continue
        if header := _TABLE.match(line):
            table = _split_key(header.group(1))
            lines.setdefault(table, number)
            continue
        if assign := _ASSIGN.match(line):
            key = table + _split_key(assign.group(1))
            for depth in range(len(table) + 1, len(key) + 1):
                lines.setdefault(key[:depth], number)
            rest = line[assign.end():]
            for quotes in ('"""', "'''"):
                if rest.count(quotes) % 2 == 1:
                    in_multiline = quotes
    return lines


@dataclass(frozen=True)
class TomlFile:
    path: Path
    data: dict[str, Any]
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, key: KeyPath) -> int:
        """The line that set `key`, or of its closest enclosing table, or 1."""
        for depth in range(len(key), 0, -1):
            if key[:depth] in self.lines:
                return self.lines[key[:depth]]
        return 1

    def problem(self, key: KeyPath, message: str) -> Problem:
        return Problem(self.path, self.line_of(key), message)


def too_deep(text: str, limit: int = MAX_NESTING) -> int | None:
    """The line on which arrays and inline tables nest deeper than `limit`, or None.

    A small scanner, run before tomllib: strings and comments are skipped, so brackets in them
    do not count; a table header `[a.b]` opens and closes on its line and never gets deep.
    """
    depth = 0
    line = 1
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                if text[i] == "\\" and c == '"' and i + 1 < n and text[i + 1] != "\n":
                    i += 1  # an escaped character, maybe a quote (a line-ending backslash is not)
                elif text[i] == "\n":
                    if len(quote) == 1:
                        break  # an unterminated string: tomllib reports it; the newline counts below
                    line += 1
                i += 1
            else:
                i += len(quote)
            continue
        elif c in "[{":
            depth += 1
            if depth > limit:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def read_toml(path: Path, display: Path | None = None) -> TomlFile:
    """Parse `path`; errors name `display` (the path as the operator knows it)."""
    shown = display or path
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError([Problem(shown, 0, f"cannot read: {err.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError([Problem(shown, line, "not valid UTF-8")]) from None
    if (deep := too_deep(text)) is not None:
        raise ConfigError([Problem(shown, deep, f"arrays or tables nested more than {MAX_NESTING} deep")])
    try:
        data = tomllib.loads(text)
    except RecursionError:  # not reached after too_deep(); kept so no input can escape as a traceback
        raise ConfigError([Problem(shown, 1, "nested too deeply to parse")]) from None
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        position = _DECODE_POSITION.search(message)
        line = int(position.group(1)) if position else 1
        message = _DECODE_POSITION.sub("", message).strip()
        raise ConfigError([Problem(shown, line, f"invalid TOML: {message}")]) from None
    return TomlFile(shown, data, locate_keys(text))
