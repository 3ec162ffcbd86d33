"""Unit ladders: a failed containerd is restarted over D-Bus (never killed), an operator's clean
stop is left alone, and a crash loop that a restart cannot fix is tried once, reported
`exhausted`, not retried while it lasts, and cleared once the unit runs again.

Every verdict comes from systemd (ActiveState/SubState/NRestarts) and CRI Status in the node.
"""

from __future__ import annotations

import pytest

from nodemedic.report.journal import Kind
from tests.node.medic import (
    cli,
    media_checksums,
    nodemedic_entries,
    phase,
    reload_medic,
    signature_override,
    start_nodemedic,
    steps_started,
    wait_for_kind,
    wait_healed,
)
from tests.node.testbed import faults
from tests.node.testbed.node import Node

pytestmark = pytest.mark.node

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"


@pytest.fixture(scope="module")
def medic(node: Node) -> Node:
    start_nodemedic(node)
    # kubelet's "container runtime is down" must persist 1 min before it counts; 12 s here (its lines come every 5 s).
    signature_override(node, "kubelet-container-runtime-down", 'persists = "1m"', 'persists = "12s"')
    reload_medic(node)
    return node


def running(node: Node, unit: str) -> bool:
    state = node.unit_state(unit)
    return state.active_state == "active" and state.sub_state == "running"


def test_a_failed_containerd_is_restarted_and_answers_cri_again(medic: Node):
    before = media_checksums(medic)
    # Debian's unit restarts containerd by itself; without that, a crash leaves it failed.
    medic.drop_in(CONTAINERD, "90-nmtest-no-restart", "[Service]\nRestart=no\n")
    try:
        cursor = medic.cursor()
        medic.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", CONTAINERD)
        medic.wait_for(lambda: medic.unit_state(CONTAINERD).active_state in ("failed", "active"),
                       what="containerd failed")
        wait_healed(medic, "runtime-down", since=cursor)
        assert medic.cri_status().runtime_ready
        assert running(medic, CONTAINERD)
        assert steps_started(medic, "runtime-down", cursor) == ["restart-containerd"]
        suspected = nodemedic_entries(medic, Kind.SUSPECTED, cursor, problem="runtime-down")
        assert suspected[0]["NODEMEDIC_SIGNATURE"] == "unit:failed"
    finally:
        medic.remove_drop_in(CONTAINERD, "90-nmtest-no-restart")
    assert media_checksums(medic) == before


def test_an_operators_stop_is_not_undone(medic: Node, fast_kubelet):
    before = media_checksums(medic)
    assert cli(medic, "forget", "runtime-down").returncode == 0  # the heal above; start afresh
    cursor = medic.cursor()
    medic.systemctl("stop", CONTAINERD)
    try:
        # kubelet reports the runtime down for longer than the signature asks: nodemedic looks,
        # sees a unit stopped cleanly by an operator, and does nothing.
        wait_for_kind(medic, Kind.SUSPECTED, "runtime-down", cursor, timeout=60)
        wait_for_kind(medic, Kind.NOT_CONFIRMED, "runtime-down", cursor, timeout=30)
        state = medic.unit_state(CONTAINERD)
        assert (state.active_state, state.result) == ("inactive", "success")
        assert steps_started(medic, "runtime-down", cursor) == []
        assert steps_started(medic, "containerd-crash-loop", cursor) == []
    finally:
        medic.systemctl("start", CONTAINERD)
    medic.wait_for(lambda: medic.cri_status().runtime_ready, what="containerd back")
    assert media_checksums(medic) == before


def test_a_crash_loop_that_cannot_be_healed_is_exhausted_then_clears(medic: Node, inject):
    before = media_checksums(medic)
    cursor = medic.cursor()
    fault = inject(faults.crash_loop, KUBELET)  # fails on every start: no config file
    exhausted = wait_for_kind(medic, Kind.EXHAUSTED, "kubelet-crash-loop", cursor, timeout=90)
    assert "every step of the ladder was tried" in exhausted["MESSAGE"]
    assert phase(medic, "kubelet-crash-loop") == "exhausted"
    assert steps_started(medic, "kubelet-crash-loop", cursor) == ["restart-kubelet"]
    finished = nodemedic_entries(medic, Kind.STEP_FINISHED, cursor, problem="kubelet-crash-loop")
    assert [e["NODEMEDIC_RESULT"] for e in finished] == ["failed"]
    # The loop goes on (systemd restarts kubelet every second); nodemedic does not follow it.
    restarts = medic.unit_state(KUBELET).n_restarts
    medic.wait_for(lambda: medic.unit_state(KUBELET).n_restarts >= restarts + 10, timeout=60,
                   what="ten more crashes")
    assert steps_started(medic, "kubelet-crash-loop", cursor) == ["restart-kubelet"]
    assert len(nodemedic_entries(medic, Kind.EXHAUSTED, cursor, problem="kubelet-crash-loop")) == 1
    assert phase(medic, "kubelet-crash-loop") == "exhausted"
    # The operator fixes kubelet: it keeps running, and the problem clears by itself.
    fault.restore()
    medic.wait_for(lambda: phase(medic, "kubelet-crash-loop") == "idle", timeout=60, what="problem cleared")
    assert running(medic, KUBELET)
    assert steps_started(medic, "kubelet-crash-loop", cursor) == ["restart-kubelet"]
    assert media_checksums(medic) == before
