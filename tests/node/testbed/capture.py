"""Capture real log lines for the sample corpus (tests/corpus/): boot a node of a stack, inject
every fault of testbed/faults.py that makes containerd or the kubelet stand-in log, and record
what containerd.service and kubelet.service wrote, each line with the signatures that match it
today.

    python -m tests.node.testbed capture --stack trixie > /tmp/trixie.jsonl

One JSON object per line: stack, containerd (the node's `containerd --version`), fault, unit,
message, matches (signature ids). Choosing which lines go into which corpus file, with their
provenance header, is a person's job: see tests/node/README.md ("Corpus lines").
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import faults
from .node import Node, boot_node, wait_for

UNITS = ("containerd.service", "kubelet.service")
# The kubelet stand-in's fast periods (as the fast_kubelet fixture): its lines appear within seconds.
KUBELET_FAST = {"image_gc_period": 2, "runtime_sync_period": 2, "runtime_down_after": 6, "v": 4}


def _matcher() -> Callable[[str, str], list[str]]:
    from nodemedic.detector.matcher import Matcher
    from nodemedic.detector.signatures import load_catalogue
    from nodemedic.hostroot import HostRoot

    from .node import REPO_ROOT

    catalogue = load_catalogue(HostRoot(REPO_ROOT / "tests" / "no-such-root"))
    matcher = Matcher(catalogue.signatures)
    return lambda message, unit: sorted({s.id for s in matcher.match(message, unit, "unit")})


def _healthy(node: Node) -> None:
    def ok() -> bool:
        st = node.cri_status()
        return st.runtime_ready and st.network_ready

    wait_for(ok, timeout=90, what="containerd healthy again")


def _scenarios() -> Iterator[tuple[str, Callable[[Node], faults.Fault | None], float]]:
    """(name, inject, seconds to let the node log). Faults that leave containerd and the
    kubelet silent (stale/interrupted ingest) are still run: their silence is a finding too."""
    yield "empty_cni_dir", lambda n: faults.empty_cni_dir(n), 8
    yield "empty_cni_dir(restart_containerd)", lambda n: faults.empty_cni_dir(n, restart_containerd=True), 8
    yield "remove_cni_dir(restart_containerd)", lambda n: faults.remove_cni_dir(n, restart_containerd=True), 8
    yield "stale_ingest", faults.stale_ingest, 3
    yield "interrupted_ingest", faults.interrupted_ingest, 3

    def root_detached(n: Node) -> faults.Fault:
        fault = faults.containerd_root_symlink(n)
        time.sleep(4)
        faults.detach(n, fault)
        return fault

    yield "containerd_root_symlink", faults.containerd_root_symlink, 6
    yield "containerd_root_symlink+detach", root_detached, 8
    yield "containerd_root_moved", faults.containerd_root_moved, 8
    yield "crash_loop(kubelet)", faults.crash_loop, 5
    yield "stop_containerd", faults.stop_containerd, 12
    yield "kill_containerd", faults.kill_containerd, 12
    yield "corrupt_containerd_metadata", faults.corrupt_containerd_metadata, 15


def capture(node: Node, out: Any = sys.stdout) -> None:
    match = _matcher()
    version = node.run(["containerd", "--version"]).stdout.strip()
    node.configure_kubelet(**KUBELET_FAST)
    try:
        for name, inject, settle in _scenarios():
            _healthy(node)
            cursor = node.cursor()
            fault = inject(node)
            time.sleep(settle)
            try:
                entries = [e for unit in UNITS for e in node.journal(unit=unit, since=cursor)]
            finally:
                if fault is not None:
                    fault.restore()
            entries.sort(key=lambda e: int(e.get("__MONOTONIC_TIMESTAMP", 0)))
            for e in entries:
                unit, message = e.get("_SYSTEMD_UNIT", ""), e.get("MESSAGE", "")
                row = {
                    "stack": node.stack.name,
                    "containerd": version,
                    "fault": name,
                    "unit": unit,
                    "message": message,
                    "matches": match(message, unit),
                }
                print(json.dumps(row), file=out, flush=True)
    finally:
        node.configure_kubelet()


def main(stack: str) -> int:
    node = boot_node("nm-capture", stack=stack)
    try:
        capture(node)
    finally:
        node.stop()
    return 0
