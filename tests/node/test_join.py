"""`nodemedic join` on a booted node, with a STAND-IN kubeadm on the node's PATH.

kubeadm cannot join a cluster here, so /usr/local/bin/kubeadm is the stand-in from
tests/unit/test_flows_join.py (NOT kubeadm): its first runs fail the way a kubeadm join does when
kubelet never gets healthy (kubeadm's real "[kubelet-check]" lines, exit 1) after writing what
kubeadm join writes, and like kubeadm its preflight then refuses while those files exist. Everything
else is real: systemd, D-Bus, containerd, the journal, nodemedic's cleanups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from nodemedic.journal import Kind
from tests.node.testbed.node import Node
from tests.unit.test_flows_join import standin_text

TOKEN = "nmtst1.0123456789abcdef"
CA_HASH = "sha256:" + "2e" * 32
JOIN = ["kubeadm", "join", "10.0.0.1:6443", "--token", TOKEN, f"--discovery-token-ca-cert-hash={CA_HASH}"]
STATE = "/var/tmp/kubeadm-standin"
CONFIG = "/etc/nodemedic/conf.d/50-nmtest-join.toml"
PROTECTED = ("/srv/media", "/mnt/media")
VOLUME = "/var/lib/kubelet/pods/8f3e0c1a-nmtest/volumes/kubernetes.io~empty-dir/cache/data"
JOIN_KINDS = {k.value: k for k in Kind if k.name.startswith("JOIN_")}


@pytest.fixture(scope="module")
def media(node: Node) -> dict[str, str]:
    return {p: node.checksum_tree(p) for p in PROTECTED}


@pytest.fixture
def standin(node: Node, media: dict[str, str]) -> Iterator[Any]:
    """`standin(fails=N, attempts=..., destructive=...)`: the stand-in kubeadm and nodemedic's config;
    afterwards the protected paths must be byte-identical and kubeadm's files gone."""

    def install(fails: int, attempts: int, destructive: bool) -> None:
        node.run(["rm", "-rf", STATE, "/etc/kubernetes"])
        node.run(["find", "/var/lib/kubelet", "-mindepth", "1", "-maxdepth", "1", "!", "-name", "pods",
                  "-exec", "rm", "-rf", "{}", "+"], check=False)
        node.write_file("/usr/local/bin/kubeadm", standin_text(fails, STATE, "/", python="/usr/bin/python3"), 0o755)
        node.write_file(CONFIG, f"[policy]\nallow_destructive = {str(destructive).lower()}\n"
                                f'[join]\nattempts = {attempts}\ngentle_cleanups = 1\nbackoff = "1s"\n')
        node.write_file(VOLUME, "a pod's data: never touched\n")

    yield install
    node.run(["rm", "-f", CONFIG, "/usr/local/bin/kubeadm"])
    assert {p: node.checksum_tree(p) for p in PROTECTED} == media


def join_entries(node: Node, since: str) -> list[dict[str, Any]]:
    return [e for e in node.journal(identifier="nodemedic", since=since) if e.get("MESSAGE_ID") in JOIN_KINDS]


def kinds(entries: list[dict[str, Any]]) -> list[Kind]:
    return [JOIN_KINDS[e["MESSAGE_ID"]] for e in entries]


def runs(node: Node) -> list[list[str]]:
    return [json.loads(line) for line in node.read_file(f"{STATE}/runs.jsonl").decode().splitlines()]


def asides(node: Node) -> list[str]:
    out = node.run(["sh", "-c", "ls -d /var/lib/containerd.nodemedic-* 2>/dev/null || true"]).stdout
    return out.split()


