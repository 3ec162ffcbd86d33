"""Measures 1 and 2 in the node: how fast nodemedic notices (fault → step started) and heals
(fault → CRI NetworkReady=true), against poll loops like GKE's health-monitor.sh, run for real.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import Goal, Row, med_p99, median, ms, p99, times
from bench.nodebench import REAL_CONF, SCRIPTS, BenchNode, sleep_until
from tests.node.testbed.node import NODE_PYTHON

DETECT_GOAL = 0.050  # p99, seconds
HEAL_GOAL = 1.0  # seconds
PLEG_PERSISTS = 60.0  # kubelet-pleg-not-healthy.toml: persists = "1m"
POLL_OUT = "/run/bench-poll.jsonl"
POLL_UNIT = "bench-poll-loop"
NODE = "node (nspawn)"


def deltas(records: Sequence[dict[str, Any]], start: str, end: str) -> list[float]:
    return [r[end] - r[start] for r in records if r.get(start) is not None and r.get(end) is not None]


def counted(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["run"] > 0]  # run 0 is the warm-up


# ---- nodemedic ------------------------------------------------------------------------------------


def cni_runs(bench: BenchNode, runs: int) -> list[dict[str, Any]]:
    """The CNI fault `runs` times (+1 warm-up) with nodemedic running."""
    return counted(bench.inside("cni.py", "cycle", "--runs", str(runs), "--text", REAL_CONF, timeout=60 + 40 * runs))


def start_streak(bench: BenchNode) -> float:
    """The first PLEG line of the streak the signature needs (persists 1 min); monotonic time."""
    bench.inside("trigger.py", "line")
    return time.monotonic()


def line_runs(bench: BenchNode, runs: int, streak_started: float) -> list[dict[str, Any]]:
    """A PLEG line from kubelet.service `runs` times (each repair restarts containerd), once a
    streak of such lines has lasted a minute. Keep the gaps under a minute, or the streak breaks."""
    sleep_until(streak_started + PLEG_PERSISTS / 2)
    bench.inside("trigger.py", "line")
    sleep_until(streak_started + PLEG_PERSISTS + 0.5)
    return counted(bench.inside("trigger.py", "cycle", "--runs", str(runs), timeout=60 + 60 * runs))


# ---- the poll loop comparison ---------------------------------------------------------------------


@dataclass(frozen=True)
class PollResult:
    period: float
    loops: int
    faults: int
    latencies: list[float]  # fault → the first probe that saw NetworkReady=false, per loop and fault
    probe_seconds: list[float]  # wall time of each probe process
    cpu_seconds_per_loop_minute: float
    restart: dict[str, Any]  # what a restart of containerd does to the CNI fault

    def analytic(self) -> str:
        probe = median(self.probe_seconds)
        return (f"computed: uniform over [0, {self.period:.0f} s] + probe {ms(probe)} → median "
                f"{ms(self.period / 2 + probe)}, p99 {ms(0.99 * self.period + probe)}")


def _start_poller(bench: BenchNode, period: float, loops: int, duration: float) -> None:
    bench.node.run(["rm", "-f", POLL_OUT])
    bench.node.run(["systemd-run", "--quiet", f"--unit={POLL_UNIT}", "--collect",
                    NODE_PYTHON, f"{SCRIPTS}/poll_loop.py", "--period", str(period), "--loops", str(loops),
                    "--duration", str(duration), "--out", POLL_OUT])


def _probes(bench: BenchNode) -> list[dict[str, Any]]:
    text = bench.node.read_file(POLL_OUT).decode() if bench.node.exists(POLL_OUT) else ""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _detections(probes: list[dict[str, Any]], fault: float, loops: int) -> list[float]:
    """Per loop: fault → end of its first probe after the fault that saw the network not ready."""
    out = []
    for loop in range(loops):
        seen = [p["end"] - fault for p in probes if p["loop"] == loop and p["end"] > fault and not p["network_ready"]]
        if seen:
            out.append(min(seen))
    return out


def poll_comparison(bench: BenchNode, faults: int, loops: int, period: float, after: float) -> PollResult:
    """Poll loops against the same CNI fault, with nodemedic stopped so the fault stays until seen."""
    node = bench.node
    node.systemctl("stop", "nodemedic")
    _start_poller(bench, period, loops, duration=faults * (2 * period + 20) + 2 * period)
    latencies: list[float] = []
    restart: dict[str, Any] = {}
    try:
        time.sleep(period + 1)  # every loop has probed once
        for index in range(faults):
            time.sleep(random.uniform(0, period))  # a random phase against the loops
            fault = bench.inside("cni.py", "break")[0]["fault"]
            time.sleep(period + 3)  # every loop probes at least once more (probe ≤ 3 s)
            latencies += _detections(_probes(bench), fault, loops)
            if index == 0:
                # what health-monitor.sh would do next: restart the runtime
                restart = bench.inside("cni.py", "restart-check", "--after", str(after), timeout=120)[0]
            bench.inside("cni.py", "restore", "--text", REAL_CONF)
    finally:
        node.systemctl("stop", POLL_UNIT, check=False)
        node.systemctl("start", "nodemedic")
    probes = _probes(bench)
    return PollResult(period, loops, faults, latencies, [p["end"] - p["start"] for p in probes],
                      _cpu_per_loop_minute(probes, loops), restart)


def _cpu_per_loop_minute(probes: list[dict[str, Any]], loops: int) -> float:
    """CPU seconds one loop (probe processes included) uses per minute, from the loops' rusage."""
    if len(probes) < 2:
        return float("nan")
    first, last = probes[0], probes[-1]
    return (last["cpu"] - first["cpu"]) / loops / ((last["end"] - first["end"]) / 60)


