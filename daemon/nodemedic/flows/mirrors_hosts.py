"""The hosts.toml files that do what config.toml's deprecated `mirrors` and `configs.*.tls` did.

How containerd's CRI used the old settings (containerd 1.x pkg/cri, kept for version 2 files in
2.x), and so what each file must say to behave the same:

- a registry's endpoints are tried in order, then its default host (https://<registry>;
  registry-1.docker.io for docker.io; plain http for localhost), which is not added twice. Each
  endpoint may resolve tags and pull: `capabilities = ["pull", "resolve"]`, `server` = that
  default host;
- `mirrors."*"` serves every registry without a mirror entry of its own: the `_default`
  namespace; and a registry that gets a file of its own (for its TLS) carries those endpoints too,
  or it would lose them;
- an endpoint's path is its API root as written; hosts.toml appends /v2 unless the path ends in
  /v2 or `override_path = true`;
- an endpoint without a scheme is https (http for localhost);
- `configs.<host>.tls` applies to every connection to <host>: to a mirror entry with that host,
  to the server of a namespace whose default host it is, and to pulls from <host> itself.
  `ca_file` → `ca`, `cert_file`/`key_file` → `client = [[cert, key]]`, `insecure_skip_verify` →
  `skip_verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import tomlkit

from nodemedic.flows.mirrors_config import TLS_FIELDS, MalformedConfig, RegistrySettings

DEFAULT_NAMESPACE = "_default"
HEADER = ("written by `nodemedic mirrors migrate` from {source}\n"
          "({table}.mirrors / .configs); the old file is kept as {backup}")
_LOCAL = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass(frozen=True)
class HostsFile:
    namespace: str  # directory name under config_path: a registry host[:port], or _default
    text: str

    @property
    def relpath(self) -> str:
        return f"{self.namespace}/hosts.toml"


def _is_local(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return name in _LOCAL or name.startswith("127.")


def default_server(registry: str) -> str:
    if registry == "docker.io":
        return "https://registry-1.docker.io"
    return f"{'http' if _is_local(registry) else 'https'}://{registry}"


def normalize_endpoint(endpoint: str) -> str:
    text = endpoint.strip()
    if "://" not in text:
        host = text.split("/", 1)[0]
        text = f"{'http' if _is_local(host) else 'https'}://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise MalformedConfig(f"mirror endpoint {endpoint!r} is not an http(s) URL with a host")
    return text.rstrip("/") if parts.path in ("", "/") else text


def _tls_fields(host: str, tls: dict[str, dict[str, Any]]) -> dict[str, Any]:
    settings = tls.get(host)
    if not settings:
        return {}
    unknown = sorted(set(settings) - set(TLS_FIELDS))
    if unknown:
        raise MalformedConfig(f"configs.\"{host}\".tls has {', '.join(unknown)}, which hosts.toml cannot express")
    out: dict[str, Any] = {}
    if settings.get("ca_file"):
        out["ca"] = str(settings["ca_file"])
    cert, key = settings.get("cert_file"), settings.get("key_file")
    if key and not cert:
        raise MalformedConfig(f"configs.\"{host}\".tls has key_file without cert_file")
    if cert:
        out["client"] = [[str(cert), str(key)]] if key else str(cert)
    if settings.get("insecure_skip_verify") is True:
        out["skip_verify"] = True
    return out


def _host_entry(endpoint: str, tls: dict[str, dict[str, Any]]) -> dict[str, Any]:
    parts = urlsplit(endpoint)
    entry: dict[str, Any] = {"capabilities": ["pull", "resolve"]}
    path = parts.path.rstrip("/")
    if path and not path.endswith("/v2"):
        entry["override_path"] = True  # the old endpoint's path was the API root as written
    entry.update(_tls_fields(parts.netloc, tls))
    return entry


def namespaces(settings: RegistrySettings) -> list[str]:
    """Every directory the migration writes, in a stable order."""
    names = {m for m in settings.mirrors if m != "*"} | {h for h in settings.tls if h != "*"}
    ordered = sorted(names)
    return ordered + [DEFAULT_NAMESPACE] if "*" in settings.mirrors else ordered


def content(settings: RegistrySettings, namespace: str) -> dict[str, Any]:
    """What one hosts.toml says, as plain data."""
    data: dict[str, Any] = {}
    fallback = settings.mirrors.get("*", [])
    endpoints = [normalize_endpoint(e) for e in settings.mirrors.get(namespace, fallback)]
    if namespace != DEFAULT_NAMESPACE:
        server = default_server(namespace)
        data["server"] = server
        data.update(_tls_fields(urlsplit(server).netloc, settings.tls))
        while endpoints and endpoints[-1] == server:  # the old list ended with the default host itself
            endpoints.pop()
    hosts: dict[str, Any] = {}
    for endpoint in endpoints:
        hosts.setdefault(endpoint, _host_entry(endpoint, settings.tls))
    if hosts:
        data["host"] = hosts
    return data


def render(data: dict[str, Any], header: str) -> str:
    document = tomlkit.document()
    for line in header.splitlines():
        document.add(tomlkit.comment(line))
    for key, value in data.items():
        if key != "host":
            document.add(key, value)
    if "host" in data:
        hosts = tomlkit.table(is_super_table=True)
        for endpoint, entry in data["host"].items():
            table = tomlkit.table()
            for key, value in entry.items():
                table.add(key, value)
            hosts.add(endpoint, table)
        document.add(tomlkit.nl())
        document.add("host", hosts)
    return tomlkit.dumps(document)


def hosts_files(settings: RegistrySettings, header: str) -> list[HostsFile]:
    files = []
    for namespace in namespaces(settings):
        data = content(settings, namespace)
        text = render(data, header)
        if tomlkit.parse(text).unwrap() != data:  # what is written must read back as meant
            raise MalformedConfig(f"hosts.toml for {namespace} does not read back as generated")
        files.append(HostsFile(namespace, text))
    return files
