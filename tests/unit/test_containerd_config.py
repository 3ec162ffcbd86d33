"""containerd's config.toml in versions 1, 2 and 3: where the CRI settings are read and written.

The texts in containerd_configs/ are what containerd 1.6.20, 1.7.24 and 2.1.9 write themselves
(`containerd config default`) and what Debian's package ships; see the README there.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from nodemedic.probes import containerd_config as cc
from nodemedic.repairs.cgroup import set_systemd_cgroup

CONFIGS = Path(__file__).parent / "containerd_configs"
DEFAULTS = {"1.6.20": 2, "1.7.24": 2, "2.1.9": 3}


@pytest.mark.parametrize(("release", "version"), DEFAULTS.items())
def test_real_defaults_are_read_where_each_version_keeps_them(release: str, version: int) -> None:
    config = cc.load(CONFIGS / f"default-{release}.toml")
    assert config.version == version
    # Every table the layout names exists in containerd's own default text: a wrong plugin
    # name or nesting would return None here, not a default.
    for path in (config.layout.runtime, config.layout.containerd, config.layout.cni, config.layout.images,
                 config.layout.registry, config.layout.runc_options):
        assert isinstance(config.get(path), dict), f"{release}: no table at {'.'.join(path)}"
    assert config.get((*config.layout.runc_options, "SystemdCgroup")) is False
    assert config.systemd_cgroup() is False
    assert config.get((*config.layout.cni, "conf_dir")) == "/etc/cni/net.d"
    assert config.get((*config.layout.images, "snapshotter")) == "overlayfs"
    assert config.get((*config.layout.registry, "config_path")) == ""
    assert config.default_runtime == "runc"
    assert config.snapshotter_root == "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"


def test_v3_keeps_nothing_of_the_cri_under_the_v2_plugin_name() -> None:
    data = tomllib.loads((CONFIGS / "default-2.1.9.toml").read_text())
    cri = data["plugins"]["io.containerd.grpc.v1.cri"]  # 2.x keeps only the streaming server here
    assert "containerd" not in cri and "cni" not in cri and "registry" not in cri
    assert cc.layout(3).runc_options == ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes",
                                         "runc", "options")
    assert cc.layout(3).cni == ("plugins", "io.containerd.cri.v1.runtime", "cni")
    assert cc.layout(3).images == ("plugins", "io.containerd.cri.v1.images")


def test_debian_shipped_config_is_version_2_even_with_containerd_2() -> None:
    # Debian's 2.1.9 package ships a version 2 file: 2.x migrates it in memory, and the edits
    # must go where version 2 puts them.
    config = cc.load(CONFIGS / "debian-2.1.9+ds1-5.toml")
    assert config.version == 2
    assert config.cni_conf_dir == "/etc/cni/net.d"
    assert config.systemd_cgroup() is None and config.snapshotter == "overlayfs"


def test_missing_file_and_missing_version_are_version_1_defaults(tmp_path: Path) -> None:
    config = cc.load(tmp_path / "absent.toml")
    assert config.version == 1 and config.cni_conf_dir == "/etc/cni/net.d" and config.root == "/var/lib/containerd"
    v1 = cc.parse('root = "/data/ctd"\n[plugins.cri.cni]\nconf_dir = "/etc/cni/custom"\n'
                  '[plugins.cri.containerd]\nsnapshotter = "native"\n')
    assert v1.version == 1 and v1.cni_conf_dir == "/etc/cni/custom" and v1.snapshotter == "native"
    assert v1.snapshotter_root == "/data/ctd/io.containerd.snapshotter.v1.native"


def test_operator_values_in_v3() -> None:
    text = (CONFIGS / "default-2.1.9.toml").read_text()
    text = text.replace("SystemdCgroup = false", "SystemdCgroup = true")
    text = text.replace("conf_dir = '/etc/cni/net.d'", "conf_dir = '/etc/cni/other'")
    text = text.replace("config_path = ''\n\n    [plugins.'io.containerd.cri.v1.images'.image_decryption]",
                        "config_path = '/etc/containerd/certs.d'\n\n"
                        "    [plugins.'io.containerd.cri.v1.images'.image_decryption]")
    config = cc.parse(text)
    assert config.systemd_cgroup() is True
    assert config.cni_conf_dir == "/etc/cni/other"
    assert config.registry_config_path == "/etc/containerd/certs.d"


def test_deprecated_mirrors_are_found_in_v2() -> None:
    config = cc.parse('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
                      'endpoint = ["https://mirror.example"]\n')
    assert config.registry_mirrors == {"docker.io": {"endpoint": ["https://mirror.example"]}}


@pytest.mark.parametrize("text", ['version = "2"\n', "version = 4\n", "version = true\n", "[plugins\n"])
def test_bad_files_are_refused(text: str) -> None:
    with pytest.raises(cc.ContainerdConfigError):
        cc.parse(text)


@pytest.mark.parametrize("release", DEFAULTS)
def test_systemd_cgroup_edit_of_each_real_default(release: str) -> None:
    text = (CONFIGS / f"default-{release}.toml").read_text()
    new, changed = set_systemd_cgroup(text)
    assert changed
    # exactly one line differs: the flag, where the file's version keeps it
    diff = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert [(a.strip(), b.strip()) for a, b in diff] == [("SystemdCgroup = false", "SystemdCgroup = true")]
    assert cc.parse(new).systemd_cgroup() is True
    assert set_systemd_cgroup(new) == (new, False)


def test_systemd_cgroup_edit_of_debian_v2_file_adds_runc_options_under_v2() -> None:
    text = (CONFIGS / "debian-2.1.9+ds1-5.toml").read_text()
    new, changed = set_systemd_cgroup(text)
    assert changed
    kept = iter(new.splitlines())
    assert all(line in kept for line in text.splitlines()), "an operator line was lost or reordered"
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]' in new
    assert cc.parse(new).systemd_cgroup() is True and cc.parse(new).cni_conf_dir == "/etc/cni/net.d"


def test_systemd_cgroup_edit_of_an_empty_file_writes_a_version() -> None:
    # Without `version`, containerd reads the file as version 1 and would ignore v2 tables.
    new, changed = set_systemd_cgroup("")
    assert changed and cc.parse(new).version == cc.NEW_FILE_VERSION
    assert cc.parse(new).systemd_cgroup() is True


def test_systemd_cgroup_edit_of_a_versionless_file_uses_the_v1_plugin_id() -> None:
    new, _ = set_systemd_cgroup('root = "/data/containerd"\n')
    assert "[plugins.cri.containerd.runtimes.runc.options]" in new and "version" not in new
    assert cc.parse(new).systemd_cgroup() is True
