"""The fleet guard against the real API server (issue 15, item 4): two booted nodes, each with
nodemedic.service and nodemedic-kube.service as shipped (`nodemedic kube run`, which serves
org.nodemedic.Kube1 when fleet.enabled) on its system bus, holding coordination.k8s.io/v1
Leases in kube-apiserver 1.20.2 (testbed/kube_cp.py). Each node's guard has an identity of its
own, fleet.kubeconfig: a client certificate CN=nodemedic:fleet:NODE, O=nodemedic:fleet from the
test bed's PKI, the group packaging/kubernetes/rbac.yaml binds to the slot Leases.

The nodes run no kubelet, so kubernetes.enabled stays off: nodemedic-kube runs the guard alone
(the conditions side is tests/node/test_kube_conditions.py). A holder dying is the unit
SIGKILLed; systemd restarts it after RestartSec, with no memory of the slot.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nodemedic.journal import Kind
from tests.node.medic import cli, nodemedic_entries, phase, start_nodemedic, wait_for_kind
from tests.node.testbed import faults
from tests.node.testbed.kube_cp import ControlPlane, kubeconfig_text
from tests.node.testbed.node import REPO_ROOT, Node, boot_node
from tests.node.testbed.stacks import Stack

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm")]  # python 3.13 and 3.11

KUBELET = "kubelet.service"
PROBLEM = "kubelet-crash-loop"  # its one step, restart-kubelet, is disruptive
LEASE_SECONDS = 15  # the shortest fleet.lease_seconds allowed
KUBECONFIG = "/etc/nodemedic/fleet.kubeconfig"
GUARD_UNIT = "nodemedic-kube"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/nodemedic/leases/nodemedic-slot-0"


def fleet_config(node: Node) -> str:
    return f"""
[fleet]
enabled = true
max_concurrent = 1
lease_seconds = "{LEASE_SECONDS}s"
kubeconfig = "{KUBECONFIG}"

[kubernetes]
node_name = "{node.name}"

