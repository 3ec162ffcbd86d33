"""Constraints on single values, attached to the settings' types with `typing.Annotated`.

A value of the right type can still be one the daemon cannot work with: a batch size of 0 spins
the loop without ever reading the journal, a relative state_dir raises deep inside the start, a
"file name" of "../../containerd/config.toml" points a deletion at containerd's own config. Each
constraint raises ValueError with a message fit for an operator; schema.py attaches the file
and line. Rules that relate two keys live in rules.py.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodemedic.durations import format_duration


@dataclass(frozen=True)
class Range:
    """low <= value <= high; `seconds` formats the bounds as durations."""

    low: float | None = None
    high: float | None = None
    seconds: bool = False

    def _show(self, bound: float) -> str:
        return f'"{format_duration(bound)}"' if self.seconds else f"{bound:g}"

    def describe(self) -> str:
        """As nodemedic.toml(5) words it: "Between 1 and 100000." """
        show = (lambda b: format_duration(b) if b else "0") if self.seconds else (lambda b: f"{b:g}")
        return f"Between {show(self.low)} and {show(self.high)}."

    def __call__(self, value: float) -> None:
        if self.low is not None and value < self.low:
            raise ValueError(f"must be at least {self._show(self.low)}, got {self._show(value)}")
        if self.high is not None and value > self.high:
            raise ValueError(f"must be at most {self._show(self.high)}, got {self._show(value)}")


def Count(low: int, high: int) -> Range:  # noqa: N802 - reads as a type in the model
    return Range(low, high)


def Span(low: float, high: float) -> Range:  # noqa: N802
    """A duration between `low` and `high` seconds."""
    return Range(low, high, seconds=True)


def absolute_path(value: str) -> None:
    """An absolute, normalised path that is not `/`: what every configured path must be."""
    if not value:
        raise ValueError("must be an absolute path, got an empty string")
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    normal = posixpath.normpath(value)
    if value.startswith("//") or normal != value:
        # normpath("/srv/../x") is "/x": lexical, so say exactly what would be meant.
        raise ValueError(f"must be a normalised path (no '.', '..', '//' or trailing '/'): write {normal!r}, "
                         f"not {value!r}")
    if value == "/":
        raise ValueError("must not be / itself")


@dataclass(frozen=True)
class AbsolutePath:
    """See absolute_path(); `suffix`: the name must end so; `empty_ok`: "" switches it off."""

    suffix: str = ""
    empty_ok: bool = False

    def __call__(self, value: str) -> None:
        if value == "" and self.empty_ok:
            return
        absolute_path(value)
        if self.suffix and not value.endswith(self.suffix):
            raise ValueError(f"must name a file ending in {self.suffix!r}, got {value!r}")


@dataclass(frozen=True)
class FileName:
    """A plain file name inside a directory the config names elsewhere: never a path."""

    suffix: str = ""

    def __call__(self, value: str) -> None:
        if value in ("", ".", ".."):
            raise ValueError(f"must be a file name, got {value!r}")
        if "/" in value or "\0" in value:
            raise ValueError(f"must be a plain file name without '/', got {value!r}")
        if self.suffix and (not value.endswith(self.suffix) or value == self.suffix):
            raise ValueError(f"must be a file name ending in {self.suffix!r}, got {value!r}")


@dataclass(frozen=True)
class Matches:
    """A string matching `pattern` (anchored), described as `what` in the message."""

    pattern: str
    what: str

    def __call__(self, value: str) -> None:
        if not re.fullmatch(self.pattern, value):
            raise ValueError(f"{value!r} is not {self.what}")


@dataclass(frozen=True)
class Each:
    """Apply `check` to every item of a list; the message names the item's index."""

    check: Callable[[Any], None]

    def __call__(self, values: tuple[Any, ...]) -> None:
        for index, value in enumerate(values):
            try:
                self.check(value)
            except ValueError as err:
                raise ValueError(f"item {index + 1}: {err}") from None


@dataclass(frozen=True)
class Length:
    low: int = 0
    high: int | None = None

    def __call__(self, values: tuple[Any, ...]) -> None:
        if len(values) < self.low:
            raise ValueError(f"must list at least {self.low} item{'s' if self.low != 1 else ''}")
        if self.high is not None and len(values) > self.high:
            raise ValueError(f"must list at most {self.high} items")
        seen: set[Any] = set()
        for value in values:
            if value in seen:
                raise ValueError(f"lists {value!r} twice")
            seen.add(value)


def ip_network(value: str) -> None:
    """A network address with its prefix length, host bits zero ("10.244.0.0/16")."""
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        raise ValueError(f"not a network such as \"10.244.0.0/16\": {err}") from None
    if "/" not in value or network.num_addresses < 4:
        raise ValueError(f"{value!r} leaves no room for a bridge and a pod: give a prefix of /30 or shorter")


# systemd's unit name rules, restricted to the types a node's components run as.
UNIT_NAME = Matches(r"[A-Za-z0-9:_.@\\-]+\.(?:service|scope|socket|mount|timer)", "a systemd unit name")
# A Node's name is a DNS subdomain (RFC 1123, lower case, at most 253); "" = the hostname.
NODE_NAME = Matches(r"(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?)?",
                    "a Kubernetes node name (lower-case DNS subdomain) or \"\"")
FILESYSTEM_TYPE = Matches(r"[a-z0-9][a-z0-9_.]*", "a filesystem type such as 'ext4'")
