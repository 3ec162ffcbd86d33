"""The signature catalogue: one TOML file per symptom, vendor files overridable by the operator.

A file in /etc/nodemedic/signatures.d replaces the vendor file of the same name; an empty file
or a symlink to /dev/null disables it, as systemd masks units.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nodemedic.config.errors import ConfigError, Problem
from nodemedic.config.schema import Seconds, build, check_table
from nodemedic.config.tomlfile import TomlFile, read_toml
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
    literal: str
    regex: tuple[str, ...]
    threshold: Threshold
    origin: Literal["unit", "manager"] = "unit"


@dataclass(frozen=True)
class Signature:
    id: str
    problem: str
    summary: str
    units: frozenset[str]
    origin: str
    literal: str
    alternatives: tuple[re.Pattern[str], ...]
    pattern: re.Pattern[str]
    threshold: Threshold
    path: Path

    def matches(self, message: str) -> bool:
        return self.literal in message and self.pattern.match(message) is not None


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
    if not spec.literal:
        problems.append(source.problem(("literal",), "literal must not be empty"))
    if not spec.regex:
        problems.append(source.problem(("regex",), "regex must list at least one pattern"))
    compiled: list[re.Pattern[str]] = []
    for text in spec.regex:
        if not text.startswith("^"):
            problems.append(source.problem(("regex",), f"regex must be anchored with '^': {text!r}"))
            continue
        try:
            compiled.append(re.compile(text))
        except re.error as err:
            problems.append(source.problem(("regex",), f"invalid regex {text!r}: {err}"))
    t = spec.threshold
    if (t.persists is None) == (t.count is None):
        problems.append(source.problem(("threshold",), "threshold needs either count (with window) or persists"))
    elif t.count is not None and (t.count < 1 or t.window is None or t.window <= 0):
        problems.append(source.problem(("threshold",), "threshold.count must be >= 1 with a window > 0"))
    elif t.persists is not None and (t.window is not None or t.persists <= 0):
        problems.append(source.problem(("threshold",), "threshold.persists must be > 0 and has no window"))
    if problems:
        return problems, None
    combined = re.compile("|".join(f"(?:{p.pattern})" for p in compiled))
    return [], Signature(spec.id, spec.problem, spec.summary, frozenset(spec.units), spec.origin, spec.literal,
                         tuple(compiled), combined, spec.threshold, source.path)


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
