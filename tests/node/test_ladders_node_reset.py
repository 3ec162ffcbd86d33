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

Which kubelet (testbed/kubelet_bed.py): on bookworm and trixie (containerd 1.6/1.7, CRI v1alpha2)
the real kubelet 1.20.2, registered with a control plane of the module's own: the node's
identity (/etc/kubernetes/kubelet.conf), /var/lib/kubelet (config, serving certificate, its own
cpu_manager_state checkpoint, plugin and pod-resources sockets) are the real kubelet's, and the
reset must keep what it must keep of them with kubelet running, stopped and started again by the
reset; afterwards the Node is Ready again on the API server. On trixie-containerd2 (CRI v1 only,
which kubelet 1.20 cannot speak) the kubelet stand-in stays and the same files are planted.
Nothing of this module's fault needs a kubelet feature 1.20 lacks.

A pod's data under /var/lib/kubelet/pods is planted as a file directly in the pod's volumes/
directory, not as a volume kubelet knows: the real kubelet, started again by the aggressive
reset, reconstructs an orphaned pod's volumes and tears them down (for an emptyDir that deletes
its contents, by design). A bind-mounted emptyDir planted there lost its file in one run here,
while reset.py never touches /var/lib/kubelet/pods; kubelet's teardown is the likely cause, not
yet confirmed from its log. What this module proves is that the reset deletes none of it.
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
from tests.node.testbed.kubelet_bed import LadderKubelet
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
# What the real kubelet keeps in its state dir and must find again after a reset.
KUBELET_KEPT = ("/var/lib/kubelet/config.yaml", "/var/lib/kubelet/pki")


@pytest.fixture(scope="module")
def medic(node: Node, ladder_kubelet: LadderKubelet) -> Node:
    node.write_file(MASKED, "")  # an empty file masks a shipped signature, as in systemd
    start_nodemedic(node)
    return node


def chains(node: Node) -> set[str]:
    out = node.run(["iptables-save"]).stdout
    return {line[1:].split()[0] for line in out.splitlines() if line.startswith(":")}


def has_link(node: Node, name: str) -> bool:
    return node.run(["ip", "link", "show", "dev", name], check=False).returncode == 0


@pytest.fixture
def leftovers(medic: Node, ladder_kubelet: LadderKubelet) -> Iterator[dict[str, str]]:
    """An old network's leftovers and a joined node's files, removed again afterwards; yields the
    checksums of what the node's identity and kubelet's state must still be afterwards. The real
    kubelet brings its own identity and checkpoint; the stand-in's node gets planted ones."""
    medic.run(["ip", "link", "add", "cni0", "type", "bridge"])
    for chain in ("CNI-nmtest", "FLANNEL-FWD", "KUBE-nmtest"):
        medic.run(["iptables", "-t", "filter", "-N", chain])
    planted = [(CNI_RESERVATION, "nmtest-container\neth0\n"), (POD_VOLUME, "a pod's data\n")]
    if ladder_kubelet.is_real:
        assert medic.exists(CPU_CHECKPOINT) and medic.exists(NODE_IDENTITY), "the real kubelet's own files"
    else:
        planted += [(CPU_CHECKPOINT, '{"policyName":"none"}\n'), (NODE_IDENTITY, "apiVersion: v1\nkind: Config\n")]
    for path, text in planted:
        medic.write_file(path, text)
    kept = [NODE_IDENTITY, *(KUBELET_KEPT if ladder_kubelet.is_real else ())]
    yield {path: medic.checksum_tree(path) for path in kept}
    medic.run(["ip", "link", "delete", "cni0"], check=False)
    for chain in ("CNI-nmtest", "FLANNEL-FWD", "KUBE-nmtest"):
        medic.run(["iptables", "-t", "filter", "-X", chain], check=False)
    medic.run(["rm", "-rf", "--", "/var/lib/cni", "/var/lib/kubelet/pods"])
    if not ladder_kubelet.is_real:
        medic.run(["rm", "-f", "--", CPU_CHECKPOINT, NODE_IDENTITY])


@pytest.fixture
def checkpoint_before(medic: Node, leftovers: dict[str, str]) -> str:
    """The CPU manager checkpoint's inode and mtime before the fault (request it before `crash_loop`)."""
    return file_identity(medic, CPU_CHECKPOINT)


def file_identity(node: Node, path: str) -> str:
    return node.run(["stat", "-c", "%i %.9Y", "--", path]).stdout.strip()


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
    assert {path: medic.checksum_tree(path) for path in leftovers} == leftovers
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
        medic, ladder_kubelet, destructive_allowed, leftovers, checkpoint_before, cursor, crash_loop):
    before = media_checksums(medic)
    healed = wait_healed(medic, PROBLEM, cursor, timeout=180)
    assert steps_started(medic, PROBLEM, cursor) == ["restart-containerd", "gentle-node-reset",
                                                     "aggressive-node-reset"]
    assert "healed by aggressive-node-reset" in healed["MESSAGE"]
    # Live: containerd answers CRI on a fresh root, kubelet runs again.
    assert medic.cri_status().runtime_ready
    assert medic.unit_state("kubelet.service").active_state == "active"
    if ladder_kubelet.is_real:
        ladder_kubelet.wait_healthy()  # the real kubelet, restarted by the reset, has its Node Ready
    # The old root is kept aside, the corrupt meta.db in it byte for byte (never deleted).
    [aside] = faults.moved_aside_roots(medic)
    meta = aside + faults.META_DB.removeprefix(faults.CONTAINERD_ROOT)
    assert medic.run(["sha256sum", "--", meta]).stdout.split()[0] == crash_loop.info["sha256"]
    # Owners stopped, no shim running: every leftover went, and the runtime's stale state.
    assert not has_link(medic, "cni0")
    assert not {"CNI-nmtest", "FLANNEL-FWD", "KUBE-nmtest"} & chains(medic)
    assert not medic.exists(CNI_RESERVATION)
    if ladder_kubelet.is_real:
        # The real kubelet, started again by the reset, writes a fresh checkpoint (a moment after
        # it starts, its Node may still show the old Ready): not the old file.
        medic.wait_for(lambda: medic.exists(CPU_CHECKPOINT), timeout=60, what="kubelet's fresh cpu_manager_state")
        assert file_identity(medic, CPU_CHECKPOINT) != checkpoint_before
    else:
        assert not medic.exists(CPU_CHECKPOINT)
    # Never: the node's identity, kubelet's own state, a pod's volume, the protected directories.
    assert {path: medic.checksum_tree(path) for path in leftovers} == leftovers
    assert medic.read_file(POD_VOLUME) == b"a pod's data\n"
    assert media_checksums(medic) == before
