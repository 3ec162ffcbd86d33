"""The signature catalogue: one TOML file per symptom, vendor files overridable by the operator.

A file in /etc/nodemedic/signatures.d replaces the vendor file of the same name; an empty file
or a symlink to /dev/null disables it, as systemd masks units.

A signature says what it needs, not how a log format spells it: `message` patterns for the
decoded message, `error` patterns for its error/cause fields (or, in free text, what follows
the message), an optional `level`. See decode.py for the formats and docs/signatures.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nodemedic.config.errors import ConfigError, Problem
from nodemedic.config.schema import Seconds, build, check_table
from nodemedic.config.tomlfile import TomlFile, read_toml
from nodemedic.detector.decode import META_KEYS, Record, decode
from nodemedic.detector.patterns import Pattern, PatternError
from nodemedic.durations import format_duration
from nodemedic.hostroot import HOST, HostRoot

_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(?:service|scope|socket|mount|timer)$")
# Lines that arrive only through `nodemedic join`'s streamed output, not from a unit.
KUBEADM = "kubeadm"


@dataclass(frozen=True)
class Threshold:
    count: int | None = None
    window: Seconds | None = None
    persists: Seconds | None = None

    def describe(self) -> str:
        if self.persists is not None:
            return f"persists {format_duration(self.persists)}"
        return f"{self.count} within {format_duration(self.window or 0)}"


@dataclass(frozen=True)
class SignatureFile:
    """What a signature file may contain; see docs/signatures.md."""

    id: str
    problem: str
    summary: str
    units: tuple[str, ...]
    threshold: Threshold
    literal: str | None = None
    # Several literals when no single one is in every matching line (any of them lets a line in).
    literals: tuple[str, ...] = ()
    message: tuple[str, ...] = ()
    error: tuple[str, ...] = ()
    level: tuple[str, ...] = ()
    # Whole-line patterns of the first catalogue format, still honoured for operators' files.
    regex: tuple[str, ...] = ()
    origin: Literal["unit", "manager"] = "unit"


LEVELS = ("trace", "debug", "info", "warning", "error", "fatal", "panic")
# Characters JSON or Go quoting escape: a literal holding one would miss the other spellings.
_ESCAPED = re.compile(r'["\\<>&\x00-\x1f\x7f]')
_SEPARATORS = b" \t:;,-"


@dataclass(frozen=True)
class Verdict:
    """Why a signature did or did not match one record (for `nodemedic match --explain`)."""

    hit: bool
    reason: str


@dataclass(frozen=True)
class Signature:
    id: str
    problem: str
    summary: str
    units: frozenset[str]
    origin: str
    literals: tuple[str, ...]
    message: tuple[Pattern, ...]
    error: tuple[Pattern, ...]
    level: frozenset[str]
    legacy: tuple[Pattern, ...]
    threshold: Threshold
    path: Path
    # Each list as one alternation: one RE2 call instead of one per pattern (each call has a
    # fixed cost of several µs); the single patterns only name the one that hit, for --explain.
    _message_any: Pattern | None = field(default=None, init=False, repr=False, compare=False)
    _error_any: Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, patterns in (("_message_any", self.message), ("_error_any", self.error)):
            if patterns:
                kind = type(patterns[0])  # bench/match_bench.py swaps in `re` for its comparison
                object.__setattr__(self, name, kind("|".join(f"(?:{p.text})" for p in patterns)))

    @property
    def literal(self) -> str:
        return self.literals[0]

    @property
    def patterns(self) -> tuple[Pattern, ...]:
        return self.message + self.error + self.legacy

    def matches(self, line: str, record: Record | None = None) -> bool:
        """Does this raw journal MESSAGE (decoded once by the caller when given) match?"""
        return any(literal in line for literal in self.literals) and self.judge(line, record).hit

    def judge(self, line: str, record: Record | None = None, explain: bool = False) -> Verdict:
        """Hit or not; with `explain`, the reason names the pattern that hit or why none did."""
        if self.legacy:
            raw = line.encode("utf-8", errors="replace")
            for pattern in self.legacy:
                if pattern.found(raw):
                    return Verdict(True, f"regex {pattern.text!r} hit the whole line")
        if not self.message and not self.error:
            return Verdict(False, "no regex hit the whole line")
        return self.judge_record(record if record is not None else decode(line), explain)

    def judge_record(self, record: Record, explain: bool = False) -> Verdict:
        if self.level and record.level and record.level not in self.level:
            return Verdict(False, f"level {record.level} is not one of {sorted(self.level)}")
        msg = record.msg.encode("utf-8", errors="replace")
        rest = msg
        said = ""
        if self._message_any is not None:
            span = self._message_any.search(msg)
            if span is None:
                return Verdict(False, "no message pattern hit the message")
            rest = msg[span[1]:].lstrip(_SEPARATORS)
            if explain:
                said = f"message {_first_hit(self.message, msg)!r} hit"
        if self._error_any is None:
            return Verdict(True, said)
        # where the cause can be: the record's own fields, else what follows the message; each
        # field encoded only when reached (the cause is usually the first)
        error_any = self._error_any
        for key, value in record.fields:
            if key not in META_KEYS:
                text = value.encode("utf-8", errors="replace")
                if error_any.found(text):
                    return self._error_hit(said, f"field {key}", text, explain)
        if error_any.found(rest):
            return self._error_hit(said, "rest of the message" if self.message else "message", rest, explain)
        places = [f"field {key}" for key, _ in record.details()]
        places.append("rest of the message" if self.message else "message")
        return Verdict(False, ", ".join(filter(None, (said, f"no error pattern hit ({', '.join(places)})"))))

    def _error_hit(self, said: str, place: str, text: bytes, explain: bool) -> Verdict:
        if not explain:
            return _HIT
        hit = f"error {_first_hit(self.error, text)!r} hit {place}"
        return Verdict(True, ", ".join(filter(None, (said, hit))))


_HIT = Verdict(True, "")


def _first_hit(patterns: tuple[Pattern, ...], text: bytes) -> str:
    return next((p.text for p in patterns if p.found(text)), "?")


@dataclass(frozen=True)
class Catalogue:
    signatures: tuple[Signature, ...]
    masked: tuple[str, ...]

    @property
    def problems(self) -> frozenset[str]:
        return frozenset(s.problem for s in self.signatures)

    def by_id(self, signature_id: str) -> Signature:
        for signature in self.signatures:
            if signature.id == signature_id:
                return signature
        raise KeyError(signature_id)


def _is_masked(path: Path) -> bool:
    if path.is_symlink() and os.readlink(path) == "/dev/null":
        return True
    return path.is_file() and path.stat().st_size == 0


def _validate(source: TomlFile, spec: SignatureFile, expected_id: str) -> tuple[list[Problem], Signature | None]:
    problems: list[Problem] = []
    if spec.id != expected_id:
        problems.append(source.problem(("id",), f"id {spec.id!r} must equal the file name {expected_id!r}"))
    if not _NAME.match(spec.problem):
        message = f"problem {spec.problem!r} must be lower-case words joined by '-'"
        problems.append(source.problem(("problem",), message))
    if not spec.units:
        problems.append(source.problem(("units",), "units must name at least one unit"))
    for unit in spec.units:
        if unit != KUBEADM and not _UNIT.match(unit):
            problems.append(source.problem(("units",), f"not a unit name: {unit!r}"))
    literals = ((spec.literal,) if spec.literal is not None else ()) + spec.literals
    key = ("literal",) if spec.literal is not None else ("literals",)
    if not literals:
        problems.append(source.problem((), "missing key 'literal' (or 'literals')"))
    for literal in literals:
        if not literal:
            problems.append(source.problem(key, "literal must not be empty"))
        elif _ESCAPED.search(literal):
            problems.append(source.problem(key, "literal must not contain quotes, backslashes, <, >, & or "
                                                "control characters: JSON and Go quoting escape them"))
    if not (spec.regex or spec.message or spec.error):
        problems.append(source.problem(("message",), "a signature needs message or error patterns"))
    for level in spec.level:
        if level not in LEVELS:
            problems.append(source.problem(("level",), f"unknown level {level!r} (one of {', '.join(LEVELS)})"))
    compiled: dict[str, list[Pattern]] = {"message": [], "error": [], "regex": []}
    for key, texts in (("message", spec.message), ("error", spec.error), ("regex", spec.regex)):
        for text in texts:
            try:
                compiled[key].append(Pattern(text))
            except PatternError as err:
                problems.append(Problem(source.path, _line_of(source, key, text),
                                        f"{key} pattern {text!r} rejected by RE2 (linear-time matching): {err}"))
    t = spec.threshold
    if (t.persists is None) == (t.count is None):
        problems.append(source.problem(("threshold",), "threshold needs either count (with window) or persists"))
    elif t.count is not None and (t.count < 1 or t.window is None or t.window <= 0):
        problems.append(source.problem(("threshold",), "threshold.count must be >= 1 with a window > 0"))
    elif t.persists is not None and (t.window is not None or t.persists <= 0):
        problems.append(source.problem(("threshold",), "threshold.persists must be > 0 and has no window"))
    if problems:
        return problems, None
    return [], Signature(spec.id, spec.problem, spec.summary, frozenset(spec.units), spec.origin, literals,
                         tuple(compiled["message"]), tuple(compiled["error"]), frozenset(spec.level),
                         tuple(compiled["regex"]), spec.threshold, source.path)


def _line_of(source: TomlFile, key: str, text: str) -> int:
    """The line holding this array element, for an error that points at the pattern itself."""
    start = source.line_of((key,))
    lines = source.path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number in range(start, len(lines) + 1):
        if text in lines[number - 1]:
            return number
    return start


def load_signature(path: Path) -> Signature:
    source = read_toml(path)
    problems: list[Problem] = []
    check_table(SignatureFile, source.data, source, (), problems)
    if problems:
        raise ConfigError(problems)
    try:
        spec = build(SignatureFile, source.data)
    except KeyError as err:
        raise ConfigError([Problem(path, 1, f"missing key {err.args[0]!r}")]) from None
    problems, signature = _validate(source, spec, path.stem)
    if signature is None:
        raise ConfigError(problems)
    return signature


def signature_files(root: HostRoot) -> dict[str, Path]:
    """Signature file per name, operator files replacing vendor files of the same name."""
    chosen: dict[str, Path] = {}
    for directory in (root.vendor_dir() / "signatures.d", root.path("/etc/nodemedic/signatures.d")):
        if directory.is_dir():
            for entry in sorted(directory.iterdir()):
                if entry.suffix == ".toml":
                    chosen[entry.name] = entry
    return chosen


def load_catalogue(root: HostRoot = HOST) -> Catalogue:
    problems: list[Problem] = []
    signatures: list[Signature] = []
    masked: list[str] = []
    seen: dict[str, Path] = {}
    for _name, path in sorted(signature_files(root).items()):
        if _is_masked(path):
            masked.append(path.stem)
            continue
        try:
            signature = load_signature(path)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        if signature.id in seen:
            problems.append(Problem(path, 1, f"duplicate signature id {signature.id!r} (also {seen[signature.id]})"))
            continue
        seen[signature.id] = path
        signatures.append(signature)
    if problems:
        raise ConfigError(problems)
    return Catalogue(tuple(signatures), tuple(masked))
