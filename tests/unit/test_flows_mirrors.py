"""`nodemedic mirrors migrate` and doctor's registry check on real config texts: containerd
1.6.20's and 2.1.9's own `containerd config default` (versions 2 and 3) and Debian's shipped
version 2 file (tests/unit/containerd_configs/), each grown by an operator with deprecated mirrors."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import io
import json
import os
import tomllib
from pathlib import Path

import pytest

from nodemedic.config import load_config
from nodemedic.flows import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from nodemedic.flows import mirrors as flow
from nodemedic.flows.mirrors_config import MalformedConfig, doctor_report, registry_settings
from nodemedic.flows.mirrors_cri import registry_of
from nodemedic.flows.mirrors_edit import dropped_comments, migrate_text
from nodemedic.flows.mirrors_hosts import content, hosts_files, namespaces
from nodemedic.flows.report import FlowReport
from nodemedic.hostroot import HostRoot
from nodemedic.probes.cri import CriCallFailed, CriStatus

CONFIGS = Path(__file__).parent / "containerd_configs"
CERTS = "/etc/containerd/certs.d"
V2_MIRROR = """\
        # our pull-through cache for Docker Hub (OPS-1234)
        [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
          endpoint = ["https://mirror.corp.example:5000", "https://registry-1.docker.io"]
"""
V2_CONFIGS = """\
        [plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.corp.example:5000".tls]
          ca_file = "/etc/pki/corp-ca.pem"
        [plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.corp.example:5000".auth]
          username = "puller"
          password = "s3cret"
"""
V3_MIRROR = """\
      # the registry cache (OPS-1234)
      [plugins.'io.containerd.cri.v1.images'.registry.mirrors.'registry.k8s.io']
        endpoint = ['https://cache.corp.example/k8s']
"""


def default_v2_with_mirrors() -> str:
    """containerd 1.6.20's default (version 2, with its empty auths/configs/headers/mirrors
    tables) where an operator put a Docker Hub mirror with a CA and credentials."""
    text = (CONFIGS / "default-1.6.20.toml").read_text()
    text = text.replace('[plugins."io.containerd.grpc.v1.cri".registry.configs]\n',
                        '[plugins."io.containerd.grpc.v1.cri".registry.configs]\n' + V2_CONFIGS)
    text = text.replace('[plugins."io.containerd.grpc.v1.cri".registry.mirrors]\n',
                        '[plugins."io.containerd.grpc.v1.cri".registry.mirrors]\n' + V2_MIRROR)
    assert V2_MIRROR in text and V2_CONFIGS in text
    return "# node config, kept by hand\n" + text


def default_v3_with_mirrors() -> str:
    """containerd 2.1.9's default (version 3) with a mirror for registry.k8s.io under a path."""
    text = (CONFIGS / "default-2.1.9.toml").read_text()
    anchor = "    [plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = ''\n"
    assert anchor in text
    return text.replace(anchor, anchor + "\n" + V3_MIRROR)


def changed_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.ndiff(old.splitlines(), new.splitlines()))
    return [d[2:] for d in diff if d.startswith("- ")], [d[2:] for d in diff if d.startswith("+ ")]


# ---- reading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default-1.6.20.toml", "default-1.7.24.toml", "default-2.1.9.toml",
                                  "debian-2.1.9+ds1-5.toml"])
def test_containerds_own_defaults_have_nothing_to_migrate(name: str) -> None:
    text = (CONFIGS / name).read_text()
    settings = registry_settings(text)
    assert not settings.movable and not settings.deprecated
    assert doctor_report(text, "/etc/containerd/config.toml")[0]


def test_version_2_registry_is_read_under_the_grpc_cri_plugin() -> None:
    settings = registry_settings(default_v2_with_mirrors())
    assert settings.version == 2
    assert settings.table == ("plugins", "io.containerd.grpc.v1.cri", "registry")
    assert settings.mirrors == {"docker.io": ["https://mirror.corp.example:5000", "https://registry-1.docker.io"]}
    assert settings.tls == {"mirror.corp.example:5000": {"ca_file": "/etc/pki/corp-ca.pem"}}
    assert settings.auth_hosts == ["mirror.corp.example:5000"]


