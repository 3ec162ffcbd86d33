"""`nodemedic mirrors migrate` in a real node (issue 13, item 4): an operator's config.toml with
comments and a deprecated `registry.mirrors` entry for a registry name that never resolves
(`registry.example.invalid`, RFC 6761), mirrored to the registry stand-in on localhost:5000.

What proves the pull went through the mirror, and through hosts.toml: the upstream cannot answer
at all (the node has only `lo`, and the name does not exist), the stand-in logs every request
(containerd names the registry it stands in for with `?ns=registry.example.invalid`, with the old
mirrors and with hosts.toml alike), containerd no longer runs with `mirrors` (no deprecation line
at its restart, CRI Status shows configPath and no mirrors), and with hosts.toml moved away for
a moment the same pull fails.

And the refusals: a malformed config.toml, and a hosts.toml already there with other settings,
leave /etc/containerd byte for byte as it was and containerd untouched (same main PID).
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nodemedic.journal import Kind
from tests.node.test_ladders_ingest_pull import cri_images
from tests.node.testbed import images
from tests.node.testbed.node import Node
from tests.node.testbed.registry import HOST, Registry

pytestmark = [pytest.mark.node, pytest.mark.stacks("bookworm", "trixie", "trixie-containerd2")]

CONFIG = "/etc/containerd/config.toml"
CERTS = "/etc/containerd/certs.d"
UPSTREAM = "registry.example.invalid"
NAMESPACE = f"{CERTS}/{UPSTREAM}"
IMAGE = f"{UPSTREAM}/nmtest/mirror-standin:1"
# Debian's stock config.toml, as an operator grew it: comments everywhere, a mirror in the old
# style (with a comment of its own, inside the table that moves), credentials for the registry
# (which must stay: hosts.toml cannot hold them).
OPERATOR_CONFIG = f"""\
# containerd configuration for this node -- maintained by the platform team, edit with care.
version = 2

