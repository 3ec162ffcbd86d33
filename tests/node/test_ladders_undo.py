"""A step that stops units is undone when it is cut off: nodemedic SIGKILLed at every boundary of
every step that calls StopUnit — the containerd-root move-aside (containerd-metadata-corrupt) and
the aggressive node reset (top of containerd-crash-loop's ladder) — starts what the step stopped
before it verifies, climbs or gives up (issue 18, item 4).

Each step records a unit (fsync'd in state.json, `undo`) before it stops it. To kill the daemon
at a boundary deterministically, the boundary is made long: drop-ins give kubelet and containerd
a 4 s ExecStopPost/ExecStartPre, and the step unit (the reset's leftover removal) a 4 s
ExecStartPre, so each StopUnit/StartUnit job the step waits for stays pending that long. The
test waits until state.json and systemd show the step inside that job, then SIGKILLs
nodemedic; systemd restarts it (Restart=on-failure). The fault is real (a torn meta.db:
containerd panics at every start) and the verdicts come from systemd and CRI.

Killed before the root moved, the restored units meet the same corrupt root: the step is not
idempotent, so it is never applied again, its verification fails, and the problem ends
exhausted — with kubelet running, which it did not before this fix. Killed after the move, the
restore brings containerd up on the fresh root and the step verifies: healed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from nodemedic.journal import Kind
from tests.node.medic import (
    STATE,
    forget,
    nodemedic_entries,
    start_nodemedic,
    steps_started,
    wait_for_kind,
)
from tests.node.testbed import faults
from tests.node.testbed.node import Node

pytestmark = pytest.mark.node

KUBELET, CONTAINERD = "kubelet.service", "containerd.service"
LEFTOVERS_UNIT = "nodemedic-step@remove-cni-leftovers.service"
HOLD = "[Service]\nExecStopPost=/bin/sleep 4\nExecStartPre=/bin/sleep 4\n"
# containerd's crash loop restarts at once (Debian waits 5 s): a StopUnit that finds it between
# two starts ends at once, with no job to be inside of. Every cycle still takes 8 s (the holds),
# far from systemd's default start limit (5 starts in 10 s).
CONTAINERD_HOLD = HOLD + "RestartSec=100ms\n"
MASKED = "/etc/nodemedic/signatures.d/containerd-metadata-bolt-corrupt.toml"
DESTRUCTIVE = "/etc/nodemedic/conf.d/60-destructive.toml"
PROBLEMS = ("containerd-metadata-corrupt", "containerd-crash-loop", "runtime-down")


@pytest.fixture(scope="module")
def medic(node: Node) -> Iterator[Node]:
    node.drop_in(KUBELET, "50-slow-jobs", HOLD, reload=False)
    node.drop_in(CONTAINERD, "50-slow-jobs", CONTAINERD_HOLD, reload=False)
    node.drop_in("nodemedic-step@.service", "50-slow-jobs", "[Service]\nExecStartPre=/bin/sleep 4\n", reload=False)
    node.daemon_reload()
    start_nodemedic(node)
    yield node


def undo(node: Node, problem: str) -> list[str]:
    return json.loads(node.read_file(STATE))["problems"].get(problem, {}).get("undo", [])


def active(node: Node, unit: str) -> str:
    return node.unit_state(unit).active_state


def moved(node: Node) -> bool:
    return bool(faults.moved_aside_roots(node))


# Each boundary: a description, and when the step is inside it (state.json's undo log and systemd).
Boundary = Callable[[Node, str], bool]
BOUNDARIES: dict[str, Boundary] = {
    "stopping kubelet": lambda n, p: undo(n, p) == [KUBELET] and active(n, KUBELET) == "deactivating",
    "stopping containerd": lambda n, p: undo(n, p) == [KUBELET, CONTAINERD] and active(n, CONTAINERD) == "deactivating",
    "starting containerd on the fresh root": lambda n, p: moved(n) and undo(n, p) == [KUBELET, CONTAINERD]
    and active(n, CONTAINERD) == "activating",
    "starting kubelet": lambda n, p: moved(n) and undo(n, p) == [KUBELET] and active(n, KUBELET) == "activating",
}
# The reset also removes the network leftovers (in its step unit) while both units are stopped.
RESET_BOUNDARIES: dict[str, Boundary] = {
    **BOUNDARIES,
    "removing the network leftovers": lambda n, p: undo(n, p) == [KUBELET, CONTAINERD]
    and active(n, LEFTOVERS_UNIT) == "activating",
}


def policy(node: Node, problem: str) -> None:
    """Destructive steps allowed; only `problem`'s ladder acts (the others share the crash loop)."""
    others = "".join(f"\n[problems.{p}]\nenabled = false\n" for p in PROBLEMS if p != problem)
    node.write_file(DESTRUCTIVE, "[policy]\nallow_destructive = true\n" + others)
    node.systemctl("reload", "nodemedic")


@pytest.fixture
def corrupt(medic: Node, inject) -> Iterator[Callable[[], None]]:
    """Call it to tear meta.db (after the policy is in place); afterwards the root is put back,
    the policy dropped and the problems forgotten."""
    injected: list[faults.Fault] = []
    yield lambda: injected.append(inject(faults.corrupt_containerd_metadata))
    for fault in injected:
        fault.restore()
    medic.run(["rm", "-f", "--", DESTRUCTIVE, MASKED])
    medic.systemctl("reload", "nodemedic")
    for problem in PROBLEMS:
        forget(medic, problem)
    medic.systemctl("start", KUBELET)


