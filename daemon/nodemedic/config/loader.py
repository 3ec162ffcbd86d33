"""Find, check and merge the configuration files into one Settings object.

Order: vendor defaults, /etc/nodemedic/nodemedic.toml, then /etc/nodemedic/conf.d/*.toml in
lexical order. Tables are deep-merged; for any other value the last file wins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodemedic.config.errors import ConfigError, Problem
from nodemedic.config.files import list_dropins, unreadable
from nodemedic.config.model import Settings
from nodemedic.config.rules import cross_check
from nodemedic.config.schema import build, check_table
from nodemedic.config.tomlfile import KeyPath, TomlFile, read_toml
from nodemedic.hostroot import HOST, HostRoot
from nodemedic.problems import crash_loop_problem

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Origin:
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class LoadedConfig:
    settings: Settings
    merged: dict[str, Any]
    origins: dict[KeyPath, Origin]
    files: tuple[Path, ...]


def config_files(root: HostRoot, warn: Warn, problems: list[Problem] | None = None) -> list[Path]:
    """The files to read, in order; a file that is there but cannot be read by the daemon (see
    files.py) goes to `problems` instead, never silently away."""
    found: list[Problem] = []
    # The vendor defaults are the package's own (root's, 0644); reading them reports anything else.
    files = [root.vendor_defaults()]
    main = root.path("/etc/nodemedic/nodemedic.toml")
    if os.path.lexists(main):
        if (reason := unreadable(main, root.base)) is not None:
            found.append(Problem(main, 0, reason))
        else:
            files.append(main)
    listing = list_dropins(root.path("/etc/nodemedic/conf.d"), warn, base=root.base)
    files.extend(listing.files)
    found.extend(listing.problems)
    if problems is not None:
        problems.extend(found)
    elif found:
        raise ConfigError(found)
    return files


def _merge(into: dict[str, Any], table: dict[str, Any], source: TomlFile, prefix: KeyPath,
           origins: dict[KeyPath, Origin]) -> None:
    for name, value in table.items():
        key = prefix + (name,)
        if isinstance(value, dict) and isinstance(into.get(name), dict):
            _merge(into[name], value, source, key, origins)
            continue
        into[name] = _copy(value)
        for stale in [k for k in origins if k[: len(key)] == key]:
            del origins[stale]
        _record_origins(value, source, key, origins)


def _copy(value: Any) -> Any:
    return {k: _copy(v) for k, v in value.items()} if isinstance(value, dict) else value


def _record_origins(value: Any, source: TomlFile, key: KeyPath, origins: dict[KeyPath, Origin]) -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            _record_origins(item, source, key + (name,), origins)
    else:
        origins[key] = Origin(source.path, source.line_of(key))


def merge_files(sources: Iterable[TomlFile]) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    merged: dict[str, Any] = {}
    origins: dict[KeyPath, Origin] = {}
    for source in sources:
        _merge(merged, source.data, source, (), origins)
    return merged, origins


def load_config(root: HostRoot = HOST, warn: Warn = lambda _msg: None,
                known_problems: frozenset[str] | None = None) -> LoadedConfig:
    """Read, check and merge every config file; ConfigError lists all problems found.

    `known_problems`: the problem names `[problems.NAME]` may use (besides the crash loops of
    the watched units, which follow daemon.units); None skips that check.
    """
    problems: list[Problem] = []
    sources: list[TomlFile] = []
    files = config_files(root, warn, problems)
    for path in files:
        try:
            source = read_toml(path)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        check_table(Settings, source.data, source, (), problems)
        sources.append(source)
    if problems:
        raise ConfigError(problems)
    merged, origins = merge_files(sources)
    try:
        settings = build(Settings, merged)
    except KeyError as err:
        raise ConfigError([Problem(files[0], 1, f"missing key {err.args[0]!r} (vendor defaults incomplete)")]) \
            from None
    problems.extend(cross_check(settings, {key: (o.path, o.line) for key, o in origins.items()}, files))
    if known_problems is not None:
        known = known_problems | {crash_loop_problem(unit) for unit in settings.daemon.units}
        for source in sources:
            table = source.data.get("problems")
            for name in table if isinstance(table, dict) else ():
                if name not in known:
                    problems.append(source.problem(("problems", name), f"unknown problem {name!r}"))
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(settings, merged, origins, tuple(files))
