"""The cni-bridge-conflict ladder against the real thing: containerd 1.6 runs CRI RunPodSandbox,
Debian's bridge plugin finds cni0 carrying another address and fails with its own error, and
containerd logs its own "RunPodSandbox for … failed, error" line. nodemedic deletes the bridge
(in nodemedic-step@, the only unit allowed to) and the next sandbox really starts — but never
while a pod sandbox is READY on the node (failure-modes: "never delete cni0 while pods run").

Pods run for real: pause is replaced by a local busybox stand-in and the test bed's limits are
lifted as testbed/pods.py documents; every verdict is CRI, `ip` or the journal, never
nodemedic's own word.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from nodemedic.journal import Kind
from tests.node.medic import (
    cli,
    cri_info,
    media_checksums,
    nodemedic_entries,
    phase,
    start_nodemedic,
    steps_started,
    wait_healed,
)
from tests.node.testbed import faults, pods
from tests.node.testbed.node import Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2")]

PROBLEM = "cni-bridge-conflict"
BRIDGE = "cni0"
NETWORK = "nmconflict"
# Sorts before the test bed's 10-nmtest.conflist: the config containerd loads.
CONF_NAME = "05-nmconflict.conflist"
SUBNET, GATEWAY = "10.244.7.0/24", "10.244.7.1/24"
NEXT_SUBNET, NEXT_GATEWAY = "10.244.8.0/24", "10.244.8.1/24"
OLD_ADDRESS = "10.99.0.1/24"  # what cni0 kept from the node's previous life
IPAM = f"/var/lib/cni/networks/{NETWORK}"
OLD_RESERVATION, CURRENT_RESERVATION = f"{IPAM}/10.99.0.7", f"{IPAM}/10.244.7.200"
STEP_UNIT = "nodemedic-step@delete-stale-bridge.service"
CONFLICT = "already has an IP address different from"


@pytest.fixture(scope="module")
def medic(node: Node) -> Iterator[Node]:
    undo = pods.enable_pod_sandboxes(node)
    start_nodemedic(node)
    yield node
    node.systemctl("stop", "nodemedic")
    undo()


def bridge_addresses(node: Node) -> list[str] | None:
    """cni0's IPv4 addresses as `ip` shows them, None when there is no cni0."""
    cp = node.run(["ip", "-j", "-4", "addr", "show", "dev", BRIDGE], check=False)
    if cp.returncode != 0:
        return None
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(cp.stdout) for a in link.get("addr_info", [])]


def bridge_ifindex(node: Node) -> int:
    return json.loads(node.run(["ip", "-j", "link", "show", "dev", BRIDGE]).stdout)[0]["ifindex"]


def network_config(node: Node, subnet: str) -> faults.Fault:
    """The CNI daemonset's config: bridge cni0, host-local `subnet`; containerd reloads it and
    the next sandbox uses it."""
    fault = faults.write_cni_config(node, CONF_NAME, faults.cni_conflist(NETWORK, BRIDGE, subnet))
    node.wait_for(lambda: subnet in json.dumps(cri_info(node).get("cniconfig", {})), what=f"containerd on {subnet}")
    return fault


def clean_bridge(node: Node) -> faults.Fault:
    """Whatever the test leaves of cni0 and its reservations goes afterwards (restored last)."""
    def restore() -> None:
        if bridge_addresses(node) is not None:
            node.run(["ip", "link", "delete", "dev", BRIDGE])
        node.run(["rm", "-rf", "--", IPAM])

    return faults.Fault("clean-bridge", restore)


def stale_bridge(node: Node) -> faults.Fault:
    """cni0 as a node's previous subnet left it: the old gateway address, and a host-local
    reservation of a pod that was never torn down (written as host-local writes it: container
    id CRLF interface). Plus one reservation inside the current subnet, which must be kept."""
    node.run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    node.run(["ip", "addr", "add", OLD_ADDRESS, "dev", BRIDGE])
    node.run(["ip", "link", "set", BRIDGE, "up"])
    node.run(["mkdir", "-p", IPAM])
    node.write_file(OLD_RESERVATION, "4f1d0c9e2b7a\r\neth0")
    node.write_file(CURRENT_RESERVATION, "9a8b7c6d5e4f\r\neth0")
    return clean_bridge(node)


def pod(node: Node, name: str) -> faults.Fault:
    """CRI RunPodSandbox; info["id"] (empty when it failed) and info["error"]. Restore stops
    and removes the sandbox."""
    result = pods.run_pod_sandbox(node, name)

    def restore() -> None:
        if result.sandbox_id:
            pods.remove_pod_sandbox(node, result.sandbox_id)

    return faults.Fault(f"pod-{name}", restore, {"id": result.sandbox_id, "error": result.error})


