"""The imagefs-capacity-zero ladder: warm-up, restart containerd, restart kubelet.

The kubelet stand-in sizes containerd's image filesystem the way kubelet/cAdvisor do (CRI
ImageFsInfo, then stat/statvfs of the mountpoint) and logs the real "invalid capacity 0 on image
filesystem" lines when it cannot; nodemedic's verdict is ImageFsInfo + statvfs in the node.
"""

from __future__ import annotations

import pytest

from nodemedic.report.journal import Kind
from tests.node.medic import (
    cli,
    media_checksums,
    nodemedic_entries,
    phase,
    start_nodemedic,
    steps_started,
    wait_for_kind,
    wait_healed,
)
from tests.node.testbed import faults
from tests.node.testbed.node import Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2")]

ROOT = faults.CONTAINERD_ROOT
SNAPSHOTTER = faults.SNAPSHOTTER
PROBLEM = "imagefs-capacity-zero"


@pytest.fixture(scope="module")
def medic(node: Node) -> Node:
    start_nodemedic(node, "\n[problems.imagefs-capacity-zero]\nattempt_budget = 2\n")
    return node


def capacities(node: Node) -> list[int | None]:
    return [fs.get("capacity_bytes") for fs in node.imagefs_capacity()]



def test_a_vanished_image_filesystem_is_healed_by_restarting_containerd(medic: Node, fast_kubelet, inject):
    before = media_checksums(medic)
    assert all(c for c in capacities(medic))
    cursor = medic.cursor()
    inject(faults.snapshotter_moved)
    # kubelet's image GC (every 2 s here) fails twice in a row: the signature's threshold.
    medic.wait_for_journal("Image garbage collection failed multiple times in a row", unit="kubelet.service",
                           since=cursor, timeout=30)
    healed = wait_healed(medic, PROBLEM, since=cursor, timeout=90)
    assert "restart-containerd" in healed["MESSAGE"]
    # warm-up first (it cannot bring the directory back), containerd next; kubelet not needed
    assert steps_started(medic, PROBLEM, cursor) == ["imagefs-warm-up", "restart-containerd"]
    assert all(c and c > 0 for c in capacities(medic)), medic.imagefs_capacity()
    medic.wait_for_journal('"Image garbage collection succeeded"', unit="kubelet.service",
                           since=healed["__CURSOR"], timeout=30)
    assert media_checksums(medic) == before


def test_a_dangling_symlinked_root_gets_the_repoint_advice_and_stops_at_the_budget(medic: Node, fast_kubelet,
                                                                                   inject):
    """containerd's root is a symlink to a data disk that went away: no restart can fix that.
    nodemedic says how to (`nodemedic repoint`), tries warm-up and a containerd restart (its budget
    of 2 here), and reports `exhausted` instead of restarting kubelet or looping."""
    before = media_checksums(medic)
    cursor = medic.cursor()
    fault = inject(faults.containerd_root_symlink)
    faults.detach(medic, fault)
    exhausted = wait_for_kind(medic, Kind.EXHAUSTED, PROBLEM, cursor, timeout=90)
    assert "attempt budget of 2 used" in exhausted["MESSAGE"]
    assert steps_started(medic, PROBLEM, cursor) == ["imagefs-warm-up", "restart-containerd"]
    advice = nodemedic_entries(medic, Kind.HELD_BACK, cursor, problem=PROBLEM)
    assert advice and "nodemedic repoint" in advice[0]["MESSAGE"], advice
    assert phase(medic, PROBLEM) == "exhausted"
    # containerd cannot start on a dangling root and systemd keeps trying; kubelet's image GC
    # keeps failing: the ladder is not climbed again
    restarts = medic.unit_state("containerd.service").n_restarts
    medic.wait_for(lambda: medic.unit_state("containerd.service").n_restarts >= restarts + 2, timeout=30,
                   what="containerd failing on, twice more")
    assert steps_started(medic, PROBLEM, cursor) == ["imagefs-warm-up", "restart-containerd"]
    assert medic.run(["readlink", ROOT]).stdout.strip() == fault.info["target"], "the root must be left alone"
    fault.restore()
    medic.wait_for(lambda: medic.cri_status().runtime_ready, what="containerd back on its own root")
    assert cli(medic, "forget", PROBLEM).returncode == 0
    assert media_checksums(medic) == before