def test_gentle_then_aggressive_cleanup_then_the_join_succeeds(node, standin, cursor):
    standin(fails=1, attempts=3, destructive=True)
    before = asides(node)
    result = node.run(["nodemedic", "join", "--", *JOIN], check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    entries = join_entries(node, cursor)
    assert kinds(entries) == [
        *[Kind.JOIN_PREFLIGHT] * 4,
        Kind.JOIN_ATTEMPT_STARTED, Kind.JOIN_SYMPTOM, Kind.JOIN_ATTEMPT_FAILED, Kind.JOIN_CLEANUP,
        Kind.JOIN_ATTEMPT_STARTED, Kind.JOIN_ATTEMPT_FAILED, Kind.JOIN_CLEANUP,
        Kind.JOIN_ATTEMPT_STARTED, Kind.JOIN_SUCCEEDED,
    ], [e["MESSAGE"] for e in entries]
    preflight = {e["NODEMEDIC_CHECK"]: e["NODEMEDIC_RESULT"] for e in entries if kinds([e]) == [Kind.JOIN_PREFLIGHT]}
    assert set(preflight) == {"swap", "cni", "cgroup-driver", "containerd"}
    assert "refused" not in preflight.values()
    symptom = next(e for e in entries if kinds([e]) == [Kind.JOIN_SYMPTOM])
    assert symptom["NODEMEDIC_SIGNATURE"] == "kubeadm-join-kubelet-check-timeout"
    gentle, aggressive = [e for e in entries if kinds([e]) == [Kind.JOIN_CLEANUP]]
    assert (gentle["NODEMEDIC_LEVEL"], aggressive["NODEMEDIC_LEVEL"]) == ("gentle", "aggressive")
    assert gentle["NODEMEDIC_RESULT"] == aggressive["NODEMEDIC_RESULT"] == "done"
    assert "restarted containerd.service" in gentle["MESSAGE"]
    for removed in ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki/ca.crt", "/var/lib/kubelet/pki/"):
        assert f"removed {removed}" in aggressive["NODEMEDIC_ACTIONS"]
    # the second attempt failed in kubeadm's own preflight: the gentle cleanup is not enough
    second = [e for e in entries if kinds([e]) == [Kind.JOIN_ATTEMPT_FAILED]][1]
    assert "already exists" in second["NODEMEDIC_OUTPUT_TAIL"]
    # the containerd root was moved aside, never deleted; containerd runs on a fresh one
    assert len(asides(node)) == len(before) + 1
    assert node.exists(f"{asides(node)[-1]}/io.containerd.metadata.v1.bolt/meta.db")
    node.wait_for(lambda: node.cri_status().runtime_ready, timeout=30, what="containerd ready")
    # pods' volumes are never touched; the command ran unchanged every time
    assert node.read_file(VOLUME) == b"a pod's data: never touched\n"
    assert runs(node) == [JOIN[1:]] * 3
    assert_no_secret(node, cursor, result.stdout + result.stderr)


def test_the_budget_holds_and_aggressive_waits_for_permission(node, standin, cursor):
    standin(fails=99, attempts=3, destructive=False)
    before = asides(node)
    result = node.run(["nodemedic", "join", "--", *JOIN], check=False, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(runs(node)) == 3
    entries = join_entries(node, cursor)
    assert kinds(entries)[-1] is Kind.JOIN_EXHAUSTED
    assert [e["NODEMEDIC_ATTEMPT"] for e in entries if kinds([e]) == [Kind.JOIN_ATTEMPT_STARTED]] == ["1", "2", "3"]
    cleanups = [e for e in entries if kinds([e]) == [Kind.JOIN_CLEANUP]]
    assert [c["NODEMEDIC_LEVEL"] for c in cleanups] == ["gentle", "gentle"]  # none after the last attempt
    assert "NODEMEDIC_HELD_BACK" not in cleanups[0]
    assert "allow_destructive" in cleanups[1]["NODEMEDIC_HELD_BACK"]
    assert asides(node) == before  # nothing destructive without permission
    assert node.read_file(VOLUME) == b"a pod's data: never touched\n"
    assert_no_secret(node, cursor, result.stdout + result.stderr)


def test_dry_run_shows_the_plan_masked_and_runs_nothing(node, standin, cursor):
    standin(fails=0, attempts=3, destructive=True)
    result = node.run(["nodemedic", "join", "--dry-run", "--", *JOIN], check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "after attempt 1: gentle cleanup" in result.stdout and "after attempt 2: aggressive" in result.stdout
    assert not node.exists(f"{STATE}/runs.jsonl")
    assert not join_entries(node, cursor)
    assert_no_secret(node, cursor, result.stdout + result.stderr)


def assert_no_secret(node: Node, since: str, output: str) -> None:
    """Neither the token nor the CA hash in nodemedic's output, nor anywhere in the journal since
    `since`: not in a MESSAGE, not in a NODEMEDIC_ field, not in journald's own _CMDLINE."""
    raw = node.run(["journalctl", "--no-pager", "--all", "-o", "json", f"--after-cursor={since}"], timeout=120).stdout
    for secret in (TOKEN, CA_HASH):
        assert secret not in output
        assert secret not in raw, [line for line in raw.splitlines() if secret in line][:2]
    assert re.search(r"--token \*\*\*", output)
