"""The comparison for detection: poll loops like GKE's health-monitor.sh, inside the node.

Each loop spawns one probe process (`python -m nodemedic.probes cri-status`: a process, a gRPC
connection, one CRI Status call, as `crictl` would do) and sleeps until its next period, for real.
Several loops run with their phases spread evenly over the period, so one fault yields one real
detection per loop at a different phase: the same samples as many faults at random times against
one loop, in a fraction of the wall time. One JSON line per probe in --out, with the CPU
used so far by all loops and their probe processes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

PROBE = [sys.executable, "-m", "nodemedic.probes", "cri-status"]


def cpu_seconds() -> float:
    """CPU of the loops and of every probe process they waited for, so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def loop(index: int, offset: float, period: float, until: float, lock: threading.Lock, path: str) -> None:
    next_start = time.monotonic() + offset
    while True:
        time.sleep(max(0.0, next_start - time.monotonic()))
        if time.time() >= until:
            return
        started = time.time()
        proc = subprocess.run(PROBE, capture_output=True, text=True, check=False)
        ended = time.time()
        try:
            ready = bool(json.loads(proc.stdout).get("network_ready"))
        except json.JSONDecodeError:
            ready = False
        with lock, open(path, "a") as f:
            f.write(json.dumps({"loop": index, "start": started, "end": ended, "network_ready": ready,
                                "cpu": cpu_seconds()}) + "\n")
        next_start += period  # a fixed cadence, like `sleep` after a short probe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--period", type=float, default=10.0)
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    until = time.time() + args.duration
    lock = threading.Lock()
    threads = [threading.Thread(target=loop, args=(i, i * args.period / args.loops, args.period, until, lock, args.out))
               for i in range(args.loops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
