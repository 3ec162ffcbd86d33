"""containerd's config.toml: which version it is, and where the CRI settings live in it.

The same setting sits under different tables depending on the file's `version` key:

- version 1 (containerd 1.x; a file without `version`): plugins.cri.{containerd,cni,registry};
  the snapshotter is plugins.cri.containerd.snapshotter.
- version 2 (1.x; 2.x migrates it): the same under plugins."io.containerd.grpc.v1.cri".
- version 3 (2.x): runtimes and CNI under plugins."io.containerd.cri.v1.runtime".{containerd,cni};
  snapshotter and registry under plugins."io.containerd.cri.v1.images" (the grpc.v1.cri plugin
  keeps only the streaming server).

It is the file's version that decides, not the daemon's: containerd 2.x reads a version 2 file
(it logs "Configuration migrated from version 2"), and Debian's containerd 2.1.9 package still
ships one, so an edit goes where the file's own version puts it. A file without `version` is
version 1 to containerd (1.x and 2.x alike), where the CRI plugin is keyed by its short id "cri".

Reading uses tomllib (a plain dict); edits go through tomlkit round trips in the repairs, which
take the key paths from `layout()` here, so the operator's other lines and comments stay.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

KeyPath = tuple[str, ...]

CRI_V1 = "cri"  # version 1 keys plugins by their short id
CRI_V2 = "io.containerd.grpc.v1.cri"
CRI_RUNTIME_V3 = "io.containerd.cri.v1.runtime"
CRI_IMAGES_V3 = "io.containerd.cri.v1.images"

# What containerd uses when the file says nothing (identical in 1.6, 1.7 and 2.1 defaults).
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
DEFAULT_SNAPSHOTTER = "overlayfs"
DEFAULT_ROOT = "/var/lib/containerd"
DEFAULT_RUNTIME = "runc"

# An empty or missing file gets this version when a repair has to write one: both containerd
# 1.x and 2.x read it (2.x migrates it in memory).
NEW_FILE_VERSION = 2


class ContainerdConfigError(Exception):
    """config.toml is not valid TOML, or its version is not one containerd knows."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one config version keeps the CRI settings; every entry is a key path from the root."""

    version: int
    runtime: KeyPath  # the CRI runtime plugin's table (holds containerd.*, cni, ignore_deprecation_warnings)
    containerd: KeyPath  # default_runtime_name, runtimes.*
    cni: KeyPath  # conf_dir, bin_dir (v2) / bin_dirs (v3), max_conf_num
    images: KeyPath  # the table holding `snapshotter`
    registry: KeyPath  # config_path, and the deprecated mirrors/configs/auths
    runc_options: KeyPath = field(default=())

    def runtime_options(self, runtime: str = DEFAULT_RUNTIME) -> KeyPath:
        return (*self.containerd, "runtimes", runtime, "options")


def _legacy(plugin: str, version: int) -> Layout:
    base = ("plugins", plugin)
    return Layout(version=version, runtime=base, containerd=(*base, "containerd"), cni=(*base, "cni"),
                  images=(*base, "containerd"), registry=(*base, "registry"),
                  runc_options=(*base, "containerd", "runtimes", "runc", "options"))


_RUNTIME3 = ("plugins", CRI_RUNTIME_V3)
_IMAGES3 = ("plugins", CRI_IMAGES_V3)
LAYOUTS: dict[int, Layout] = {
    1: _legacy(CRI_V1, 1),
    2: _legacy(CRI_V2, 2),
    3: Layout(version=3, runtime=_RUNTIME3, containerd=(*_RUNTIME3, "containerd"), cni=(*_RUNTIME3, "cni"),
              images=_IMAGES3, registry=(*_IMAGES3, "registry"),
              runc_options=(*_RUNTIME3, "containerd", "runtimes", "runc", "options")),
}


def layout(version: int) -> Layout:
    try:
        return LAYOUTS[version]
    except KeyError:
        raise ContainerdConfigError(f"containerd config version {version} is not 1, 2 or 3") from None


