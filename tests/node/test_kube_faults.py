"""Faults under the real kubelet 1.20.2 (Debian's source, testbed/kube.py) and containerd 1.6 in a
bookworm node, registered with the test bed's real API server: each test makes the real kubelet
log what a kubelet signature claims to know, checks the line against today's signature, and shows
the Node's Ready condition on the API server going False and coming back.

With NODEMEDIC_KUBE_CAPTURE=FILE the captured lines are appended to FILE as JSON (one per line:
fault, signature, matched, line); tests/corpus/kubelet-*.log carry them under
"# captured: kubelet v1.20.2 (Debian source) + containerd <v> on <stack>, fault <name>, <date>".

Kubelet 1.20 logs in klog's free-text form ("skipping pod synchronization - %v"), not the
structured one of >= 1.21; both are in the signatures.

What kubelet 1.20 cannot be made to show here, and why:
- "PLEG is not healthy" on its own: the PLEG relist and the runtime status check both talk to the
  same containerd, so any fault that stalls the relist for 3 minutes also fails the status
  check, and kubelet reports both ("[container runtime is down, PLEG is not healthy: ...]").
  A stalled relist with a healthy Status needs a CRI proxy in front of containerd; not built.
- "Image garbage collection failed ... invalid capacity 0": image GC runs at kubelet start and
  then every 5 minutes (a constant in kubelet.go). At start it fails only when cAdvisor has no
  stats for the image filesystem yet, which is a race (seen by issue 14's first try, not in
  this session's runs); a fault injected later waits up to 5 minutes for the next GC, more
  than CI can spend. The CRI stats provider's "Failed to get the info of the filesystem with
  mountpoint" line for the same fault comes within seconds and is captured.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodemedic.detector.signatures import load_catalogue
from nodemedic.hostroot import HostRoot
from tests.node.testbed import faults
from tests.node.testbed.kube_node import Kubelet
from tests.node.testbed.node import Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("bookworm")]  # where the real kubelet was verified

REPO = Path(__file__).resolve().parents[2]
SIGNATURES = {s.id: s for s in load_catalogue(HostRoot(REPO / "tests" / "no-such-root")).signatures}
# kubelet 1.20's klog header: severity, date, time, thread id, file:line]
KLOG = r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.-]+:\d+\] "
SNAPSHOTTER = faults.SNAPSHOTTER


def capture(node: Node, fault: str, signature: str, message: str) -> bool:
    """Whether today's `signature` matches the real line; recorded for the corpus on request."""
    matched = SIGNATURES[signature].matches(message)
    out = os.environ.get("NODEMEDIC_KUBE_CAPTURE")
    if out:
        containerd = node.run(["containerd", "--version"]).stdout.split()[2]
        with open(out, "a") as f:
            f.write(json.dumps({"fault": fault, "signature": signature, "matched": matched,
                                "containerd": containerd, "stack": "bookworm", "line": message,
                                "date": time.strftime("%Y-%m-%d")}) + "\n")
    return matched


def kubelet_line(node: Node, pattern: str, since: str, timeout: float = 60.0) -> str:
    return node.wait_for_journal(KLOG + pattern, unit="kubelet.service", since=since, timeout=timeout)["MESSAGE"]


@pytest.fixture
def ready_again(kubelet: Kubelet) -> Iterator[Kubelet]:
    """The fault's restore (by `inject`) runs before this teardown: the node must be Ready again.
    Within 180 s: kubelet 1.20 dials containerd with gRPC's default reconnect backoff (1 s x 1.6
    per failure, at most 120 s, +-20 % jitter; the 3 s cap came only with later kubelets), so
    after a 3-minute outage its next dial can come up to 144 s after containerd is back, then
    the runtime check (5 s) and the node status update (10 s). 120 s failed once in CI."""
    yield kubelet
    kubelet.wait_ready(timeout=180)



def test_imagefs_info_unavailable(node: Node, ready_again: Kubelet, inject, cursor: str) -> None:
    inject(faults.snapshotter_moved)
    line = kubelet_line(node, "Failed to get the info of the filesystem with mountpoint", cursor, timeout=90)
    assert SNAPSHOTTER in line, line
    assert capture(node, "overlayfs snapshotter dir moved away", "kubelet-imagefs-info-unavailable", line), line


def test_network_plugin_not_ready(node: Node, ready_again: Kubelet, inject, cursor: str) -> None:
    inject(faults.empty_cni_dir, restart_containerd=True)
    line = kubelet_line(node, "Container runtime network not ready", cursor)
    assert "cni plugin not initialized" in line or "cni config" in line, line
    assert capture(node, "empty /etc/cni/net.d", "kubelet-network-plugin-not-ready", line), line
    ready = ready_again.wait_ready(status="False", timeout=90)
    assert "network" in ready["message"], ready


def test_container_runtime_down_then_pleg(node: Node, ready_again: Kubelet, inject, cursor: str) -> None:
    """containerd stopped for longer than PLEG's 3-minute threshold: kubelet first says the
    runtime is down, then that PLEG is not healthy too."""
    inject(faults.stop_containerd)
    sanity = kubelet_line(node, "Container runtime sanity check failed", cursor)
    capture(node, "containerd stopped", "kubelet-container-runtime-down", sanity)
    down = kubelet_line(node, "skipping pod synchronization - .*container runtime is down", cursor, timeout=90)
    # kubelet 1.20 prints a one-error aggregate without brackets ("- container runtime is down");
    # today's signature wants "- [container runtime is down" (the older []string form) and misses
    # it. Recorded for the signature's owner; the bracketed form with PLEG below matches.
    capture(node, "containerd stopped", "kubelet-container-runtime-down", down)
    ready = ready_again.wait_ready(status="False", timeout=90)
    assert "container runtime is down" in ready["message"], ready
    pleg = kubelet_line(node, "skipping pod synchronization - .*PLEG is not healthy: pleg was last seen active",
                        cursor, timeout=240)
    pleg_matched = capture(node, "containerd stopped", "kubelet-container-runtime-down", pleg)
    assert pleg_matched, pleg


def test_node_registration_refused(node: Node, ready_again: Kubelet, cursor: str) -> None:
    """The API server down while kubelet starts: registration is refused at the TCP level."""
    cp = ready_again.cp
    cp.stop_apiserver()
    try:
        node.systemctl("restart", "kubelet.service")
        line = kubelet_line(node, "Unable to register node", cursor, timeout=90)
        assert "connection refused" in line, line
        assert capture(node, "kube-apiserver stopped", "kubelet-register-node-failed", line), line
    finally:
        cp.start_apiserver()