def test_version_3_registry_is_read_under_the_images_plugin() -> None:
    settings = registry_settings(default_v3_with_mirrors())
    assert settings.version == 3
    assert settings.table == ("plugins", "io.containerd.cri.v1.images", "registry")
    assert settings.mirrors == {"registry.k8s.io": ["https://cache.corp.example/k8s"]}


def test_v2_tables_in_a_version_3_file_are_not_what_containerd_reads() -> None:
    text = 'version = 3\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["https://m"]\n'
    assert not registry_settings(text).movable


def test_malformed_and_unknown_versions_are_malformed() -> None:
    with pytest.raises(MalformedConfig, match="not valid TOML"):
        registry_settings(default_v2_with_mirrors().replace('"io.containerd.grpc.v1.cri".cni]', '"io.contai'))
    with pytest.raises(MalformedConfig, match="version"):
        registry_settings("version = 7\n")
    with pytest.raises(MalformedConfig, match="endpoint"):
        registry_settings('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."x"]\nendpoint = "y"\n')


# ---- doctor ---------------------------------------------------------------------------------------


def test_doctor_reports_deprecated_mirrors_in_both_versions() -> None:
    ok, detail = doctor_report(default_v2_with_mirrors(), "/etc/containerd/config.toml")
    assert not ok
    assert 'plugins."io.containerd.grpc.v1.cri".registry.mirrors (docker.io)' in detail
    assert "configs.*.tls (mirror.corp.example:5000)" in detail and "nodemedic mirrors migrate" in detail
    ok, detail = doctor_report(default_v3_with_mirrors(), "/etc/containerd/config.toml")
    assert not ok and "(version 3)" in detail
    assert 'plugins."io.containerd.cri.v1.images".registry.mirrors (registry.k8s.io)' in detail


def test_doctor_names_the_mirrors_with_config_path_conflict_and_keeps_credentials_ok() -> None:
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/etc/containerd/certs.d"\n' \
           '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["https://m"]\n'
    ok, detail = doctor_report(text, "config.toml")
    assert not ok and "containerd refuses to load its CRI plugin" in detail
    auth_only = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".auth]\nusername = "u"\n'
    ok, detail = doctor_report(auth_only, "config.toml")
    assert ok and "configs.*.auth (r.example)" in detail and "ImagePullSecrets" in detail
    assert doctor_report(None, "config.toml")[0]
    assert not doctor_report("version = [", "config.toml")[0]


# ---- config.toml round trip -----------------------------------------------------------------------


def test_v2_edit_removes_only_the_moved_tables_and_keeps_every_other_line() -> None:
    old = default_v2_with_mirrors()
    settings = registry_settings(old)
    new = migrate_text(old, settings, CERTS)
    removed, added = changed_lines(old, new)
    # containerd's own empty `mirrors` and `configs` tables stay, and so does the operator's
    # comment in them; the mirror entry, the TLS table and the blank line ending them go.
    assert removed == ['      config_path = ""', *V2_CONFIGS.splitlines()[:2], *V2_MIRROR.splitlines()[1:], ""]
    assert added == [f'      config_path = "{CERTS}"']
    assert dropped_comments(old, new) == []
    data = tomllib.loads(new)["plugins"]["io.containerd.grpc.v1.cri"]["registry"]
    assert data == {"config_path": CERTS, "auths": {}, "headers": {}, "mirrors": {},
                    "configs": {"mirror.corp.example:5000": {"auth": {"username": "puller", "password": "s3cret"}}}}


def test_v3_edit_replaces_config_path_in_place_in_the_files_quotes() -> None:
    old = default_v3_with_mirrors()
    new = migrate_text(old, registry_settings(old), CERTS)
    removed, added = changed_lines(old, new)
    # The comment above the mirror's header belongs to the registry table in TOML: it stays.
    assert removed == ["      config_path = ''", *V3_MIRROR.splitlines()[1:], ""]
    assert added == [f"      config_path = '{CERTS}'"]
    assert V3_MIRROR.splitlines()[0] in new
    assert tomllib.loads(new)["plugins"]["io.containerd.cri.v1.images"]["registry"] == {"config_path": CERTS}