[plugins]
  # CRI: the kubelet talks to this plugin
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"  # Debian's CNI plugins
      conf_dir = "/etc/cni/net.d"
    # Registries: everything from {UPSTREAM} comes from the local pull-through cache.
    [plugins."io.containerd.grpc.v1.cri".registry]
      [plugins."io.containerd.grpc.v1.cri".registry.mirrors]
        [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{UPSTREAM}"]
          # the cache on this host (ticket OPS-1234)
          endpoint = ["http://{HOST}"]
      [plugins."io.containerd.grpc.v1.cri".registry.configs."{UPSTREAM}".auth]
        username = "robot"
        password = "not-a-real-secret"
  # optional plugins live here
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""
MOVED_COMMENT = "# the cache on this host (ticket OPS-1234)"


@dataclass(frozen=True)
class Bed:
    node: Node
    registry: Registry
    image: images.OciImage


def main_pid(node: Node) -> int:
    return node.unit_state("containerd.service").main_pid


def restart_containerd(node: Node) -> None:
    # The tests of one bed restart containerd many times within systemd's start limit (5 in 10 s);
    # these are the test's restarts, not nodemedic's, so they must not trip it (a CI run did).
    node.systemctl("reset-failed", "containerd.service", check=False)
    node.systemctl("restart", "containerd.service")
    node.wait_for(lambda: node.cri_status().runtime_ready, timeout=60, what="containerd back over CRI")


def migrate(node: Node, *args: str) -> tuple[int, str]:
    done = node.run(["nodemedic", "mirrors", "migrate", *args], check=False, timeout=600)
    return done.returncode, done.stdout + done.stderr


def text(node: Node, path: str) -> str:
    return node.read_file(path).decode()


def backups(node: Node) -> list[str]:
    return node.run(["find", "/etc/containerd", "-maxdepth", "1", "-name", "config.toml.nodemedic-*.bak"]
                    ).stdout.split()


def registry_finding(node: Node) -> dict:
    out = node.run(["nodemedic", "doctor", "--json"], check=False, timeout=120).stdout
    return next(f for f in json.loads(out)["findings"] if f["check"] == "registry mirrors")


@pytest.fixture
def bed(node: Node) -> Iterator[Bed]:
    """The stand-in serving a one-layer image as nmtest/mirror-standin:1; the node's own
    config.toml, certs.d and images are put back afterwards."""
    original = node.read_file(CONFIG)
    image = images.oci_image({"bin/busybox": (node.read_file(images.BUSYBOX), 0o755)}, ["/bin/busybox", "true"])
    registry = Registry(node)
    registry.publish("nmtest/mirror-standin", "1", image)
    registry.start()
    try:
        yield Bed(node, registry, image)
    finally:
        cri_images(node, "remove", IMAGE)
        registry.stop()
        node.run(["rm", "-rf", "--", CERTS, *backups(node)])
        if node.read_file(CONFIG) != original:
            node.write_file(CONFIG, original)
            restart_containerd(node)


def test_migrate_keeps_the_operators_config_and_pulls_through_the_mirror(bed: Bed):
    node, registry = bed.node, bed.registry
    node.write_file(CONFIG, OPERATOR_CONFIG)
    cursor = node.cursor()
    restart_containerd(node)
    # containerd 1.6.20 loaded the old mirrors, and says they are deprecated.
    node.wait_for_journal("`mirrors` is deprecated, please use `config_path` instead", unit="containerd.service",
                          since=cursor)
    finding = registry_finding(node)
    assert not finding["ok"] and "registry.mirrors" in finding["detail"] and UPSTREAM in finding["detail"], finding

    # The dry run changes nothing and shows the plan.
    before = node.checksum_tree("/etc/containerd")
    code, out = migrate(node, "--dry-run", "--verify-image", IMAGE)
    assert code == 0, out
    assert f"write {NAMESPACE}/hosts.toml" in out and "not-a-real-secret" not in out, out
    assert MOVED_COMMENT in out  # named: it goes with the mirror's table
    assert node.checksum_tree("/etc/containerd") == before

    pid = main_pid(node)
    served = node.cursor()
    code, out = migrate(node, "--verify-image", IMAGE)
    assert code == 0, out

    # config.toml: every comment and setting of the operator's kept, except the mirror's table (and
    # the comment inside it, which the plan named; the empty `mirrors` table stays); config_path
    # set; the backup is the old file.
    new = text(node, CONFIG)
    # (tomlkit may put a blank line after the key it adds; blank lines are not compared.)
    old_lines = [line for line in OPERATOR_CONFIG.splitlines() if '.mirrors."' not in line
                 and "endpoint =" not in line and line.strip() != MOVED_COMMENT and line]
    assert [line for line in new.splitlines() if "config_path" not in line and line] == old_lines, new
    assert MOVED_COMMENT in out
    cri = tomllib.loads(new)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"] == {"config_path": CERTS, "mirrors": {},
                               "configs": {UPSTREAM: {"auth": {"username": "robot", "password": "not-a-real-secret"}}}}
    [backup] = backups(node)
    assert text(node, backup) == OPERATOR_CONFIG
    assert "not-a-real-secret" not in out

    # hosts.toml says what the old mirror did.
    hosts = tomllib.loads(text(node, f"{NAMESPACE}/hosts.toml"))
    assert hosts == {"server": f"https://{UPSTREAM}", "host": {f"http://{HOST}": {"capabilities": ["pull", "resolve"]}}}

    # containerd was restarted, and runs without the deprecated setting.
    assert main_pid(node) != pid
    assert node.unit_state("containerd.service").active_state == "active"
    assert not [m for m in node.messages(unit="containerd.service", since=served) if "`mirrors` is deprecated" in m]
    # containerd's own view, as the flow read it over CRI Status: 1.x shows its registry config,
    # 2.x lists its deprecations instead.
    assert (f"containerd's effective config: configPath {CERTS}, no mirrors" in out
            or "containerd reports no registry mirror deprecation" in out), out

    # The flow's own pulls, before and after, both went to the stand-in for the upstream's name.
    manifests = [m for m in registry.requests(since=served) if "/manifests/1" in m]
    assert f"/v2/nmtest/mirror-standin/manifests/1?ns={UPSTREAM}" in "".join(manifests), manifests

    # An independent CRI PullImage, the image removed first so every blob is fetched again: it
    # goes through the mirror, and only because of hosts.toml.
    assert cri_images(node, "remove", IMAGE) == {}
    node.run(["mv", f"{NAMESPACE}/hosts.toml", f"{NAMESPACE}/hosts.toml.away"])
    failed = cri_images(node, "pull", IMAGE, "120")
    node.run(["mv", f"{NAMESPACE}/hosts.toml.away", f"{NAMESPACE}/hosts.toml"])
    assert "error" in failed and UPSTREAM in failed["error"], failed
    since = node.cursor()
    pulled = cri_images(node, "pull", IMAGE, "120")
    assert "image_ref" in pulled, pulled
    fetched = registry.requests(since=since)
    layer = bed.image.layer.digest
    assert any(f"/blobs/{layer}?ns={UPSTREAM}" in m and '" 200 ' in m for m in fetched), fetched
    assert IMAGE in cri_images(node, "list", IMAGE)["tags"]

    assert registry_finding(node)["ok"]
    # Run again: nothing left to migrate.
    code, out = migrate(node)
    assert code == 0 and "nothing to migrate" in out, out


def test_malformed_config_is_refused_and_nothing_changes(bed: Bed):
    node = bed.node
    broken = OPERATOR_CONFIG.replace('[plugins."io.containerd.internal.v1.opt"]', '[plugins."io.containerd.internal')
    node.write_file(CONFIG, broken)
    before, pid, cursor = node.checksum_tree("/etc/containerd"), main_pid(node), node.cursor()
    code, out = migrate(node, "--verify-image", IMAGE)
    assert code == 5, out
    assert "is not valid TOML" in out and "nothing changed" in out, out
    assert node.checksum_tree("/etc/containerd") == before
    assert text(node, CONFIG) == broken
    assert main_pid(node) == pid
    assert not [m for m in bed.registry.requests(since=cursor) if m.startswith(("GET ", "HEAD "))], "pulled"


