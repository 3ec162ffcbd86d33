"""Unit ladders: a failed containerd is restarted over D-Bus (never killed), an operator's clean
stop is left alone, and a crash loop that a restart cannot fix is tried once, reported
`exhausted`, not retried while it lasts, and cleared once the unit runs again. A runtime that hangs
(kubelet's PLEG reports it for the signature's whole window: kubelet's relist is the live probe)
is restarted once, and healed only when nodemedic's own relist answers again.

Every verdict comes from systemd (ActiveState/SubState/NRestarts) and CRI Status in the node.

Which kubelet (testbed/kubelet_bed.py): on bookworm and trixie (containerd 1.6/1.7, CRI v1alpha2)
the real kubelet 1.20.2, registered with a control plane of the module's own, writes the lines
and is the unit that crash-loops; on trixie-containerd2 (containerd 2.x serves only CRI v1, which
kubelet 1.20 cannot speak) the kubelet stand-in stays.

What the real kubelet 1.20 cannot be made to show here, and why:
- PLEG on its own. Its relist threshold is 3 min, a constant in 1.20 (pleg/generic.go), and the
  relist and the runtime status check ask the same containerd: a hung containerd makes kubelet
  say "container runtime is down" after 30 s (maxWaitForContainerRuntime, also a constant), and
  nodemedic's runtime-down ladder restarts containerd long before PLEG's 3 minutes are up (the
  PLEG line, when it comes, is "[container runtime is down, PLEG is not healthy: ...]").
  A stalled relist with a healthy Status needs a CRI proxy in front of containerd: not built.
  So on the real kubelet's stacks a hung runtime is healed through runtime-down
  (test_a_hung_runtime_reported_down_by_the_real_kubelet_is_restarted_once), and the PLEG
  ladder runs against the stand-in (its threshold a knob) on trixie-containerd2 only.
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
from tests.node.testbed.kubelet_bed import LadderKubelet, crash_loop_kubelet
from tests.node.testbed.node import NODE_PYTHON, Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2")]

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"
# The real kubelet gives every CRI call 2 min by default (runtimeRequestTimeout). A hung containerd
# then blocks its sync loop's housekeeping (ListPodSandbox) for those 2 min, and only after that
# does the loop log "container runtime is down"; 10 s here, as the stand-in's CRI_TIMEOUT is short.
REAL_KUBELET_CONFIG = {"runtimeRequestTimeout": "10s"}


@pytest.fixture(scope="module")
def medic(node: Node, ladder_kubelet: LadderKubelet) -> Node:
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


def test_an_operators_stop_is_not_undone(medic: Node, quick_kubelet: LadderKubelet):
    before = media_checksums(medic)
    assert cli(medic, "forget", "runtime-down").returncode == 0  # the heal above; start afresh
    cursor = medic.cursor()
    medic.systemctl("stop", CONTAINERD)
    try:
        # kubelet reports the runtime down for longer than the signature asks: nodemedic looks,
        # sees a unit stopped cleanly by an operator, and does nothing. The stand-in says so
        # after 6 s here; the real kubelet after 30 s (a constant in 1.20), its lines then every 5 s.
        down_after = 30 if quick_kubelet.is_real else 6
        wait_for_kind(medic, Kind.SUSPECTED, "runtime-down", cursor, timeout=down_after + 54)
        wait_for_kind(medic, Kind.NOT_CONFIRMED, "runtime-down", cursor, timeout=30)
        state = medic.unit_state(CONTAINERD)
        assert (state.active_state, state.result) == ("inactive", "success")
        assert steps_started(medic, "runtime-down", cursor) == []
        assert steps_started(medic, "containerd-crash-loop", cursor) == []
    finally:
        medic.systemctl("start", CONTAINERD)
    medic.wait_for(lambda: medic.cri_status().runtime_ready, what="containerd back")
    assert media_checksums(medic) == before


def test_a_crash_loop_that_cannot_be_healed_is_exhausted_then_clears(medic: Node, ladder_kubelet: LadderKubelet,
                                                                     inject):
    before = media_checksums(medic)
    cursor = medic.cursor()
    fault = inject(crash_loop_kubelet, ladder_kubelet)  # fails on every start: no config file
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
    if ladder_kubelet.is_real:
        # It really failed on the missing config, and runs for real again: its Node Ready.
        medic.wait_for_journal("failed to load Kubelet config file", unit=KUBELET, since=cursor)
        ladder_kubelet.wait_healthy()
    assert media_checksums(medic) == before


_RELIST = """
import asyncio, json, sys
from nodemedic.probes.cri import CriClient
async def main():
    async with CriClient() as cri:
        json.dump(len(await cri.list_pod_sandboxes(timeout=float(sys.argv[1]))), sys.stdout)
