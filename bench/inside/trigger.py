"""Pure journal-line → step latency, inside the node.

kubelet's "PLEG is not healthy" line (signature kubelet-pleg-not-healthy; its problem,
pleg-unhealthy, is the one with a repair and no confirming probe, so nothing but journald →
libsystemd → prefilter → matcher → engine stands between the line and the step) is written into
a FIFO that a process of kubelet.service copies to its stdout: journald stamps it with the
trusted _SYSTEMD_UNIT=kubelet.service, exactly as kubelet's own line would be.

The signature wants the line to persist for 1 min, so the caller first writes `line`s spread
over a minute (the streak); from then on every line within a minute of the previous one meets
the threshold, and `cycle` measures each: nodemedic's STEP_STARTED names the line in
NODEMEDIC_TRIGGER_CURSOR; its step restarts containerd, then HEALED. One JSON line per run.

A bare sd_journal reader (a thread here: matches on kubelet.service, woken by the journal fd the
way nodemedic is) records when it sees each line: the control that separates journald's own
notification delay from nodemedic's share.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import threading
import time

from benchlib import HEALED, STEP_STARTED, SUSPECTED, Cri, at, emit, find_entry, fsync_cost, poll_until, unit_active
from systemd import journal

PROBLEM = "pleg-unhealthy"
# Each repair restarts containerd, and systemd refuses a 6th start within 10 s (StartLimitBurst=5,
# StartLimitIntervalSec=10s): lines at least this far apart keep containerd under that limit.
SPACING = 2.5
FIFO = "/run/kubelet-bench.fifo"
# tests/corpus/kubelet-pleg-not-healthy.log, with the time of writing and a unique duration
LINE = ('E{stamp}    3263 kubelet.go:2055] "Skipping pod synchronization" err="PLEG is not healthy: pleg was '
        'last seen active {ago} ago; threshold is 3m0s"')


def klog_stamp(now: float) -> str:
    return time.strftime("%m%d %H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}"


def write_line(fifo: int) -> tuple[float, str]:
    """Write one line; (time written, its unique duration text)."""
    ago = f"{3 + secrets.randbelow(60)}m{secrets.randbelow(60)}.{secrets.randbelow(10**9):09d}s"
    written = time.time()
    os.write(fifo, (LINE.format(stamp=klog_stamp(written), ago=ago) + "\n").encode())
    return written, ago


class BareReader(threading.Thread):
    """Follows kubelet.service's entries with libsystemd alone; when did it see each line?"""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self.reader = journal.Reader()
        self.reader.add_match("_SYSTEMD_UNIT=kubelet.service")
        self.reader.seek_tail()
        self.reader.get_previous()

    def run(self) -> None:
        while True:
            self.reader.wait(-1)  # sd_journal_wait: the journal fd, as nodemedic's loop uses it
            now = time.time()
            while self.reader._next():
                message = self.reader._get("MESSAGE").decode(errors="replace")
                self.seen[message.rsplit("active ", 1)[-1].split(" ago", 1)[0]] = now


def one_run(cri: Cri, fifo: int, run: int, bare: BareReader, not_before: float) -> tuple[dict[str, object], float]:
    """One line and what followed; and the monotonic time the next line may be written."""
    if poll_until(lambda: unit_active("containerd.service") and cri.runtime_ready(), timeout=60, interval=0.05) is None:
        raise SystemExit("containerd is not back after the previous repair")
    time.sleep(max(random.uniform(0.3, 0.7), not_before - time.monotonic()))
    next_line = time.monotonic() + SPACING
    written, ago = write_line(fifo)
    line = find_entry({"_SYSTEMD_UNIT": "kubelet.service"}, written - 1, timeout=10, accept=lambda e: ago in e.message)
    step = find_entry({"MESSAGE_ID": STEP_STARTED, "NODEMEDIC_TRIGGER_CURSOR": line.cursor}, written - 1,
                      timeout=10) if line else None
    if step is None:  # exhausted, held back, or the streak broke: no number is better than a wrong one
        raise SystemExit(f"run {run}: no STEP_STARTED for the line within 10 s; see the node's journal")
    suspected = find_entry({"MESSAGE_ID": SUSPECTED, "NODEMEDIC_TRIGGER_CURSOR": line.cursor}, written - 1,
                           timeout=1) if line else None
    healed = find_entry({"MESSAGE_ID": HEALED, "NODEMEDIC_PROBLEM": PROBLEM}, step.realtime, timeout=60)
    return {"run": run, "written": written, "line": at(line), "bare_reader": bare.seen.get(ago),
            "suspected": at(suspected), "step": at(step),
            "healed": at(healed), "step_name": step.fields["NODEMEDIC_STEP"],
            "fsync": fsync_cost()}, next_line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["line", "cycle"])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    fifo = os.open(FIFO, os.O_WRONLY)
    try:
        if args.action == "line":
            emit({"written": write_line(fifo)[0]})
            return 0
        cri = Cri()
        bare = BareReader()
        bare.start()
        not_before = 0.0
        for run in range(args.runs + 1):  # run 0 completes the streak: a warm-up
            record, not_before = one_run(cri, fifo, run, bare, not_before)
            emit(record)
    finally:
        os.close(fifo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
