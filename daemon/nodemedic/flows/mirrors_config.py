"""Where containerd's CRI registry settings live in config.toml, and which of them are deprecated.

Read-only and pure (text in, facts out), so `doctor` and `nodemedic mirrors migrate` judge a
file the same way. Versions, as containerd reads them:

- version 1 (no `version` key): `plugins.cri.registry` (containerd 1.x; 2.x migrates it);
- version 2 (containerd 1.x): `plugins."io.containerd.grpc.v1.cri".registry`; containerd 2.x
  migrates such a file in memory and logs "Configuration migrated from version 2";
- version 3 (containerd 2.x): `plugins.'io.containerd.cri.v1.images'.registry`.

Deprecated there (containerd docs/hosts.md, docs/cri/registry.md; removal planned for 2.4):
`mirrors` and `configs.<host>.tls` (both replaced by `config_path` + hosts.toml; containerd refuses
to load its CRI plugin when either is set together with `config_path`), `configs.<host>.auth` and
`auths` (no hosts.toml equivalent by design: credentials belong in ImagePullSecrets; they still
work beside `config_path`, so a migration keeps them).

Which version a file is and where its registry table lives comes from probes.containerd_config.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from nodemedic.probes import containerd_config
from nodemedic.probes.containerd_config import ContainerdConfigError

DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d"
# What configs.<host>.tls may hold (containerd 1.x TLSConfig) and what hosts.toml calls it.
TLS_FIELDS = ("ca_file", "cert_file", "key_file", "insecure_skip_verify")


class MalformedConfig(Exception):
    """config.toml does not parse, or a registry setting has a shape containerd would reject."""


def dotted(path: tuple[str, ...]) -> str:
    """The TOML spelling of a table path, as an operator greps for it."""
    return ".".join(p if p.replace("_", "").replace("-", "").isalnum() else f'"{p}"' for p in path)


@dataclass
class RegistrySettings:
    """The registry table of one config.toml, as containerd would read it."""

    version: int
    table: tuple[str, ...]  # where the registry table lives for this version
    config_path: str = ""
    mirrors: dict[str, list[str]] = field(default_factory=dict)  # registry -> endpoints
    tls: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> configs.<host>.tls
    auth_hosts: list[str] = field(default_factory=list)  # hosts with configs.<host>.auth
    auths: list[str] = field(default_factory=list)  # keys of the older `auths` table

    @property
    def movable(self) -> bool:
        """Something hosts.toml can take over."""
        return bool(self.mirrors or self.tls)

    @property
    def deprecated(self) -> list[str]:
        where = dotted(self.table)
        found = []
        if self.mirrors:
            found.append(f"{where}.mirrors ({', '.join(sorted(self.mirrors))})")
        if self.tls:
            found.append(f"{where}.configs.*.tls ({', '.join(sorted(self.tls))})")
        if self.auth_hosts:
            found.append(f"{where}.configs.*.auth ({', '.join(sorted(self.auth_hosts))})")
        if self.auths:
            found.append(f"{where}.auths ({', '.join(sorted(self.auths))})")
        return found


def parse(text: str, source: str = "config.toml") -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except (TOMLKitError, ValueError) as err:
        raise MalformedConfig(f"{source} is not valid TOML: {err}") from None


def registry_settings(text: str, source: str = "config.toml") -> RegistrySettings:
    try:
        config = containerd_config.parse(text, source)
    except ContainerdConfigError as err:
        if isinstance(err.__cause__, tomllib.TOMLDecodeError):
            raise MalformedConfig(f"{source} is not valid TOML: {err.__cause__}") from None
        raise MalformedConfig(f"{source}: {err}") from None
    table = config.layout.registry
    settings = RegistrySettings(config.version, table)
    registry = config.get(table)
    if registry is None:
        return settings
    if not isinstance(registry, dict):
        raise MalformedConfig(f"{dotted(table)} is not a table")
    config_path = registry.get("config_path", "")
    if not isinstance(config_path, str):
        raise MalformedConfig(f"{dotted(table)}.config_path is not a string")
    settings.config_path = config_path
    for name, mirror in _mapping(registry, "mirrors", table).items():
        endpoints = mirror.get("endpoint", []) if isinstance(mirror, dict) else None
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise MalformedConfig(f"{dotted(table)}.mirrors.\"{name}\".endpoint is not a list of strings")
        settings.mirrors[name] = list(endpoints)
    for host, config_table in _mapping(registry, "configs", table).items():
        if not isinstance(config_table, dict):
            raise MalformedConfig(f"{dotted(table)}.configs.\"{host}\" is not a table")
        if "tls" in config_table:
            if not isinstance(config_table["tls"], dict):
                raise MalformedConfig(f"{dotted(table)}.configs.\"{host}\".tls is not a table")
            settings.tls[host] = dict(config_table["tls"])
        if "auth" in config_table:
            settings.auth_hosts.append(host)
    settings.auths = list(_mapping(registry, "auths", table))
    return settings


def _mapping(registry: dict[str, Any], key: str, table: tuple[str, ...]) -> dict[str, Any]:
    value = registry.get(key, {})
    if not isinstance(value, dict):
        raise MalformedConfig(f"{dotted(table)}.{key} is not a table")
    return value


def doctor_report(text: str | None, source: str) -> tuple[bool, str]:
    """(ok, detail) for `doctor`: deprecated mirror/TLS settings are not ok (containerd 2.4 is
    to drop them, and they cannot coexist with config_path); credentials kept in config.toml
    are reported but ok (nothing can move them to hosts.toml)."""
    if text is None:
        return True, f"{source} does not exist (containerd's defaults: no mirrors)"
    try:
        settings = registry_settings(text, source)
    except MalformedConfig as err:
        return False, str(err)
    if settings.movable:
        conflict = (" together with config_path: containerd refuses to load its CRI plugin"
                    if settings.config_path else "")
        moved = [d for d in settings.deprecated if ".auth" not in d]
        kept = [d for d in settings.deprecated if ".auth" in d]
        stays = f" ({'; '.join(kept)} stays: hosts.toml cannot hold credentials)" if kept else ""
        return False, (f"{source} (version {settings.version}) sets deprecated " + "; ".join(moved) + conflict
                       + f". Fix: nodemedic mirrors migrate --dry-run, then nodemedic mirrors migrate{stays}")
    if settings.auth_hosts or settings.auths:
        return True, (f"{source} keeps registry credentials in deprecated " + "; ".join(settings.deprecated)
                      + " (hosts.toml has no equivalent; move them to ImagePullSecrets)")
    where = f"config_path = {settings.config_path}" if settings.config_path else "no mirrors configured"
    return True, f"{source} (version {settings.version}): {where}"
