"""config.toml after the migration: `mirrors` and every `configs.<host>.tls` removed, `config_path`
set, and nothing else changed.

A round trip through tomlkit, so every other line and comment the operator wrote stays where it
was (never regenerated from `containerd config default`). The edit proves itself before anyone
writes it: the new text must parse to exactly the old settings minus what moved plus
`config_path`, or it is refused. Comments written *inside* a removed table go with it (tomlkit
keeps a table's comments in the table); they are listed, and the backup keeps them.
"""

from __future__ import annotations

import copy
from typing import Any

import tomlkit
from tomlkit.items import InlineTable, String, StringType, Table

from nodemedic.flows.mirrors_config import MalformedConfig, RegistrySettings, dotted, parse


def _leaf_indent(table: Table, dotted_only: bool) -> int | None:
    """Indentation of the first plain key in `table` (through dotted keys, whose indent tomlkit
    keeps on the leaf), or of the first sub-table header when not `dotted_only`."""
    for key, item in table.value.body:
        if key is None:
            continue
        if isinstance(item, Table):
            dotted_key = bool(getattr(key, "_dotted", False))
            if dotted_key or item.is_super_table():
                found = _leaf_indent(item, dotted_only=dotted_only or not dotted_key)
                if found is not None:
                    return found
            elif not dotted_only:
                return len(item.trivia.indent)
            continue
        if hasattr(item, "trivia"):
            return len(item.trivia.indent)
    return None


def _indent_of(registry: Any) -> int:
    """The indentation the operator uses inside the registry table: that of its keys, else its
    header's plus two, else that of its sub-tables' headers (none for an unindented file)."""
    if not isinstance(registry, Table):
        return 0
    found = _leaf_indent(registry, dotted_only=True)
    if found is not None:
        return found
    if registry.trivia.indent:
        return len(registry.trivia.indent) + 2
    return _leaf_indent(registry, dotted_only=False) or 0


def _remove_moved(registry: Any) -> None:
    """Empty `mirrors` and drop every `configs.<host>.tls` (and a host table only that filled).
    The tables themselves stay where the file wrote them with a header: `containerd config default`
    on 1.x writes empty `mirrors` and `configs` tables, and they are the operator's lines too. An
    emptied table written inline (`mirrors = { ... }`) goes, rather than stay as `{  }`."""
    mirrors = registry.get("mirrors")
    if mirrors:
        for name in list(mirrors):
            del mirrors[name]
        _drop_if_emptied_inline(registry, "mirrors")
    configs = registry.get("configs")
    if configs:
        for host in list(configs):
            if "tls" in configs[host]:
                del configs[host]["tls"]
                if not configs[host]:
                    del configs[host]
        _drop_if_emptied_inline(registry, "configs")


def _drop_if_emptied_inline(registry: Any, key: str) -> None:
    if isinstance(registry.get(key), InlineTable) and not registry[key]:
        del registry[key]


def _meaning(data: dict[str, Any], table: tuple[str, ...]) -> dict[str, Any]:
    """Plain data with an empty `mirrors`/`configs` dropped: containerd reads both the same way,
    and whether an emptied table keeps a header depends on how the file wrote it."""
    registry: Any = data
    for key in table:
        registry = registry.get(key, {}) if isinstance(registry, dict) else {}
    for key in ("mirrors", "configs"):
        if isinstance(registry, dict) and registry.get(key) == {}:
            del registry[key]
    return data


def _strip(data: dict[str, Any], settings: RegistrySettings, config_path: str) -> dict[str, Any]:
    """What the new file must mean, from what the old one meant."""
    expected = copy.deepcopy(data)
    registry = expected
    for key in settings.table:
        registry = registry.setdefault(key, {})
    _remove_moved(registry)
    registry["config_path"] = config_path
    return _meaning(expected, settings.table)


def migrate_text(text: str, settings: RegistrySettings, config_path: str) -> str:
    """The new config.toml text; raises MalformedConfig if the edit would change anything else."""
    document = parse(text)
    registry: Any = document
    for key in settings.table:
        registry = registry[key]
    _remove_moved(registry)
    if "config_path" in registry:
        # Replaced in place (its line and comment stay), in the quotes the file used: 2.x writes ''.
        old = registry["config_path"]
        literal = isinstance(old, String) and old.type == StringType.SLL
        registry["config_path"] = tomlkit.string(config_path, literal=literal)
    else:
        # A registry table written in pieces (a mirror appended at the end of the file) is a proxy
        # over its fragments; the key goes into the first, under the header, as tomlkit does.
        first = getattr(registry, "_tables", [registry])[0]
        indent = _indent_of(first)  # before the add: the new key must not measure itself
        first.add("config_path", config_path)
        first.item("config_path").indent(indent)
    new = tomlkit.dumps(document)
    if _meaning(parse(new).unwrap(), settings.table) != _strip(parse(text).unwrap(), settings, config_path):
        raise MalformedConfig(f"editing {dotted(settings.table)} would change other settings; "
                              "nothing written (edit config.toml by hand, or simplify its registry tables)")
    return new


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def dropped_comments(old: str, new: str) -> list[str]:
    """Comment lines of the old file that the new one no longer has (they were inside removed tables)."""
    kept = comments(new)
    lost = []
    for line in comments(old):
        if line in kept:
            kept.remove(line)
        else:
            lost.append(line)
    return lost