asyncio.run(main())
"""


def relist_answers(node: Node, timeout: float = 3.0) -> bool:
    """CRI ListPodSandbox (PLEG's relist) answers from inside the node within `timeout`."""
    return node.run([NODE_PYTHON, "-c", _RELIST, str(timeout)], check=False, timeout=timeout + 30).returncode == 0


def process_state(node: Node, pid: int) -> str:
    """The kernel's one-letter state of `pid` in the node (T = stopped by a signal)."""
    for line in node.read_file(f"/proc/{pid}/status").decode().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    raise AssertionError(f"no State in /proc/{pid}/status")


def hang_containerd(node: Node) -> faults.Fault:
    """A hung runtime: containerd's main process stopped with SIGSTOP. Its socket stays and the
    kernel still queues connections, but nothing answers, as with a runtime blocked on IO.
    (`systemctl freeze` would be the cleaner tool, but the node's systemd runs with hybrid cgroups
    in nspawn and refuses: "does not support freezing"; the cgroup v2 freezer is needed.)"""
    pid = node.unit_state(CONTAINERD).main_pid
    node.systemctl("kill", "--signal=SIGSTOP", "--kill-who=main", CONTAINERD)
    node.wait_for(lambda: process_state(node, pid) == "T", what="containerd stopped")

    def restore() -> None:
        # Harmless when nodemedic already restarted it: the new process gets a SIGCONT it ignores.
        node.systemctl("kill", "--signal=SIGCONT", "--kill-who=main", CONTAINERD, check=False)
        node.wait_for(lambda: node.cri_status().runtime_ready, what="containerd answering again")

    return faults.Fault("hang-containerd", restore, {"pid": pid})


@pytest.mark.stacks("trixie-containerd2")  # the stand-in's stack: see the module's docstring
def test_a_hung_runtime_behind_pleg_is_restarted_once(medic: Node, inject):
    before = media_checksums(medic)
    # PLEG unhealthy after 5 s without a relist (kubelet: 3 min), each CRI call given up after 1 s;
    # -v=4 and image GC every 2 s so a successful GC proves the stand-in's CRI calls work.
    since = medic.cursor()
    medic.configure_kubelet(pleg_threshold=5, cri_timeout=1, image_gc_period=2, v=4)
    medic.wait_for_journal('"Image garbage collection succeeded"', unit=KUBELET, since=since, timeout=20)
    # Its lines come at least every 5 s (the sync loop's longest backoff) plus up to 3 s of CRI calls
    # timing out in the same loop; 10 s of them is the shortened "persists".
    signature_override(medic, "kubelet-pleg-not-healthy", 'persists = "1m"', 'persists = "10s"')
    reload_medic(medic)
    fault: faults.Fault | None = None
    try:
        cursor = medic.cursor()
        fault = inject(hang_containerd)
        assert not relist_answers(medic)
        medic.wait_for_journal("PLEG is not healthy: pleg was last seen active", unit=KUBELET, since=cursor)

        wait_healed(medic, "pleg-unhealthy", since=cursor, timeout=90)
        suspected = nodemedic_entries(medic, Kind.SUSPECTED, cursor, problem="pleg-unhealthy")
        assert suspected[0]["NODEMEDIC_SIGNATURE"] == "kubelet-pleg-not-healthy"
        confirmed = nodemedic_entries(medic, Kind.CONFIRMED, cursor, problem="pleg-unhealthy")
        assert "confirmed by its signature's threshold" in confirmed[0]["MESSAGE"]
        assert steps_started(medic, "pleg-unhealthy", cursor) == ["restart-containerd"]
        # A restart over D-Bus replaced the stopped process (systemd follows its SIGTERM with a
        # SIGCONT, so no thaw step is needed), and the new one answers the relist PLEG makes.
        assert medic.unit_state(CONTAINERD).main_pid != fault.info["pid"]
        assert running(medic, CONTAINERD)
        assert relist_answers(medic)
        # The stand-in's CRI calls succeed again: its "container runtime is down" (due 30 s into
        # the hang) stays away, and a late one would meet a healthy CRI Status and not be confirmed.
        medic.wait_for_journal('"Image garbage collection succeeded"', unit=KUBELET, since=medic.cursor(),
                               timeout=20)
        # One repair for one fault: no other problem (runtime-down, containerd-crash-loop) restarted anything.
        started = nodemedic_entries(medic, Kind.STEP_STARTED, cursor)
        assert [(e["NODEMEDIC_PROBLEM"], e["NODEMEDIC_STEP"]) for e in started] == [
            ("pleg-unhealthy", "restart-containerd")]
        assert phase(medic, "pleg-unhealthy") == "healed"
    finally:
        if fault is not None:
            fault.restore()  # before the stand-in restarts, so it starts against a live runtime
        medic.run(["rm", "-f", "/etc/nodemedic/signatures.d/kubelet-pleg-not-healthy.toml"])
        reload_medic(medic)
        medic.configure_kubelet()
        cli(medic, "forget", "pleg-unhealthy")
    assert media_checksums(medic) == before


@pytest.mark.stacks("trixie", "bookworm")  # the real kubelet's stacks: see the module's docstring
def test_a_hung_runtime_reported_down_by_the_real_kubelet_is_restarted_once(medic: Node, ladder_kubelet: LadderKubelet,
                                                                            inject):
    """containerd hangs (SIGSTOP); the real kubelet's runtime status check gets no answer and after
    30 s it skips pod sync, "container runtime is down", every 5 s. nodemedic confirms it with its
    own CRI Status (no answer either), restarts containerd once, and the kubelet sees the runtime
    again: its Node goes Ready."""
    assert ladder_kubelet.is_real
    before = media_checksums(medic)
    cli(medic, "forget", "runtime-down")  # the tests above raised it; start afresh
    ladder_kubelet.wait_healthy()
    fault: faults.Fault | None = None
    try:
        cursor = medic.cursor()
        fault = inject(hang_containerd)
        assert not relist_answers(medic)
        line = medic.wait_for_journal("skipping pod synchronization - .*container runtime is down", unit=KUBELET,
                                      since=cursor, timeout=90)
        assert line["MESSAGE"][0] in "IWEF", line  # klog's header: the real kubelet, not a forged line
        wait_healed(medic, "runtime-down", since=cursor, timeout=120)
        suspected = nodemedic_entries(medic, Kind.SUSPECTED, cursor, problem="runtime-down")
        assert suspected[0]["NODEMEDIC_SIGNATURE"] == "kubelet-container-runtime-down"
        assert steps_started(medic, "runtime-down", cursor) == ["restart-containerd"]
        assert medic.unit_state(CONTAINERD).main_pid != fault.info["pid"]
        assert running(medic, CONTAINERD)
        assert relist_answers(medic)
        # One repair for one fault: PLEG's 3 minutes were never reached, nothing else acted.
        started = nodemedic_entries(medic, Kind.STEP_STARTED, cursor)
        assert [(e["NODEMEDIC_PROBLEM"], e["NODEMEDIC_STEP"]) for e in started] == [
            ("runtime-down", "restart-containerd")]
        ladder_kubelet.wait_healthy()
        assert phase(medic, "runtime-down") == "healed"
    finally:
        if fault is not None:
            fault.restore()
        cli(medic, "forget", "runtime-down")
    assert media_checksums(medic) == before