# ---- rows -----------------------------------------------------------------------------------------


def _goal_p99(values: list[float]) -> Goal:
    worst = p99(values)
    met = bool(values) and worst <= DETECT_GOAL
    detail = f"p99 {ms(worst)}" + ("" if met else f": MISSED by {ms(worst - DETECT_GOAL)}")
    return Goal("p99 ≤ 50 ms", met, detail)


def _poll_text(poll: PollResult) -> str:
    return (f"{poll.period:.0f} s poll loop, measured: {med_p99(poll.latencies)}; {poll.analytic()}")


def detection_rows(cni: list[dict[str, Any]], lines: list[dict[str, Any]], poll: PollResult) -> list[Row]:
    path = deltas(cni, "fault", "step")
    journal = deltas(lines, "line", "step")
    triggers = Counter(r["trigger"] or "none" for r in cni)
    cni_notes = (
        "Fault: the last (real) CNI config is unlinked in the node; real containerd then reports "
        "NetworkReady=false. Measured from the unlink (CLOCK_REALTIME in the node) to the "
        "`__REALTIME_TIMESTAMP` of nodemedic's STEP_STARTED entry.",
        f"Breakdown (medians): fault → SUSPECTED {ms(median(deltas(cni, 'fault', 'suspected')))}, "
        f"SUSPECTED → CONFIRMED (live CRI probe, looked at again after 10 ms, doubling up to "
        f"verify_interval, until containerd has noticed) {ms(median(deltas(cni, 'suspected', 'confirmed')))}, "
        f"CONFIRMED → STEP_STARTED "
        f"{ms(median(deltas(cni, 'confirmed', 'step')))}; containerd's own 'failed to reload cni "
        f"configuration' line came {ms(median(deltas(cni, 'fault', 'containerd_line')))} after the fault, "
        f"CRI said NetworkReady=false after {ms(median(deltas(cni, 'fault', 'cri_not_ready')))}.",
        f"Triggers seen: {', '.join(f'{k} ×{v}' for k, v in triggers.most_common())} (path:… is inotify on "
        "/etc/cni/net.d; containerd-cni-config-load-failed is containerd's journal line).",
        _fsync_note(cni),
        f"Comparison: {poll.loops} real poll loops (each spawns `python -m nodemedic.probes cri-status` every "
        f"{poll.period:.0f} s, like health-monitor.sh's `crictl pods`), phases spread over the period, against "
        f"{poll.faults} faults at random times with nodemedic stopped (the fault must stay until they see it). "
        f"Their probe takes {ms(median(poll.probe_seconds))} (median).",
    )
    line_notes = (
        "kubelet's 'Skipping pod synchronization … PLEG is not healthy' line (signature kubelet-pleg-not-healthy; "
        "pleg-unhealthy is the problem with a repair and no confirming probe, so only journald → libsystemd → "
        "prefilter → matcher → engine lies between line and step), written to its stdout by a process of "
        "kubelet.service (`cat` from a FIFO in place of the stand-in, so journald stamps the trusted "
        "_SYSTEMD_UNIT=kubelet.service). The signature wants the line to persist for 1 min: a streak is laid "
        "first (lines at 0, 30 and 60 s), then every line meets it. Both timestamps are journald's "
        "`__REALTIME_TIMESTAMP`; NODEMEDIC_TRIGGER_CURSOR ties the step to the line. Each repair restarts "
        "containerd, so lines are at least 2.5 s apart: with the bench's cooldown of 0 s, faster repairs trip "
        "containerd's own start limit (5 starts in 10 s; a trial run hit it and pleg-unhealthy went exhausted).",
        f"Where the time goes (medians): write → journald's stamp {ms(median(deltas(lines, 'written', 'line')))}; "
        f"journald's stamp → a bare sd_journal reader (a thread in the node, woken by the journal fd as nodemedic "
        f"is) sees the line {ms(median(deltas(lines, 'line', 'bare_reader')))}; that reader → nodemedic's "
        f"SUSPECTED {ms(median(deltas(lines, 'bare_reader', 'suspected')))}; SUSPECTED → STEP_STARTED "
        f"{ms(median(deltas(lines, 'suspected', 'step')))}. journald posts a change to readers (the inotify "
        "event behind the journal fd) from a coalescing timer: 250 ms after the write, fired with sd-event's "
        "default accuracy of another 250 ms (systemd's POST_CHANGE_TIMER_INTERVAL_USEC): every sd_journal "
        "reader waits 250–500 ms for a line, nodemedic included.",
        _fsync_note(lines),
        "Comparison: the same poll loops as above; they cannot read a log line at all, so their latency for "
        "any fault is their period.",
    )
    return [
        Row("detection: CNI config removed → step started (inotify + CRI confirm)", med_p99(path), _poll_text(poll),
            _faster(path, poll.latencies), NODE, _goal_p99(path), cni_notes),
        Row("detection: journal line → step started (no confirm probe)",
            med_p99(journal), _poll_text(poll), _faster(journal, poll.latencies), NODE, _goal_p99(journal),
            line_notes),
    ]