def test_conflicting_hosts_toml_is_refused_and_nothing_changes(bed: Bed):
    node = bed.node
    node.write_file(CONFIG, OPERATOR_CONFIG)
    theirs = (f'server = "https://{UPSTREAM}"\n\n'
              '[host."https://other-cache.example.invalid"]\n  capabilities = ["pull"]\n')
    node.write_file(f"{NAMESPACE}/hosts.toml", theirs)
    before, pid = node.checksum_tree("/etc/containerd"), main_pid(node)
    code, out = migrate(node, "--verify-image", IMAGE)
    assert code == 5, out
    assert f"{NAMESPACE}/hosts.toml exists with other settings" in out and "nothing changed" in out, out
    assert node.checksum_tree("/etc/containerd") == before
    assert text(node, f"{NAMESPACE}/hosts.toml") == theirs
    assert main_pid(node) == pid


def with_mirror(default: str) -> str:
    """containerd's own `config default` with the operator's one mirror appended, in the file's version."""
    if "\nversion = 3\n" in f"\n{default}":
        table = f"[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'{UPSTREAM}']"
    else:
        table = f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{UPSTREAM}"]'
    return default + f'\n{table}\n  endpoint = ["http://{HOST}"]\n'


def test_containerds_own_default_config_with_a_mirror_migrates(bed: Bed):
    """What `containerd config default` writes on this stack (version 2 with its empty registry
    tables on 1.x, version 3 with config_path = '' on 2.x), plus one mirror."""
    node = bed.node
    default = node.run(["containerd", "config", "default"]).stdout
    config = with_mirror(default)
    node.write_file(CONFIG, config)
    restart_containerd(node)
    code, out = migrate(node, "--verify-image", IMAGE)
    assert code == 0, out
    new = text(node, CONFIG)
    removed, added = [], []
    for line in difflib.ndiff(config.splitlines(), new.splitlines()):
        (removed if line.startswith("- ") else added if line.startswith("+ ") else []).append(line[2:])
    assert [line for line in removed if "config_path" not in line and line] == config.splitlines()[-2:], removed
    assert [line.strip() for line in added] in ([f'config_path = "{CERTS}"'], [f"config_path = '{CERTS}'"]), added
    expected = tomllib.loads(default)
    plugin = "io.containerd.cri.v1.images" if expected.get("version") == 3 else "io.containerd.grpc.v1.cri"
    expected["plugins"][plugin]["registry"]["config_path"] = CERTS
    assert tomllib.loads(new) == expected  # containerd's defaults, config_path set, nothing else
    assert tomllib.loads(text(node, f"{NAMESPACE}/hosts.toml"))["host"] == {
        f"http://{HOST}": {"capabilities": ["pull", "resolve"]}}


def test_a_failed_restart_is_rolled_back_to_the_same_bytes(bed: Bed):
    """containerd refuses to start while the new hosts.toml exists (a drop-in's ExecStartPre, for
    this test only): the flow's restart job fails, and the rollback must put config.toml back byte
    for byte, remove what it wrote and start containerd again on the old configuration."""
    node = bed.node
    node.write_file(CONFIG, OPERATOR_CONFIG)
    restart_containerd(node)
    node.drop_in("containerd.service", "90-nmtest-no-hosts-toml", "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\n"
                 f"ExecStartPre=/usr/bin/test ! -e {NAMESPACE}/hosts.toml\n")
    try:
        before = node.tree_manifest("/etc/containerd")
        cursor = node.cursor()
        code, out = migrate(node, "--verify-image", IMAGE)
        assert code == 1, out
        assert "rolling back" in out and f"undone: wrote {NAMESPACE}/hosts.toml" in out, out
        after = node.tree_manifest("/etc/containerd")
        [backup] = backups(node)
        assert text(node, backup) == OPERATOR_CONFIG  # the backup stays
        assert {k: v for k, v in after.items() if ".nodemedic-" not in k} == before
        assert text(node, CONFIG) == OPERATOR_CONFIG
        # containerd runs again, on the old mirrors (their deprecation line, logged at its start).
        node.wait_for(lambda: node.cri_status().runtime_ready, timeout=60, what="containerd back over CRI")
        assert node.unit_state("containerd.service").active_state == "active"
        starts = node.messages(unit="containerd.service", since=cursor)
        assert [m for m in starts if "`mirrors` is deprecated" in m], starts
        [entry] = node.journal(message_id=Kind.MIRRORS_ROLLED_BACK.value, since=cursor)
        assert "RestartUnit containerd.service" in entry["MESSAGE"], entry
    finally:
        node.remove_drop_in("containerd.service", "90-nmtest-no-hosts-toml")