def test_debian_version_2_file_for_containerd_2_is_edited_where_it_says() -> None:
    # Debian's containerd 2.1.9 ships a version 2 file; containerd migrates it in memory, so the
    # edit goes where the file's own version puts the registry.
    old = (CONFIGS / "debian-2.1.9+ds1-5.toml").read_text() + (
        '  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n    endpoint = ["https://m.example"]\n')
    new = migrate_text(old, registry_settings(old), CERTS)
    assert old.startswith(new.split("config_path")[0].rstrip(" [\n").rsplit("\n", 1)[0])
    data = tomllib.loads(new)
    assert data["plugins"]["io.containerd.grpc.v1.cri"]["registry"] == {"config_path": CERTS}
    cni = data["plugins"]["io.containerd.grpc.v1.cri"]["cni"]
    assert cni == {"bin_dir": "/usr/lib/cni", "conf_dir": "/etc/cni/net.d"}
    assert "io.containerd.cri.v1.images" not in data["plugins"]


@pytest.mark.parametrize("release", ["1.6.20", "2.1.9"])
def test_a_mirror_appended_at_the_end_of_containerds_default(release: str) -> None:
    # The registry table is then written in two places (tomlkit: an out-of-order table).
    default = (CONFIGS / f"default-{release}.toml").read_text()
    plugin = "'io.containerd.cri.v1.images'" if release.startswith("2.") else '"io.containerd.grpc.v1.cri"'
    old = default + f'\n[plugins.{plugin}.registry.mirrors."r.example"]\n  endpoint = ["http://localhost:5000"]\n'
    new = migrate_text(old, registry_settings(old), CERTS)
    removed, added = changed_lines(old, new)
    assert [line for line in removed if line and "config_path" not in line] == old.splitlines()[-2:]
    assert [line.strip() for line in added] in ([f'config_path = "{CERTS}"'], [f"config_path = '{CERTS}'"])
    expected = tomllib.loads(default)
    expected["plugins"][plugin.strip("'\"")]["registry"]["config_path"] = CERTS
    assert tomllib.loads(new) == expected


def test_inline_and_dotted_forms_keep_indentation_and_other_keys() -> None:
    inline = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
              '  mirrors = { "docker.io" = { endpoint = ["https://m"] } }\n  headers = { X-Team = ["nodes"] }\n')
    assert migrate_text(inline, registry_settings(inline), CERTS).endswith(
        '  headers = { X-Team = ["nodes"] }\n  config_path = "/etc/containerd/certs.d"\n')
    dotted = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  mirrors."docker.io".endpoint = ["https://m"]\n'
              '  configs."m".tls.insecure_skip_verify = true\n  configs."m".auth.username = "u"\n')
    new = migrate_text(dotted, registry_settings(dotted), CERTS)
    assert '  configs."m".auth.username = "u"\n' in new and "  config_path = " in new and "tls" not in new


# ---- hosts.toml -----------------------------------------------------------------------------------


def test_hosts_toml_does_what_the_old_mirror_and_tls_did() -> None:
    settings = registry_settings(default_v2_with_mirrors())
    assert namespaces(settings) == ["docker.io", "mirror.corp.example:5000"]
    # The upstream that ended the old endpoint list is the server; the mirror may resolve, with its CA.
    assert content(settings, "docker.io") == {
        "server": "https://registry-1.docker.io",
        "host": {"https://mirror.corp.example:5000": {"capabilities": ["pull", "resolve"],
                                                      "ca": "/etc/pki/corp-ca.pem"}}}
    # Pulls from the mirror host itself kept its CA too.
    assert content(settings, "mirror.corp.example:5000") == {"server": "https://mirror.corp.example:5000",
                                                             "ca": "/etc/pki/corp-ca.pem"}
    files = hosts_files(settings, "written by a test")
    assert [f.relpath for f in files] == ["docker.io/hosts.toml", "mirror.corp.example:5000/hosts.toml"]
    assert files[0].text.startswith("# written by a test\n")
    assert tomllib.loads(files[0].text) == content(settings, "docker.io")