[ingest]
stale_age = "5s"
"""


@dataclass
class Fleet:
    cp: ControlPlane
    nodes: list[Node]


def start_guard(node: Node) -> None:
    if node.unit_state(f"{GUARD_UNIT}.service").active_state == "active":
        return
    node.run(["systemctl", "reset-failed", f"{GUARD_UNIT}.service"], check=False)
    since = node.cursor()
    node.systemctl("start", f"{GUARD_UNIT}.service")
    node.wait_for(lambda: node.journal(message_id=Kind.FLEET_SERVING.value, since=since), timeout=60,
                  what="the fleet guard serving on the bus")


@pytest.fixture(scope="module")
def fleet(control_plane: ControlPlane, stack: Stack) -> Iterator[Fleet]:
    control_plane.kubectl("apply", "-f", str(REPO_ROOT / "packaging/kubernetes/rbac.yaml"))
    nodes: list[Node] = []
    try:
        for _ in range(2):
            node = boot_node("nm-kube-fleet", stack=stack)
            nodes.append(node)
            control_plane.attach(node)
            user = f"nodemedic:fleet:{node.name}"
            cert, key = control_plane.pki.client(f"fleet-{node.name}", user, ["nodemedic:fleet"])
            node.write_file(KUBECONFIG, kubeconfig_text(control_plane.pki.ca_cert.read_text(), cert.read_text(),
                                                        key.read_text(), user), 0o600)
            # The .deb puts it in /usr/share/dbus-1/system.d; the test bed installs the wheel.
            node.write_file("/etc/dbus-1/system.d/org.nodemedic.Kube1.conf",
                            (REPO_ROOT / "units/org.nodemedic.Kube1.conf").read_text())
            node.drop_in(f"{GUARD_UNIT}.service", "10-testbed",
                         "[Service]\nExecStart=\nExecStart=/usr/local/bin/nodemedic kube run\n")
            start_nodemedic(node, fleet_config(node))  # reloads dbus: the Kube1 policy is in effect
            start_guard(node)
        yield Fleet(control_plane, nodes)
    finally:
        for node in nodes:
            if os.environ.get("NODEMEDIC_TESTBED_DUMP"):  # what each node's nodemedic and guard said
                print(node.run(["journalctl", "--no-pager", "-o", "short-precise", "-u", "nodemedic",
                                "-u", GUARD_UNIT, "-u", KUBELET], check=False, timeout=120).stdout[-200_000:])
            node.stop()


def _usec(entry: dict) -> int:
    return int(entry["__REALTIME_TIMESTAMP"])


def _step_spans(node: Node, since: str) -> list[tuple[int, float]]:
    """(start, end) of every restart-kubelet on `node`, from its journal (both nodes share the
    host's realtime clock). A crash loop can look healthy for a moment between two crashes, so an
    exhausted episode may be followed by another: a step not finished yet ends at infinity."""
    started = [_usec(e) for e in nodemedic_entries(node, Kind.STEP_STARTED, since, problem=PROBLEM)]
    finished = [_usec(e) for e in nodemedic_entries(node, Kind.STEP_FINISHED, since, problem=PROBLEM)]
    return [(start, next((end for end in finished if end >= start), float("inf"))) for start in started]


def _clear(node: Node, fault: faults.Fault) -> None:
    fault.restore()
    # idle, or healed (a restarted daemon's verification may have caught kubelet between crashes)
    node.wait_for(lambda: phase(node, PROBLEM) in ("", "idle", "healed"), timeout=90, what=f"{PROBLEM} cleared")
    assert cli(node, "forget", PROBLEM).returncode == 0


def test_never_two_nodes_in_a_disruptive_step_at_once(fleet: Fleet) -> None:
    a, b = fleet.nodes
    since = {node.name: node.cursor() for node in fleet.nodes}
    crash = {node.name: faults.crash_loop(node, KUBELET) for node in fleet.nodes}
    try:
        for node in fleet.nodes:
            wait_for_kind(node, Kind.EXHAUSTED, PROBLEM, since[node.name], timeout=180)
        spans = {node.name: _step_spans(node, since[node.name]) for node in fleet.nodes}
        assert all(spans.values()), spans
        for a_start, a_end in spans[a.name]:
            for b_start, b_end in spans[b.name]:
                assert a_end < b_start or b_end < a_start, f"both in restart-kubelet at once: {spans}"
        # The second one waited, and said for whom.
        second, first = (b, a) if spans[a.name][0][0] < spans[b.name][0][0] else (a, b)
        held = nodemedic_entries(second, Kind.FLEET_HELD, since[second.name], problem=PROBLEM)
        assert held and f"waiting for a fleet slot (held by {first.name})" in held[0]["MESSAGE"], held
        assert not nodemedic_entries(first, Kind.FLEET_HELD, since[first.name], problem=PROBLEM)
    finally:
        for node in fleet.nodes:
            _clear(node, crash[node.name])
    lease = fleet.cp.admin().get(LEASE)
    assert not lease["spec"].get("holderIdentity"), lease  # released after each step's verification
    assert lease["spec"]["leaseTransitions"] >= 1


def _renew_usec(lease: dict) -> int:
    renew = dt.datetime.strptime(lease["spec"]["renewTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return int(renew.timestamp() * 1_000_000)


def test_a_holder_killed_mid_step_frees_its_slot_after_the_lease_duration(fleet: Fleet) -> None:
    a, b = fleet.nodes
    since_a, since_b = a.cursor(), b.cursor()
    crash_a = faults.crash_loop(a, KUBELET)
    crash_b = None
    try:
        wait_for_kind(a, Kind.STEP_STARTED, PROBLEM, since_a, timeout=120)
        a.run(["systemctl", "kill", "--signal=SIGKILL", f"{GUARD_UNIT}.service"])  # the holder dies
        lease = fleet.cp.admin().get(LEASE)
        assert lease["spec"]["holderIdentity"] == a.name, lease
        last_write = _renew_usec(lease)
        crash_b = faults.crash_loop(b, KUBELET)
        started = wait_for_kind(b, Kind.STEP_STARTED, PROBLEM, since_b, timeout=120)
        waited = (_usec(started) - last_write) / 1e6
        # Never before the lease duration since the holder's last write, as b's own clock saw it...
        assert waited >= LEASE_SECONDS, f"took the slot {waited:.1f}s after the holder's last renewal"
        held = nodemedic_entries(b, Kind.FLEET_HELD, since_b, problem=PROBLEM)
        assert held and f"held by {a.name}" in held[0]["MESSAGE"]
        # ... and then without anyone writing the Lease: b's guard woke on its observed expiry.
        assert fleet.cp.admin().get(LEASE)["spec"]["holderIdentity"] == b.name
        wait_for_kind(b, Kind.EXHAUSTED, PROBLEM, since_b, timeout=120)
    finally:
        start_guard(a)
        _clear(a, crash_a)
        if crash_b is not None:
            _clear(b, crash_b)


def test_api_server_stopped_holds_disruptive_steps_lets_safe_ones_run_and_catches_up(fleet: Fleet) -> None:
    a = fleet.nodes[0]
    since = a.cursor()
    restarts = a.unit_state("nodemedic.service").n_restarts
    fleet.cp.stop_apiserver()
    crash = None
    try:
        crash = faults.crash_loop(a, KUBELET)
        held = wait_for_kind(a, Kind.FLEET_HELD, PROBLEM, since, timeout=120)
        assert "API server unreachable" in held["MESSAGE"], held
        status = a.run(["systemctl", "show", "--property=StatusText", "--value", "nodemedic"]).stdout
        assert "API server unreachable" in status, status
        # A safe repair runs meanwhile (the held episode gave up the node's repair lock).
        stale = faults.stale_ingest(a)
        try:
            wait_for_kind(a, Kind.HEALED, "ingest-stale", since, timeout=90)
        finally:
            stale.restore()
        assert not nodemedic_entries(a, Kind.STEP_STARTED, since, problem=PROBLEM)
        trouble = nodemedic_entries(a, Kind.FLEET_TROUBLE, since)
        assert len([e for e in trouble if "unreachable" in e["MESSAGE"]
                    and "answers again" not in e["MESSAGE"]]) == 1, trouble  # once per outage
    finally:
        fleet.cp.start_apiserver()
    try:
        # Back: the held step runs (woken by the watch coming back, or the gate's backoff).
        wait_for_kind(a, Kind.STEP_STARTED, PROBLEM, since, timeout=120)
        wait_for_kind(a, Kind.EXHAUSTED, PROBLEM, since, timeout=120)
        assert a.unit_state("nodemedic.service").n_restarts == restarts
        assert a.unit_state(f"{GUARD_UNIT}.service").active_state == "active"
    finally:
        if crash is not None:
            _clear(a, crash)



def test_without_the_guard_running_a_disruptive_step_holds_until_it_comes(fleet: Fleet) -> None:
    b = fleet.nodes[1]
    since = b.cursor()
    b.run(["systemctl", "stop", f"{GUARD_UNIT}.service"])
    crash = faults.crash_loop(b, KUBELET)
    try:
        held = wait_for_kind(b, Kind.FLEET_HELD, PROBLEM, since, timeout=120)
        assert "fleet guard not running" in held["MESSAGE"], held
        assert not nodemedic_entries(b, Kind.STEP_STARTED, since, problem=PROBLEM)
        start_guard(b)  # its name appearing on the bus wakes the held episode
        wait_for_kind(b, Kind.STEP_STARTED, PROBLEM, since, timeout=90)
        wait_for_kind(b, Kind.EXHAUSTED, PROBLEM, since, timeout=120)
    finally:
        start_guard(b)
        _clear(b, crash)


def test_a_daemon_killed_mid_step_has_its_slot_released_by_the_guard(fleet: Fleet) -> None:
    a = fleet.nodes[0]
    since = a.cursor()
    crash = faults.crash_loop(a, KUBELET)
    try:
        wait_for_kind(a, Kind.STEP_STARTED, PROBLEM, since, timeout=120)
        killed = a.cursor()
        killed_at = time.time()  # the nodes' journals use the host's realtime clock
        a.run(["systemctl", "kill", "--signal=SIGKILL", "nodemedic.service"])
        released = wait_for_kind(a, Kind.FLEET_SLOT_RELEASED, None, killed, timeout=60)
        lease = fleet.cp.admin().get(LEASE)
        assert not lease["spec"].get("holderIdentity"), lease
        # Released because org.nodemedic1 vanished, not by expiry: before the lease could expire.
        assert _usec(released) / 1e6 - killed_at < LEASE_SECONDS
    finally:
        a.run(["systemctl", "reset-failed", "nodemedic.service"], check=False)
        a.run(["systemctl", "start", "nodemedic.service"])
        _clear(a, crash)