def version_of(data: Any) -> int:
    """The `version` key as containerd reads it: absent (or 0) is version 1."""
    raw = data.get("version", 0) if hasattr(data, "get") else 0
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ContainerdConfigError(f"containerd config version {raw!r} is not an integer")
    return raw or 1


def lookup(data: Any, path: KeyPath, default: Any = None) -> Any:
    node = data
    for key in path:
        if not hasattr(node, "get"):
            return default
        node = node.get(key)
        if node is None:
            return default
    return node


@dataclass(frozen=True)
class ContainerdConfig:
    """One parsed config.toml (read only). An empty or missing file is an empty version-1 config,
    which for every setting here means containerd's default."""

    data: dict[str, Any]
    version: int
    path: str = ""

    @property
    def layout(self) -> Layout:
        return layout(self.version)

    def get(self, path: KeyPath, default: Any = None) -> Any:
        return lookup(self.data, path, default)

    @property
    def root(self) -> str:
        return str(self.data.get("root") or DEFAULT_ROOT)

    @property
    def default_runtime(self) -> str:
        return str(self.get((*self.layout.containerd, "default_runtime_name")) or DEFAULT_RUNTIME)

    def systemd_cgroup(self, runtime: str | None = None) -> bool | None:
        """SystemdCgroup of the default (or the named) runtime's options; None when unset."""
        value = self.get((*self.layout.runtime_options(runtime or self.default_runtime), "SystemdCgroup"))
        return value if isinstance(value, bool) else None

    @property
    def cni_conf_dir(self) -> str:
        return str(self.get((*self.layout.cni, "conf_dir")) or DEFAULT_CNI_CONF_DIR)

    @property
    def snapshotter(self) -> str:
        return str(self.get((*self.layout.images, "snapshotter")) or DEFAULT_SNAPSHOTTER)

    @property
    def snapshotter_root(self) -> str:
        """The directory ImageFsInfo names for the configured snapshotter (containerd's
        <root>/io.containerd.snapshotter.v1.<name>)."""
        return f"{self.root.rstrip('/')}/io.containerd.snapshotter.v1.{self.snapshotter}"

    @property
    def registry_config_path(self) -> str:
        return str(self.get((*self.layout.registry, "config_path")) or "")

    @property
    def registry_mirrors(self) -> dict[str, Any]:
        """The deprecated inline mirrors (`registry.mirrors`), host → table; {} when none."""
        mirrors = self.get((*self.layout.registry, "mirrors"), {})
        return dict(mirrors) if isinstance(mirrors, dict) else {}


def parse(text: str, path: str = "") -> ContainerdConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ContainerdConfigError(f"{path or 'config.toml'}: {err}") from err
    version = version_of(data)
    layout(version)  # refuse an unknown version here, not at first use
    return ContainerdConfig(data, version, path)


def load(path: Path) -> ContainerdConfig:
    """The config at `path`; a missing file is containerd's defaults (it runs without one)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise ContainerdConfigError(f"{path}: {err.strerror}") from err
    return parse(text, str(path))


# ---- round-trip edits (tomlkit) -------------------------------------------------------------------


def edit_version(document: tomlkit.TOMLDocument) -> int:
    """The version an edit must write for: the file's own; an empty file becomes NEW_FILE_VERSION
    (the `version` key is added, or containerd 1.x would read the new tables as version 1)."""
    if not document.get("version") and not any(key != "version" for key in document):
        document["version"] = NEW_FILE_VERSION
    return version_of(document)


def table_at(document: tomlkit.TOMLDocument, path: KeyPath) -> Table | tomlkit.TOMLDocument:
    """The table at `path`, created (as super tables, so no empty headers appear) where missing."""
    table: Any = document
    for key in path:
        if key not in table:
            table[key] = tomlkit.table(is_super_table=True)
        table = table[key]
        if not isinstance(table, Table | tomlkit.TOMLDocument):
            raise ContainerdConfigError(f"{'.'.join(path)}: {key} is not a table")
    return table
