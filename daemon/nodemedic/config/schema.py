"""Typed tables: check a TOML table against a frozen dataclass, then build it.

Checking happens per file (so an error names the file and line that caused it); building
happens once on the merged result. Supported field types are the few a config needs: bool,
int, float, str, Seconds, tuple[str, ...], Literal[...], `X | None`, nested dataclasses and
`Mapping[str, Dataclass]` for tables keyed by name. `Annotated[T, check, ...]` adds checks
(constraints.py) that run on the converted value: a value of the right type the daemon cannot
work with is refused where it is written, not found out at run time.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from nodemedic.config.errors import Problem
from nodemedic.config.tomlfile import KeyPath, TomlFile
from nodemedic.durations import parse_duration


class Seconds(float):
    """A duration in seconds; written in TOML as "30s", "5m" or a number."""


def _dotted(key: KeyPath) -> str:
    return ".".join(key)


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def _describe(tp: Any) -> str:
    if tp is Seconds:
        return 'a duration such as "30s"'
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _optional_inner(tp: Any) -> Any | None:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def check_value(tp: Any, value: Any, source: TomlFile, key: KeyPath, problems: list[Problem]) -> None:
    """Record a problem if `value` cannot be converted to `tp`."""
    if (inner := _optional_inner(tp)) is not None:
        tp = inner
    if get_origin(tp) is Annotated:
        base, *checks = get_args(tp)
        before = len(problems)
        check_value(base, value, source, key, problems)
        if len(problems) == before:
            converted = convert(base, value)
            for check in checks:
                try:
                    check(converted)
                except ValueError as err:
                    problems.append(source.problem(key, f"{_dotted(key)}: {err}"))
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(source.problem(key, f"{_dotted(key)} must be a table"))
            return
        check_table(tp, value, source, key, problems)
        return
    if get_origin(tp) in (Mapping, dict):
        if not isinstance(value, dict):
            problems.append(source.problem(key, f"{_dotted(key)} must be a table"))
            return
        item_type = get_args(tp)[1]
        for name, item in value.items():
            check_value(item_type, item, source, key + (name,), problems)
        return
    try:
        convert(tp, value)
    except (TypeError, ValueError) as err:
        problems.append(source.problem(key, f"{_dotted(key)}: {err}"))


def check_table(cls: type, table: dict[str, Any], source: TomlFile, prefix: KeyPath,
                problems: list[Problem]) -> None:
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name, value in table.items():
        key = prefix + (name,)
        if name not in known:
            problems.append(source.problem(key, f"unknown key {_dotted(key)!r}"))
            continue
        check_value(hints[name], value, source, key, problems)


def convert(tp: Any, value: Any) -> Any:
    """Convert a TOML value to `tp`, raising ValueError with an operator-readable message."""
    if (inner := _optional_inner(tp)) is not None:
        return None if value is None else convert(inner, value)
    if get_origin(tp) is Annotated:
        base, *checks = get_args(tp)
        converted = convert(base, value)
        for check in checks:
            check(converted)
        return converted
    if tp is Seconds:
        return Seconds(parse_duration(value))
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            raise ValueError(f"expected {_describe(tp)}, got {value!r}")
        return value
    if get_origin(tp) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected {_describe(tp)}")
        return tuple(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (bool, int, str):
        if type(value) is not tp:
            raise ValueError(f"expected {_describe(tp)}, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp!r}")


def build(cls: type, table: Mapping[str, Any], prefix: KeyPath = ()) -> Any:
    """Build a frozen dataclass from an already checked table; missing keys raise KeyError."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + (f.name,)
        if f.name not in table:
            if f.default is not dataclasses.MISSING or _optional_inner(tp) is not None:
                values[f.name] = f.default if f.default is not dataclasses.MISSING else None
                continue
            if get_origin(tp) in (Mapping, dict):
                values[f.name] = MappingProxyType({})
                continue
            raise KeyError(_dotted(key))
        value = table[f.name]
        if dataclasses.is_dataclass(tp):
            values[f.name] = build(tp, value, key)
        elif get_origin(tp) in (Mapping, dict):
            item_type = get_args(tp)[1]
            values[f.name] = MappingProxyType(
                {name: build(item_type, item, key + (name,)) for name, item in value.items()})
        else:
            values[f.name] = convert(tp, value)
    return cls(**values)