def _fsync_note(records: Sequence[dict[str, Any]]) -> str:
    fsyncs = [r["fsync"] for r in records if r.get("fsync") is not None]
    return (f"Disk: an atomic write as nodemedic persists a transition (temp file, fsync, rename, fsync of the "
            f"directory) took {med_p99(fsyncs)} in the node right after each run. Every transition before the "
            "step (SUSPECTED, CONFIRMED, REPAIRING) is persisted that way before its journal entry, and the "
            "metrics textfile too when it changed, so this latency grows with the disk's fsync latency.")


def _faster(ours: list[float], theirs: list[float]) -> str:
    return f"{times(median(ours), median(theirs))} faster (medians)"


def healing_row(cni: list[dict[str, Any]], poll: PollResult) -> Row:
    healed = deltas(cni, "fault", "cri_ready")
    worst = max(healed) if healed else float("nan")
    met = bool(healed) and worst <= HEAL_GOAL and len(healed) == len(cni)
    detail = f"max {ms(worst)}" + ("" if met else f": MISSED by {ms(worst - HEAL_GOAL)}")
    restart = poll.restart
    not_fixed = restart.get("network_ready_after_restart") is False and restart.get("network_ready_later") is False
    comparison = (("restart-only poll loop (health-monitor.sh restarts the runtime): never heals it — after "
                   f"`systemctl restart containerd` and `sleep {restart.get('after', 0):.0f}` NetworkReady was "
                   "still false (checked in this run)") if not_fixed
                  else f"restart-only poll loop: restart check gave {restart}")
    notes = (
        "Same runs as the CNI detection row. End: the first CRI Status (polled every 5 ms on one channel from "
        "inside the node) with NetworkReady=true after it had been false. nodemedic's HEALED entry came "
        f"{ms(median(deltas(cni, 'fault', 'healed')))} after the fault (median): it verifies with the same CRI "
        "call. Every run ended with NetworkReady=true: "
        f"{all(r['ready_after_heal'] for r in cni)}.",
        f"Healed via step(s): {', '.join(sorted({r['step_name'] for r in cni}))}.",
    )
    return Row("fault → healed: CNI config removed → CRI NetworkReady=true",
               med_p99(healed), comparison, "∞ (the alternative never heals)" if not_fixed else "n/a", NODE,
               Goal("≤ 1 s", met, detail), notes)