def kill_at(node: Node, problem: str, boundary: Boundary, what: str, timeout: float) -> None:
    restarts = node.unit_state("nodemedic.service").n_restarts
    node.wait_for(lambda: boundary(node, problem), timeout=timeout, interval=0.2, what=f"the step {what}")
    node.systemctl("kill", "--signal=SIGKILL", "nodemedic")
    node.wait_for(lambda: node.unit_state("nodemedic.service").n_restarts > restarts, what="systemd restarts nodemedic")


def check_outcome(node: Node, problem: str, step: str, cursor: str) -> None:
    healed_or_exhausted = node.wait_for(
        lambda: nodemedic_entries(node, Kind.HEALED, cursor, problem=problem)
        or nodemedic_entries(node, Kind.EXHAUSTED, cursor, problem=problem), timeout=180, what=f"{problem} settled")
    # What the step stopped runs again (before this fix kubelet stayed stopped) ...
    node.wait_for(lambda: active(node, KUBELET) == "active", timeout=30, what="kubelet running again")
    # ... started by the resumed daemon, containerd before kubelet, and said so.
    restored = [e["NODEMEDIC_UNIT"] for e in nodemedic_entries(node, Kind.RESTORED, cursor, problem=problem)]
    assert restored and restored[-1] == KUBELET and restored == sorted(restored, key=[CONTAINERD, KUBELET].index)
    assert undo(node, problem) == []
    # Not idempotent: applied once, then only verified after the restart.
    started = nodemedic_entries(node, Kind.STEP_STARTED, cursor, problem=problem)
    assert [e["NODEMEDIC_STEP"] for e in started if "NODEMEDIC_RESUMED" not in e].count(step) == 1
    assert [e["NODEMEDIC_STEP"] for e in started if "NODEMEDIC_RESUMED" in e] == [step]
    assert len(faults.moved_aside_roots(node)) <= 1
    if faults.moved_aside_roots(node):
        assert healed_or_exhausted[-1]["MESSAGE_ID"] == Kind.HEALED.value
        assert node.cri_status().runtime_ready


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_sigkill_inside_the_move_aside_restores_the_stopped_units(medic: Node, cursor: str, corrupt, boundary: str):
    problem = "containerd-metadata-corrupt"
    policy(medic, problem)
    corrupt()
    kill_at(medic, problem, BOUNDARIES[boundary], boundary, timeout=120)
    check_outcome(medic, problem, "move-containerd-root-aside", cursor)


@pytest.mark.parametrize("boundary", list(RESET_BOUNDARIES))
def test_sigkill_inside_the_aggressive_reset_restores_the_stopped_units(medic: Node, cursor: str, corrupt,
                                                                        boundary: str):
    problem = "containerd-crash-loop"
    medic.write_file(MASKED, "")  # the crash loop reaches nodemedic from systemd, as in test_ladders_node_reset
    policy(medic, problem)
    corrupt()
    kill_at(medic, problem, RESET_BOUNDARIES[boundary], boundary, timeout=300)
    check_outcome(medic, problem, "aggressive-node-reset", cursor)
    assert steps_started(medic, problem, cursor)[:2] == ["restart-containerd", "gentle-node-reset"]


def test_a_reset_refused_after_its_stops_starts_them_again(medic: Node, cursor: str, corrupt):
    """The aggressive reset re-checks for running shims after stopping the units; refused there
    (a leftover shim: a process named containerd-shim), it fails — and kubelet and containerd
    are started again before the ladder gives up."""
    problem = "containerd-crash-loop"
    medic.write_file(MASKED, "")
    policy(medic, problem)
    corrupt()
    # A "shim" appears once the reset has stopped kubelet (a container started since the gate looked).
    medic.wait_for(lambda: undo(medic, problem) == [KUBELET], timeout=300, interval=0.2, what="kubelet being stopped")
    # comm is the executable's name: a copy of sleep named like a shim is one to /proc
    medic.run(["cp", "/bin/sleep", "/run/containerd-shim-runc-v2"])
    medic.run(["systemd-run", "--quiet", "--unit=nmtest-fake-shim", "/run/containerd-shim-runc-v2", "600"])
    try:
        exhausted = wait_for_kind(medic, Kind.EXHAUSTED, problem, cursor, timeout=180)
        assert "every step of the ladder was tried" in exhausted["MESSAGE"]
        failed = nodemedic_entries(medic, Kind.STEP_FINISHED, cursor, problem=problem, step="aggressive-node-reset")
        assert "refused after stopping the units" in failed[-1]["MESSAGE"]
        restored = [e["NODEMEDIC_UNIT"] for e in nodemedic_entries(medic, Kind.RESTORED, cursor, problem=problem)]
        assert restored == [CONTAINERD, KUBELET]
        assert active(medic, KUBELET) == "active"
        assert not faults.moved_aside_roots(medic)
    finally:
        medic.systemctl("stop", "nmtest-fake-shim", check=False)