def test_endpoint_paths_schemes_wildcards_and_client_certificates() -> None:
    text = """version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.k8s.io"]
  endpoint = ["https://cache.example/k8s", "cache2.example/v2", "localhost:5000"]
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."*"]
  endpoint = ["https://all.example"]
[plugins."io.containerd.grpc.v1.cri".registry.configs."secure.example".tls]
  cert_file = "/etc/pki/c.pem"
  key_file = "/etc/pki/c.key"
  insecure_skip_verify = true
"""
    settings = registry_settings(text)
    assert namespaces(settings) == ["registry.k8s.io", "secure.example", "_default"]
    hosts = content(settings, "registry.k8s.io")["host"]
    # A path was the API root as written: hosts.toml must not append /v2 to it.
    assert hosts["https://cache.example/k8s"] == {"capabilities": ["pull", "resolve"], "override_path": True}
    assert hosts["https://cache2.example/v2"] == {"capabilities": ["pull", "resolve"]}
    assert "http://localhost:5000" in hosts  # no scheme: http for localhost, https elsewhere
    # A registry that gets a file for its TLS keeps the "*" mirrors it had.
    assert content(settings, "secure.example") == {
        "server": "https://secure.example", "client": [["/etc/pki/c.pem", "/etc/pki/c.key"]], "skip_verify": True,
        "host": {"https://all.example": {"capabilities": ["pull", "resolve"]}}}
    assert content(settings, "_default") == {"host": {"https://all.example": {"capabilities": ["pull", "resolve"]}}}


def test_tls_that_hosts_toml_cannot_express_is_malformed() -> None:
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.configs."r".tls]\nciphers = ["x"]\n'
    with pytest.raises(MalformedConfig, match="hosts.toml cannot express"):
        hosts_files(registry_settings(text), "h")


def test_credentials_are_masked_in_every_form() -> None:
    lines = flow.config_diff('a = 1\n', 'a = 2\n  password = "p1"\nconfigs."r".auth.password = "p2"\n'
                             'auth = { username = "u", password = "p3" }\nidentitytoken = "p4"\n', "c")
    assert not [line for line in lines if any(f"p{i}" in line for i in range(1, 5))], lines


def test_registry_of_image_references() -> None:
    assert registry_of("registry.example.invalid/nmtest/x:1") == "registry.example.invalid"
    assert registry_of("docker.io/library/busybox:latest") == "docker.io"
    assert registry_of("busybox") == "docker.io"
    assert registry_of("localhost:5000/a@sha256:00") == "localhost:5000"


