"""The escalating node reset: a containerd that restarts do not bring back climbs restart →
gentle reset → aggressive reset (destructive, opt-in), and stops, `exhausted`, at what the policy
allows.

The fault is real: a torn meta.db makes containerd 1.6 panic inside bbolt at every start. Its own
signature (containerd-metadata-bolt-corrupt, whose ladder is the move-aside alone, see
test_ladders_reset.py) is masked here, so the crash loop reaches nodemedic the way a crash no
signature knows does: as `containerd-crash-loop` from systemd's unit state. Leftovers of an old
network (a cni0 bridge, CNI-/FLANNEL-/KUBE- chains) are planted to show which ones each rung
removes: only those whose owner is not running. Verdicts come from systemd, CRI Status, `ip` and
`iptables-save` in the node, and the protected directories are compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nodemedic.report.journal import Kind
from tests.node.medic import (
    forget,
    media_checksums,
    phase,
    reload_medic,
    start_nodemedic,
    steps_started,
    wait_for_kind,
    wait_healed,
)
from tests.node.testbed import faults
from tests.node.testbed.node import Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2")]

PROBLEM = "containerd-crash-loop"
MASKED = "/etc/nodemedic/signatures.d/containerd-metadata-bolt-corrupt.toml"
DESTRUCTIVE = "/etc/nodemedic/conf.d/60-destructive.toml"
# What a reset may clean, and what marks a joined node and its workloads' data (never touched).
CNI_RESERVATION = "/var/lib/cni/networks/nmtest/10.244.0.9"
CPU_CHECKPOINT = "/var/lib/kubelet/cpu_manager_state"
NODE_IDENTITY = "/etc/kubernetes/kubelet.conf"
POD_VOLUME = "/var/lib/kubelet/pods/0000-nmtest/volumes/data.txt"


@pytest.fixture(scope="module")
def medic(node: Node) -> Node:
    node.write_file(MASKED, "")  # an empty file masks a shipped signature, as in systemd
    start_nodemedic(node)
    return node


def chains(node: Node) -> set[str]:
    out = node.run(["iptables-save"]).stdout
    return {line[1:].split()[0] for line in out.splitlines() if line.startswith(":")}


def has_link(node: Node, name: str) -> bool:
    return node.run(["ip", "link", "show", "dev", name], check=False).returncode == 0


@pytest.fixture
def leftovers(medic: Node) -> Iterator[None]:
    """An old network's leftovers and a joined node's files, removed again afterwards."""
    medic.run(["ip", "link", "add", "cni0", "type", "bridge"])
    for chain in ("CNI-nmtest", "FLANNEL-FWD", "KUBE-nmtest"):
        medic.run(["iptables", "-t", "filter", "-N", chain])
    for path, text in ((CNI_RESERVATION, "nmtest-container\neth0\n"), (CPU_CHECKPOINT, '{"policyName":"none"}\n'),
                       (NODE_IDENTITY, "apiVersion: v1\nkind: Config\n"), (POD_VOLUME, "a pod's data\n")):
        medic.write_file(path, text)
    yield
    medic.run(["ip", "link", "delete", "cni0"], check=False)
    for chain in ("CNI-nmtest", "FLANNEL-FWD", "KUBE-nmtest"):
        medic.run(["iptables", "-t", "filter", "-X", chain], check=False)
    medic.run(["rm", "-rf", "--", "/var/lib/cni", "/var/lib/kubelet/pods", CPU_CHECKPOINT, NODE_IDENTITY])


@pytest.fixture
def crash_loop(medic: Node, inject) -> Iterator[faults.Fault]:
    cursor = medic.cursor()
    fault = inject(faults.corrupt_containerd_metadata)
    medic.wait_for_journal(r"^go\.etcd\.io/bbolt\.", unit="containerd.service", since=cursor)
    yield fault
    fault.restore()
    for problem in (PROBLEM, "runtime-down"):
        forget(medic, problem)


def test_default_policy_climbs_to_the_gentle_reset_and_stops_exhausted(medic, leftovers, cursor, crash_loop):
    before = media_checksums(medic)
    exhausted = wait_for_kind(medic, Kind.EXHAUSTED, PROBLEM, cursor, timeout=120)
    assert "aggressive-node-reset held back: destructive steps are off" in exhausted["MESSAGE"]
    assert steps_started(medic, PROBLEM, cursor) == ["restart-containerd", "gentle-node-reset"]
    assert phase(medic, PROBLEM) == "exhausted"
    # The gentle reset removed what has no owner (flanneld never ran here), kept what does:
    # kubelet runs (KUBE-), and pods may exist while containerd cannot be asked (cni0, CNI-).
    left = chains(medic)
    assert "FLANNEL-FWD" not in left and {"KUBE-nmtest", "CNI-nmtest"} <= left
    assert has_link(medic, "cni0")
    # Nothing destructive: the corrupt root in place, the node's files kept.
    assert faults.moved_aside_roots(medic) == []
    assert medic.run(["sha256sum", "--", faults.META_DB]).stdout.split()[0] == crash_loop.info["sha256"]
    for path in (CNI_RESERVATION, CPU_CHECKPOINT, NODE_IDENTITY, POD_VOLUME):
        assert medic.exists(path), path
    # Exhausted means it stops: containerd keeps panicking, nodemedic does not follow it.
    restarts = medic.unit_state("containerd.service").n_restarts
    medic.wait_for(lambda: medic.unit_state("containerd.service").n_restarts >= restarts + 2, timeout=30,
                   what="two more panics")
    assert steps_started(medic, PROBLEM, cursor) == ["restart-containerd", "gentle-node-reset"]
    assert media_checksums(medic) == before


@pytest.fixture
def destructive_allowed(medic: Node) -> Iterator[None]:
    medic.write_file(DESTRUCTIVE, "[policy]\nallow_destructive = true\n")
    reload_medic(medic)
    yield
    medic.run(["rm", "-f", "--", DESTRUCTIVE])
    reload_medic(medic)


def test_allowed_aggressive_reset_moves_the_root_aside_and_the_runtime_comes_back(
        medic, destructive_allowed, leftovers, cursor, crash_loop):
    before = media_checksums(medic)
    healed = wait_healed(medic, PROBLEM, cursor, timeout=180)
    assert steps_started(medic, PROBLEM, cursor) == ["restart-containerd", "gentle-node-reset",
                                                     "aggressive-node-reset"]
    assert "healed by aggressive-node-reset" in healed["MESSAGE"]
    # Live: containerd answers CRI on a fresh root, kubelet runs again.
    assert medic.cri_status().runtime_ready
    assert medic.unit_state("kubelet.service").active_state == "active"
    # The old root is kept aside, the corrupt meta.db in it byte for byte (never deleted).
    [aside] = faults.moved_aside_roots(medic)
    meta = aside + faults.META_DB.removeprefix(faults.CONTAINERD_ROOT)
    assert medic.run(["sha256sum", "--", meta]).stdout.split()[0] == crash_loop.info["sha256"]
    # Owners stopped, no shim running: every leftover went, and the runtime's stale state.
    assert not has_link(medic, "cni0")
    assert not {"CNI-nmtest", "FLANNEL-FWD", "KUBE-nmtest"} & chains(medic)
    assert not medic.exists(CNI_RESERVATION) and not medic.exists(CPU_CHECKPOINT)
    # Never: the node's identity, a pod's volume, the protected directories.
    assert medic.exists(NODE_IDENTITY) and medic.read_file(POD_VOLUME) == b"a pod's data\n"
    assert media_checksums(medic) == before