@pytest.fixture
def fresh(medic: Node) -> Node:
    # Each test is its own episode, whatever the one before left (an exhausted problem waits).
    cli(medic, "forget", PROBLEM)
    return medic


def test_stale_bridge_is_deleted_and_the_next_pod_starts(fresh: Node, inject: Callable[..., faults.Fault],
                                                        cursor: str):
    medic = fresh
    before = media_checksums(medic)
    inject(network_config, SUBNET)
    inject(stale_bridge)
    failed = inject(pod, "web-1")
    assert not failed.info["id"]
    assert f'"{BRIDGE}" {CONFLICT} {GATEWAY}' in failed.info["error"]
    # containerd's own line, as the signature expects it
    line = medic.wait_for_journal(r"RunPodSandbox for .* failed, error", unit="containerd.service", since=cursor)
    assert CONFLICT in line["MESSAGE"]

    healed = wait_healed(medic, PROBLEM, since=cursor, timeout=90)
    assert "delete-stale-bridge" in healed["MESSAGE"]
    assert steps_started(medic, PROBLEM, cursor) == ["delete-stale-bridge"]
    [finished] = nodemedic_entries(medic, Kind.STEP_FINISHED, cursor, problem=PROBLEM)
    detail = finished["NODEMEDIC_DETAIL"]
    assert f"deleted {BRIDGE}, which carried {OLD_ADDRESS} instead of {GATEWAY}" in detail
    assert "10.99.0.7" in detail and "10.244.7.200" not in detail
    # done by the privileged unit, which says so in its own journal
    assert any(f"deleted {BRIDGE}" in m for m in medic.messages(unit=STEP_UNIT, since=cursor))
    assert bridge_addresses(medic) is None
    assert not medic.exists(OLD_RESERVATION) and medic.exists(CURRENT_RESERVATION)

    # The proof: the next sandbox starts, and the bridge plugin recreated cni0 with the gateway.
    started = inject(pod, "web-2")
    assert started.info["id"], started.info["error"]
    assert started.info["id"] in pods.ready_sandboxes(medic)
    assert bridge_addresses(medic) == [GATEWAY]
    assert media_checksums(medic) == before


def test_never_deletes_the_bridge_while_a_pod_runs(fresh: Node, inject: Callable[..., faults.Fault], cursor: str):
    """The node's pod subnet changes under a running pod (re-joined with a new podCIDR): the
    conflict is real, but the pod on cni0 would lose its network. No step of the ladder applies
    (the delete needs no ready sandbox, the restart a right bridge): nodemedic stops, exhausted,
    having touched nothing; cni0 stays as it is."""
    medic = fresh
    before = media_checksums(medic)
    inject(clean_bridge)
    inject(network_config, SUBNET)
    running = inject(pod, "db-1")
    assert running.info["id"], running.info["error"]
    assert bridge_addresses(medic) == [GATEWAY]
    ifindex = bridge_ifindex(medic)

    inject(network_config, NEXT_SUBNET)
    failed = inject(pod, "db-2")
    assert f'"{BRIDGE}" {CONFLICT} {NEXT_GATEWAY}' in failed.info["error"]

    # The episode's end, whichever it is: a heal here would mean cni0 went under the pod.
    [end] = medic.wait_for(lambda: [e for kind in (Kind.EXHAUSTED, Kind.HEALED)
                                    for e in nodemedic_entries(medic, kind, cursor, problem=PROBLEM)],
                           timeout=120, what=f"{PROBLEM}: the episode's end")
    assert end["MESSAGE_ID"] == Kind.EXHAUSTED.value, end["MESSAGE"]
    assert "no step of the ladder applies now" in end["MESSAGE"]
    assert nodemedic_entries(medic, Kind.CONFIRMED, cursor, problem=PROBLEM), "the conflict is real"
    assert steps_started(medic, PROBLEM, cursor) == []
    assert medic.messages(unit=STEP_UNIT, since=cursor) == [], "the privileged step must not even start"
    assert phase(medic, PROBLEM) == "exhausted"
    # cni0 untouched (the same link, the same address) and the pod still READY on it
    assert bridge_addresses(medic) == [GATEWAY]
    assert bridge_ifindex(medic) == ifindex
    assert running.info["id"] in pods.ready_sandboxes(medic)
    assert media_checksums(medic) == before