# ---- the flow: refusals change nothing, a failure rolls back ----------------------------------------


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest.update(f"{path.relative_to(root)} {st.st_mode:o}".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def node_root(tmp_path: Path) -> HostRoot:
    (tmp_path / "etc/containerd").mkdir(parents=True)
    (tmp_path / "etc/containerd/config.toml").write_text(default_v2_with_mirrors())
    return HostRoot(tmp_path)


def run_migrate(root: HostRoot, dry_run: bool = True) -> tuple[int, str]:
    out = io.StringIO()
    settings = load_config(root, lambda _m: None).settings
    code = asyncio.run(flow.migrate(settings, root, dry_run, FlowReport("mirrors", out=out)))
    return code, out.getvalue()


def test_dry_run_prints_the_plan_masks_credentials_and_changes_nothing(node_root: HostRoot,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_hash(node_root.base)
    code, out = run_migrate(node_root)
    out += capsys.readouterr().out
    assert code == EXIT_OK
    assert f"write {CERTS}/docker.io/hosts.toml" in out and f"write {CERTS}/mirror.corp.example:5000/hosts.toml" in out
    assert 'password = "***"' in out and "s3cret" not in out
    assert "kept in config.toml" in out and "configs.*.auth (mirror.corp.example:5000)" in out
    assert tree_hash(node_root.base) == before


@pytest.mark.parametrize("breakage", ["malformed", "conflicting-hosts", "docker-certs", "port-dir", "version-1"])
def test_refusals_change_nothing_byte_for_byte(node_root: HostRoot, breakage: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = node_root.base
    config = base / "etc/containerd/config.toml"
    certs = base / "etc/containerd/certs.d"
    expected = {"malformed": "is not valid TOML", "conflicting-hosts": "exists with other settings",
                "docker-certs": "Docker-style certificate", "port-dir": "containerd reads it before",
                "version-1": "config version 1"}[breakage]
    if breakage == "malformed":
        config.write_text(config.read_text().replace('"io.containerd.grpc.v1.cri".cni]', '"io.contai'))
    elif breakage == "conflicting-hosts":
        (certs / "docker.io").mkdir(parents=True)
        (certs / "docker.io/hosts.toml").write_text('server = "https://registry-1.docker.io"\n'
                                                    '[host."https://other.example"]\ncapabilities = ["pull"]\n')
    elif breakage == "docker-certs":
        (certs / "docker.io").mkdir(parents=True)
        (certs / "docker.io/ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    elif breakage == "port-dir":
        (certs / "mirror.corp.example_5000_").mkdir(parents=True)
    else:
        config.write_text('[plugins.cri.registry.mirrors."docker.io"]\nendpoint = ["https://m"]\n')
    before = tree_hash(base)
    for dry_run in (True, False):
        code, out = run_migrate(node_root, dry_run)
        out += capsys.readouterr().err
        assert code == EXIT_REFUSED, out
        if not dry_run:
            assert "--root is for --dry-run only" in out
        else:
            assert expected in out, out
        assert tree_hash(base) == before


def test_an_identical_hosts_toml_already_there_is_kept(node_root: HostRoot) -> None:
    settings = load_config(node_root, lambda _m: None).settings
    guard = flow.Guard.from_paths([])
    first = flow.make_plan(settings, node_root, guard)
    assert first is not None and len(first.files) == 2
    target = first.hosts_path(first.files[0])
    target.parent.mkdir(parents=True)
    target.write_text(first.files[0].text.replace("# written", "# copied by hand, written"))
    again = flow.make_plan(settings, node_root, guard)
    assert again is not None and [h.namespace for h in again.present] == ["docker.io"]
    assert [h.namespace for h in again.files] == ["mirror.corp.example:5000"]


class BusStandIn:
    """Records the unit jobs (no systemd in a unit test)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str]] = []

    async def connect(self, units: object, on_change: object) -> None:
        pass

    async def job(self, verb: str, unit: str, timeout: float) -> None:
        self.jobs.append((verb, unit))

    def close(self) -> None:
        pass


def cri_stand_in(pulls: list[str], fail_after_restart: bool, bus: BusStandIn) -> type:
    """An in-process CRI answering what the flow asks; the pull fails once containerd was restarted."""

    class CriStandIn:
        def __init__(self, socket: str) -> None:
            pass

        async def __aenter__(self) -> CriStandIn:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

        async def image_tags(self) -> list[str]:
            return ["docker.io/library/busybox:1.36"]

        async def pull(self, ref: str, timeout: float) -> str:
            pulls.append(ref)
            if fail_after_restart and bus.jobs:
                raise CriCallFailed("NOT_FOUND", "failed to resolve reference")
            return "sha256:00"

        async def status(self) -> CriStatus:
            return CriStatus(True, "", "", True, "", "")

        async def deprecations(self) -> dict[str, str] | None:
            return None  # containerd 1.x

        async def status_info(self) -> dict[str, str]:
            return {"config": json.dumps({"registry": {"configPath": CERTS, "mirrors": None}})}

    return CriStandIn


@pytest.mark.parametrize("pull_fails", [False, True])
def test_migration_applies_or_rolls_back_to_the_same_bytes(node_root: HostRoot, pull_fails: bool) -> None:
    base = node_root.base
    config = base / "etc/containerd/config.toml"
    old = config.read_bytes()
    settings = load_config(node_root, lambda _m: None).settings
    plan = flow.make_plan(settings, node_root, flow.Guard.from_paths([]))
    assert plan is not None
    report = FlowReport("mirrors", out=io.StringIO())
    migrate = flow.Migrate(settings, node_root, flow.Guard.from_paths([]), plan, report)
    bus, pulls = BusStandIn(), []
    migrate.bus = bus  # type: ignore[assignment]
    migrate.cri_class = cri_stand_in(pulls, pull_fails, bus)
    code = asyncio.run(migrate.run(skip_pull=False))
    # The image of the mirrored registry found on the node, pulled before and after.
    assert pulls == ["docker.io/library/busybox:1.36"] * 2
    assert plan.backup.read_bytes() == old  # the backup stays either way
    if not pull_fails:
        assert code == EXIT_OK
        assert bus.jobs == [("RestartUnit", "containerd.service")]
        registry = tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["registry"]
        assert registry["config_path"] == CERTS
        assert (base / "etc/containerd/certs.d/docker.io/hosts.toml").read_text() == plan.files[0].text
        assert os.stat(config).st_mode & 0o777 == 0o644
    else:
        assert code == EXIT_FAILED
        assert bus.jobs == [("RestartUnit", "containerd.service")] * 2  # again on the old config
        assert config.read_bytes() == old
        assert not (base / "etc/containerd/certs.d").exists()
