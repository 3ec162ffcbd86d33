"""The imagefs-capacity-zero ladder: warm-up, restart containerd, restart kubelet.

Which kubelet (testbed/kubelet_bed.py): on bookworm and trixie (containerd 1.6/1.7, CRI v1alpha2)
the real kubelet 1.20.2, registered with a control plane of the module's own; its CRI stats
provider sizes the image filesystem containerd names in ImageFsInfo (cAdvisor's GetDirFsInfo)
every 10 s for the eviction manager and logs "Failed to get the info of the filesystem with
mountpoint" when it cannot (signature kubelet-imagefs-info-unavailable, 5 min shortened to 15 s
here). On trixie-containerd2 (CRI v1 only, which kubelet 1.20 cannot speak) the kubelet stand-in
does the same sizing and logs the image GC's "invalid capacity 0 on image filesystem" lines.
nodemedic's verdict is its own: ImageFsInfo + statvfs in the node.

What the real kubelet 1.20 cannot be made to show here, and why: "Image garbage collection
failed ... invalid capacity 0 on image filesystem" (kubelet-imagefs-invalid-capacity). Image GC
runs at kubelet's start and then every 5 minutes, a constant in 1.20 (kubelet.go
ImageGCPeriod); at start it fails only in a race with cAdvisor's first stats, and a fault injected
later waits up to 5 minutes for the next GC. So that signature's ladder runs against the
stand-in's (period a knob) on trixie-containerd2; on the real kubelet the same fault reaches the
same problem through the stats provider's line, which comes within 10 s.
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
from tests.node.testbed.kubelet_bed import LadderKubelet
from tests.node.testbed.node import Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2")]

ROOT = faults.CONTAINERD_ROOT
SNAPSHOTTER = faults.SNAPSHOTTER
PROBLEM = "imagefs-capacity-zero"


@pytest.fixture(scope="module")
def medic(node: Node, ladder_kubelet: LadderKubelet) -> Node:
    start_nodemedic(node, "\n[problems.imagefs-capacity-zero]\nattempt_budget = 2\n")
    if ladder_kubelet.is_real:
        # The stats provider's line comes every 10 s; 5 min before it counts is for real nodes.
        signature_override(node, "kubelet-imagefs-info-unavailable", 'persists = "5m"', 'persists = "15s"')
        reload_medic(node)
    return node


def capacities(node: Node) -> list[int | None]:
    return [fs.get("capacity_bytes") for fs in node.imagefs_capacity()]



def test_a_vanished_image_filesystem_is_healed_by_restarting_containerd(medic: Node, quick_kubelet: LadderKubelet,
                                                                        inject):
    before = media_checksums(medic)
    assert all(c for c in capacities(medic))
    if quick_kubelet.is_real:
        assert quick_kubelet.imagefs_capacity(), quick_kubelet.stats_summary()["node"].get("runtime")
    cursor = medic.cursor()
    inject(faults.snapshotter_moved)
    if quick_kubelet.is_real:
        # kubelet's stats provider cannot size the mountpoint ImageFsInfo names (every 10 s).
        line = medic.wait_for_journal("Failed to get the info of the filesystem with mountpoint",
                                      unit="kubelet.service", since=cursor, timeout=60)
        assert SNAPSHOTTER in line["MESSAGE"], line
    else:
        # kubelet's image GC (every 2 s here) fails twice in a row: the signature's threshold.
        medic.wait_for_journal("Image garbage collection failed multiple times in a row", unit="kubelet.service",
                               since=cursor, timeout=30)
    healed = wait_healed(medic, PROBLEM, since=cursor, timeout=120 if quick_kubelet.is_real else 90)
    assert "restart-containerd" in healed["MESSAGE"]
    # warm-up first (it cannot bring the directory back), containerd next; kubelet not needed
    assert steps_started(medic, PROBLEM, cursor) == ["imagefs-warm-up", "restart-containerd"]
    assert all(c and c > 0 for c in capacities(medic)), medic.imagefs_capacity()
    if quick_kubelet.is_real:
        # kubelet sizes its image filesystem again, itself (its summary API, not nodemedic's view).
        medic.wait_for(lambda: (quick_kubelet.imagefs_capacity() or 0) > 0, timeout=60,
                       what="kubelet's own imageFs capacity > 0")
    else:
        medic.wait_for_journal('"Image garbage collection succeeded"', unit="kubelet.service",
                               since=healed["__CURSOR"], timeout=30)
    assert media_checksums(medic) == before


def test_a_dangling_symlinked_root_gets_the_repoint_advice_and_stops_at_the_budget(medic: Node,
                                                                                   quick_kubelet: LadderKubelet,
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
