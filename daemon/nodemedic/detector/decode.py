"""Decode one log record into level, message and fields, whatever format wrote it.

The same kubelet or containerd failure reaches the journal in several spellings:
- klog text, `E0416 22:26:30.150357   10125 kubelet.go:2373] free text` (kubelet before ~1.21);
- structured klog, the same header then `"Message" key="value" …` (kubelet ≥ 1.21);
- klog JSON, `{"ts":…,"caller":…,"msg":…,"err":…}` (kubelet --logging-format=json);
- logrus text (logfmt), `time="…" level=error msg="…" error="…"` (containerd), and logrus'
  terminal form `ERRO[0000] message   error="…"`;
- logrus JSON, `{"error":…,"level":…,"msg":…,"time":…}` (containerd `[debug] format = "json"`);
- plain text (kubeadm, Go panics, lines of any other program).
Lines pasted from bug reports often lost the klog header or carry a syslog/journalctl prefix;
both are optional here. Signatures match the decoded message and fields, so one signature
covers every format. Decoding runs only for lines that passed the literal prefilter.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import NamedTuple

# Fields that describe the record, not the event; everything else may carry the cause.
META_KEYS = frozenset({"time", "ts", "level", "msg", "caller", "v", "logger", "file", "line"})

_KLOG_LEVELS = {"I": "info", "W": "warning", "E": "error", "F": "fatal"}
_LOGRUS_LEVELS = {"TRAC": "trace", "DEBU": "debug", "INFO": "info", "WARN": "warning", "ERRO": "error",
                  "FATA": "fatal", "PANI": "panic"}
_LEVEL_NAMES = {"warn": "warning", "err": "error", "crit": "fatal", "critical": "fatal", "dpanic": "panic"}

# journalctl/syslog prefix of a pasted line: "Nov 30 12:00:01 node-1 kubelet[812]: " or "kubelet[812]: ".
_SYSLOG = re.compile(r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S{1,253} )?[\w.@-]{1,64}\[\d{1,10}\]: ")
# klog header; only its source location is kept when a paste cut off the rest.
_KLOG = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{1,9} {1,16}\d{1,10} ([^\s\]]{1,256}:\d{1,7})\] ")
_KLOG_CUT = re.compile(r"(?:\d{1,10} )?([\w.-]{1,128}\.go:\d{1,7})\] ")
_LOGRUS_TTY = re.compile(r"(TRAC|DEBU|INFO|WARN|ERRO|FATA|PANI)\[[^\]]{0,64}\] ")
# A Go-quoted string (strconv.Quote: klog and logrus values), unrolled so it never backtracks.
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_PAIR = re.compile(r"([\w.\-/]{1,128})=(" + _QUOTED + r"|\S*)")
_SPACES = re.compile(r"\s+")
_QUOTED_AT = re.compile(_QUOTED)
_SIMPLE_PAIR = re.compile(r"\s*([\w.\-/]{1,128})=(?:(" + _QUOTED + r")(?=\s|$)|([^\s\"{\[]*)(?=\s|$))")
_PAIR_START = re.compile(r" [\w.\-/]{1,128}=")
_TTY_TRIES = 8


class Record(NamedTuple):  # a tuple: built for every candidate line, cheaper than a frozen dataclass
    format: str  # klog | klog-structured | klog-json | logfmt | logrus-json | text
    level: str  # info | warning | error | fatal | debug | trace | panic, or "" when the format has none
    msg: str
    fields: tuple[tuple[str, str], ...] = ()
    source: str = ""  # klog's file.go:NNN or JSON caller: shown, never matched

    def field(self, key: str) -> str | None:
        for name, value in self.fields:
            if name == key:
                return value
        return None

    def details(self) -> list[tuple[str, str]]:
        """The fields that may carry an error or cause: all but time, level, caller…"""
        return [(k, v) for k, v in self.fields if k not in META_KEYS]


def _unquote(quoted: str) -> str:
    body = quoted[1:-1]
    if "\\" not in body:
        return body
    if body.count("\\") == body.count('\\"'):
        # only escaped quotes (an error quoting a name inside a value): two C-level passes, not
        # json.loads; a backslash-backslash pair counts 2 backslashes and no quote, so never here
        return body.replace('\\"', '"')
    try:
        return str(json.loads(quoted))
    except ValueError:  # Go escapes JSON lacks (\x1b, \a, \U0001f600): keep the escaped char
        return re.sub(r"\\(.)", r"\1", body)


def _value(raw: str) -> str:
    return _unquote(raw) if raw.startswith('"') and len(raw) >= 2 and raw.endswith('"') else raw


def parse_pairs(text: str) -> list[tuple[str, str]] | None:
    """`key=value key="quoted value" …` to pairs; None unless the whole text is pairs.

    A bare value runs to the next ` key=`, so klog's `condition={Type:Ready Status:False …}`
    stays one value.
    """
    # The common case in one C-level pass: nothing but space-separated simple pairs.
    pairs: list[tuple[str, str]] = []
    pos = 0
    for found in _SIMPLE_PAIR.finditer(text):
        if found.start() != pos:
            break
        key, quoted, bare = found.groups()
        pairs.append((key, bare if quoted is None else _unquote(quoted)))
        pos = found.end()
    else:
        if pos == len(text) or not text[pos:].strip():
            return pairs
    return _parse_pairs_slowly(text)


def _parse_pairs_slowly(text: str) -> list[tuple[str, str]] | None:
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while pos < end:
        space = _SPACES.match(text, pos)
        if space:
            pos = space.end()
            if pos >= end:
                break
        pair = _PAIR.match(text, pos)
        if pair is None:
            if not pairs or pos == 0:
                return None
            # the previous bare value had a space in it: extend it to the next " key="
            following = _PAIR_START.search(text, pos)
            stop = following.start() if following else end
            key, value = pairs[-1]
            pairs[-1] = (key, value + " " + text[pos:stop].rstrip())
            pos = stop
            continue
        raw = pair.group(2)
        pos = pair.end()
        if raw[:1] in "{[" and raw.count(raw[0]) != raw.count(_CLOSE[raw[0]]):
            # a Go struct or slice printed with %+v, spaces inside: runs to its closing bracket
            close = _closing(text, pair.start(2))
            raw, pos = text[pair.start(2):close], close
        pairs.append((pair.group(1), _value(raw)))
    return pairs


_CLOSE = {"{": "}", "[": "]"}


def _closing(text: str, start: int) -> int:
    """Index just past the bracket closing the one at `start` (or the end of the text)."""
    opening, closing = text[start], _CLOSE[text[start]]
    depth = 0
    for index in range(start, len(text)):
        char = text[index]
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _structured(rest: str) -> tuple[str, list[tuple[str, str]]] | None:
    """klog's `"Message" key=value …`, or None when `rest` is not that."""
    quoted = _QUOTED_AT.match(rest)
    if quoted is None:
        return None
    tail = rest[quoted.end():]
    if tail and not tail.startswith(" "):
        return None
    pairs = parse_pairs(tail)
    if pairs is None:
        return None
    return _unquote(quoted.group()), pairs


def _json(text: str) -> Record | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("msg"), str):
        return None
    fields = tuple((str(k), v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))
                   for k, v in data.items())
    if "ts" in data or "caller" in data:
        # klog's JSON logger writes "v" for info records and leaves it out for errors
        level = "info" if "v" in data else "error"
        return Record("klog-json", level, data["msg"], fields, str(data.get("caller", "")))
    level = str(data.get("level", "")).lower()
    return Record("logrus-json", _LEVEL_NAMES.get(level, level), data["msg"], fields)


def _klog(rest: str, level: str, source: str) -> Record:
    structured = _structured(rest)
    if structured is not None:
        msg, pairs = structured
        return Record("klog-structured", level, msg, tuple(pairs), source)
    return Record("klog", level, rest, (), source)


def decode(text: str) -> Record:
    """The record in `text`; plain text when no known format fits."""
    text = text.strip()
    # The syslog/journalctl prefix only on pasted lines: a line that already starts as a klog
    # header, a logfmt or JSON record cannot carry one, so its regex is skipped for those.
    first = text[:1]
    if not ((first in _KLOG_LEVELS and text[1:2].isdigit()) or first == "{" or text.startswith("time=")):
        prefix = _SYSLOG.match(text)
        if prefix:
            text = text[prefix.end():]
    if text.startswith("{") and text.endswith("}"):
        record = _json(text)
        if record is not None:
            return record
    if header := _KLOG.match(text):
        return _klog(text[header.end():], _KLOG_LEVELS[header.group(1)], header.group(2))
    if header := _KLOG_CUT.match(text):
        return _klog(text[header.end():], "", header.group(1))
    if text.startswith(("time=", "level=")):
        pairs = parse_pairs(text)
        if pairs is not None:
            fields = dict(pairs)
            level = fields.get("level", "").lower()
            return Record("logfmt", _LEVEL_NAMES.get(level, level), fields.get("msg", ""), tuple(pairs))
    if header := _LOGRUS_TTY.match(text):
        return _logrus_tty(text[header.end():], _LOGRUS_LEVELS[header.group(1)])
    if text.startswith('"'):
        structured = _structured(text)
        if structured is not None:
            return Record("klog-structured", "", structured[0], tuple(structured[1]))
    return Record("text", "", text)


def _logrus_tty(rest: str, level: str) -> Record:
    """`ERRO[0000] free text message      key=value …`: the message is not quoted, so it
    ends where the rest of the line is nothing but pairs. Only the first few ` key=` are
    tried, each a pass over the rest: a hostile line must not make this quadratic."""
    for candidate in itertools.islice(_PAIR_START.finditer(rest), _TTY_TRIES):
        pairs = parse_pairs(rest[candidate.start():])
        if pairs is not None and _no_extension(rest[candidate.start():], pairs):
            return Record("logfmt", level, rest[:candidate.start()].strip(), tuple(pairs))
    return Record("logfmt", level, rest.strip())


def _no_extension(text: str, pairs: list[tuple[str, str]]) -> bool:
    """True when every pair stood on its own (no bare value swallowed free text)."""
    return len(pairs) == len(_PAIR.findall(text))
