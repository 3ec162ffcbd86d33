"""Measures 5, 6 and 7 in the node: what the running daemon costs when nothing happens (CPU,
wake-ups), its memory after start and after 1M journal entries, and its start-up time.
Everything is read from the host's /proc (and perf, where it works), never from the daemon.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Goal, Row, med_p99, median, mib, ms, times
from bench.match_bench import realistic_mix
from bench.nodebench import BENCH_CONFIG, CONF_D, FIFO, REAL_CONF, BenchNode, ProcSample, sample, systemd_monotonic
from tests.node.testbed.node import NODE_PYTHON

NODE = "node (nspawn)"
CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_CPU_GOAL = 0.05  # percent of one core
WATCHDOG_PING = 15.0  # WatchdogSec=30s, pinged at half of it
RSS_GOAL_KIB = 30 * 1024
START_GOAL = 0.5
# nodemedic's dependencies, roughly in the order the daemon imports them; nodemedic.daemon last
# (what it adds is nodemedic's own code and the rest of the stdlib it needs).
HEAVY_IMPORTS = ("systemd.journal", "tomlkit", "ahocorasick", "tenacity", "grpc", "cri_api.v1.api_pb2_grpc",
                 "dbus_next.aio", "prometheus_client", "inotify_simple", "watchdog.observers.polling",
                 "nodemedic.daemon")
WAKERS = {"systemd-journal": "journald", "dbus-daemon": "dbus-daemon", "systemd": "systemd", "containerd": "containerd"}


# ---- 7. start-up ----------------------------------------------------------------------------------


def startup(bench: BenchNode, restarts: int) -> list[float]:
    """ExecMainStartTimestamp → ActiveEnterTimestamp (READY=1) of `restarts` restarts, seconds."""
    node = bench.node
    out = []
    for _ in range(restarts):
        node.systemctl("reset-failed", "nodemedic")  # manual restarts count against StartLimitBurst too
        node.systemctl("restart", "nodemedic")
        props = systemd_monotonic(node, "nodemedic.service", "ExecMainStartTimestampMonotonic",
                                  "ActiveEnterTimestampMonotonic")
        out.append((props["ActiveEnterTimestampMonotonic"] - props["ExecMainStartTimestampMonotonic"]) / 1e6)
        time.sleep(0.5)
    return out


def bare_python(bench: BenchNode, runs: int) -> list[float]:
    """The floor under any Python daemon: the node's interpreter starting and exiting, timed
    inside the node (nsenter's own cost is not the interpreter's)."""
    timer = ("import subprocess, sys, time\n"
             "for _ in range(int(sys.argv[1])):\n"
             "    t = time.perf_counter(); subprocess.run([sys.executable, '-c', 'pass']); "
             "print(time.perf_counter() - t)")
    out = bench.node.run([NODE_PYTHON, "-c", timer, str(runs)]).stdout
    return [float(x) for x in out.split()]


@dataclass(frozen=True)
class ImportCost:
    module: str
    seconds: float  # imported alone in a fresh interpreter
    rss_kib: int  # RSS growth over a bare interpreter
    marginal_seconds: float  # imported after the modules listed before it
    marginal_kib: int


_IMPORT_TIMER = """
import json, sys, time
def rss():
    return int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmRSS')).split()[1])
out = []
for module in sys.argv[1:]:
    before, start = rss(), time.perf_counter()
    __import__(module)
    out.append([module, time.perf_counter() - start, rss() - before])
print(json.dumps(out))
"""


def _import_times(bench: BenchNode, modules: tuple[str, ...]) -> list[tuple[str, float, int]]:
    runs = [bench.node.run([NODE_PYTHON, "-c", _IMPORT_TIMER, *modules]) for _ in range(2)]
    return [tuple(x) for x in json.loads(runs[-1].stdout)]  # the second: warm page cache  # type: ignore[misc]


def import_costs(bench: BenchNode) -> list[ImportCost]:
    """Import time and RSS of each heavy dependency, alone and on top of the ones before it."""
    marginal = _import_times(bench, HEAVY_IMPORTS)
    alone = [_import_times(bench, (module,))[0] for module in HEAVY_IMPORTS]
    pairs = zip(alone, marginal, strict=True)
    return [ImportCost(m, a_s, a_kib, m_s, m_kib) for (m, a_s, a_kib), (_, m_s, m_kib) in pairs]


def startup_row(starts: list[float], floor: list[float], imports: list[ImportCost]) -> Row:
    worst = median(starts)
    met = bool(starts) and worst <= START_GOAL
    detail = f"median {ms(worst)}" + ("" if met else f": MISSED by {ms(worst - START_GOAL)}")
    everything = next((c for c in imports if c.module == "nodemedic.daemon"), None)
    notes = (
        "systemd's own timestamps: `ExecMainStartTimestampMonotonic` (fork/exec of the main process) → "
        "`ActiveEnterTimestampMonotonic` (READY=1 received; READY is sent after the journal is open, D-Bus is "
        "subscribed and the first state is read), over `systemctl restart nodemedic`.",
        "Comparison: the node's bare interpreter, `python -c pass`, start to exit (the floor for any Python "
        "daemon)." + (f" Importing `nodemedic.daemon` alone takes {ms(everything.seconds)} (see the import "
                      "table below)." if everything else ""),
    )
    return Row(f"start-up: process start → READY=1 ({len(starts)} restarts)",
               med_p99(starts), f"bare `python -c pass`: median {ms(median(floor))}",
               f"{times(median(floor), median(starts))} the bare interpreter", NODE,
               Goal("median ≤ 0.5 s", met, detail), notes)


# ---- 5. idle --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleResult:
    seconds: float
    before: ProcSample
    after: ProcSample
    journal_entries: Counter[str]  # by unit or identifier, written during the window
    own_messages: list[str]  # what nodemedic itself logged during the window
    wakers: Counter[str] = field(default_factory=Counter)  # perf: who woke a daemon thread
    woken: Counter[str] = field(default_factory=Counter)  # perf: which daemon thread was woken
    perf_note: str = ""

    @property
    def cpu_percent(self) -> float:
        return (self.after.cpu_ticks - self.before.cpu_ticks) / CLK_TCK / self.seconds * 100

    def switches(self) -> dict[str, int]:
        """Context switches (voluntary + involuntary) per thread name over the window."""
        out: Counter[str] = Counter()
        for tid, (comm, vol, inv) in self.after.switches.items():
            _, vol0, inv0 = self.before.switches.get(tid, (comm, 0, 0))
            out[comm] += vol - vol0 + inv - inv0
        return dict(out)

    @property
    def wakeups(self) -> int:
        return sum(self.switches().values())


def _perf_record(tids: list[int], out: Path) -> subprocess.Popen[bytes] | None:
    if shutil.which("perf") is None:
        return None
    flt = " || ".join(f"pid == {t}" for t in tids)
    proc = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "sched:sched_wakeup", "--filter", flt,
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1)
    return proc if proc.poll() is None else None


def _perf_wakers(data: Path, tids: set[int]) -> tuple[Counter[str], Counter[str]]:
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,trace"], capture_output=True,
                          text=True, check=False).stdout
    wakers: Counter[str] = Counter()
    woken: Counter[str] = Counter()
    for line in text.splitlines():
        m = re.match(r"\s*(?P<waker>.+?)\s+(?P<wtid>\d+)\s+comm=(?P<woken>.+?) pid=\d+", line)
        if not m:
            continue
        if int(m["wtid"]) in tids:
            waker = "nodemedic's own threads"
        else:
            # A wake-up from interrupt context (a timer expiring) is charged to whatever ran on that
            # CPU: the idle task, or an unrelated process. Only the IPC peers are real senders.
            waker = WAKERS.get(m["waker"], "timer/interrupt")
        wakers[waker] += 1
        woken[m["woken"]] += 1
    return wakers, woken


def _window(bench: BenchNode, seconds: float) -> IdleResult:
    """CPU, context switches and (perf) wake-ups of the running daemon over `seconds`."""
    node = bench.node
    pid = bench.host_pid()
    cursor = node.cursor()
    before = sample(pid)
    with tempfile.TemporaryDirectory(prefix="nodemedic-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        perf = _perf_record(sorted(before.switches), data)
        start = time.monotonic()
        time.sleep(seconds)
        after = sample(pid)
        elapsed = time.monotonic() - start
        wakers, woken, note = Counter[str](), Counter[str](), "perf record unavailable: /proc counts only"
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
            wakers, woken = _perf_wakers(data, set(before.switches))
            note = "perf record -a -e sched:sched_wakeup, filtered to the daemon's threads"
    window = node.journal(since=cursor)
    entries = Counter(e.get("_SYSTEMD_UNIT") or e.get("SYSLOG_IDENTIFIER", "?") for e in window)
    own = [e["MESSAGE"] for e in window if e.get("SYSLOG_IDENTIFIER") == "nodemedic"]
    return IdleResult(elapsed, before, after, entries, own, wakers, woken, note)


def idle(bench: BenchNode, seconds: float, fresh_seconds: float, settle: float) -> tuple[IdleResult, IdleResult]:
    """The daemon with the node quiet: kubelet.service is stopped (the stand-in polls CRI every
    second and logs; the bench's emitter is silent, but stopped all the same); containerd,
    journald, dbus and logind keep running. First `fresh_seconds` of a daemon just restarted,
    that has not talked to containerd yet; then, after one real CNI fault healed (as on any node
    that ever had a problem), the main window of `seconds`."""
    node = bench.node
    node.systemctl("stop", "kubelet")
    # A clean daemon for this measure: earlier cycles may have left a problem exhausted, which
    # state.json carries across a restart, and an exhausted problem is not repaired again.
    node.systemctl("stop", "nodemedic")
    node.run(["rm", "-f", "/var/lib/nodemedic/state.json"])
    node.systemctl("start", "nodemedic")
    time.sleep(settle)  # let the stop's and the start's own journal lines and unit changes pass
    fresh = _window(bench, fresh_seconds)
    bench.inside("cni.py", "cycle", "--runs", "0", "--text", REAL_CONF)
    time.sleep(settle)
    main = _window(bench, seconds)
    node.systemctl("start", "kubelet")
    return fresh, main


def idle_row(fresh: IdleResult, r: IdleResult, poll_cpu_per_minute: float, poll_period: float) -> Row:
    pings = r.seconds / WATCHDOG_PING
    per_min = r.wakeups / (r.seconds / 60)
    cpu_ok = r.cpu_percent <= IDLE_CPU_GOAL
    wake_ok = r.wakeups <= pings * 1.1 + 2
    misses = []
    if not cpu_ok:
        misses.append(f"CPU MISSED by {r.cpu_percent - IDLE_CPU_GOAL:.3f} points")
    if not wake_ok:
        misses.append(f"wake-ups MISSED: {per_min:.1f}/min against {60 / WATCHDOG_PING:.0f}/min for the watchdog "
                      f"alone ({r.wakeups / max(pings, 1):.0f}× too many)")
    detail = f"{r.cpu_percent:.3f} % CPU, {per_min:.1f} wake-ups/min" + (": " + "; ".join(misses) if misses else "")
    poll_percent = poll_cpu_per_minute / 60 * 100
    threads = ", ".join(f"{k} {v}" for k, v in sorted(r.switches().items(), key=lambda kv: -kv[1]))
    notes = (
        f"{r.seconds:.0f} s with kubelet.service stopped (the stand-in polls CRI every second and logs); "
        "containerd, journald, dbus-daemon and logind keep running. The daemon had healed one real CNI fault "
        "just before (so it has talked to containerd, as on any node that ever had a problem). CPU: "
        f"utime+stime from /proc/PID/stat (resolution 1/{CLK_TCK} s). Wake-ups: voluntary+involuntary context "
        "switches of every thread from /proc/PID/task/*/status.",
        f"Context switches by thread: {threads}.",
        f"For contrast, the same daemon freshly restarted, before it had talked to containerd: "
        f"{fresh.cpu_percent:.3f} % CPU and {fresh.wakeups} wake-ups in {fresh.seconds:.0f} s "
        f"({fresh.wakeups / (fresh.seconds / 60):.1f}/min; by thread: "
        + ", ".join(f"{k} {v}" for k, v in sorted(fresh.switches().items(), key=lambda kv: -kv[1])) + ").",
        f"Who woke the daemon ({r.perf_note}): "
        + (", ".join(f"{k} {v}" for k, v in r.wakers.most_common()) or "n/a")
        + "; woken threads: " + (", ".join(f"{k} {v}" for k, v in r.woken.most_common()) or "n/a") + ".",
        "Journal entries written during the window: "
        + (", ".join(f"{k} {v}" for k, v in r.journal_entries.most_common()) or "none") + "."
        + (" nodemedic's: " + "; ".join(f"'{m[:120]}'" for m in r.own_messages[:4]) if r.own_messages else ""),
        f"Comparison: one {poll_period:.0f} s poll loop's CPU (its probe processes included), measured from its "
        "rusage (self + children) during the detection comparison.",
    )
    return Row(f"idle: CPU and wake-ups over {r.seconds / 60:.1f} quiet min",
               f"{r.cpu_percent:.3f} % CPU; {r.wakeups} wake-ups ({per_min:.1f}/min)",
               f"{poll_period:.0f} s poll loop: {poll_percent:.3f} % CPU, {60 / poll_period:.0f} probe processes/min",
               f"{times(r.cpu_percent, poll_percent)} less CPU" if r.cpu_percent > 0 else "no CPU tick at all",
               NODE, Goal(f"≤ {IDLE_CPU_GOAL} % CPU and nothing but the watchdog ping ({60 / WATCHDOG_PING:.0f}/min)",
                          cpu_ok and wake_ok, detail), notes)


# ---- 6. memory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryResult:
    start: ProcSample  # 3 s after a fresh start
    checkpoints: list[tuple[int, ProcSample, float]]  # (entries fed so far, sample, seconds for this chunk)
    entries_read: int  # by nodemedic, from its metrics


def _write_feed(bench: BenchNode, lines: int) -> str:
    """A feed file in the node: the benches' realistic mix (~1 % failure lines)."""
    path = "/var/tmp/bench-feed.txt"
    (bench.node.root / path.lstrip("/")).write_text("\n".join(realistic_mix(lines, seed=17)) + "\n")
    return path


def memory(bench: BenchNode, total: int, chunks: int = 4) -> MemoryResult:
    """RSS after a fresh start, then after each chunk of `total` kubelet.service entries."""
    node = bench.node
    node.write_file(CONF_D, BENCH_CONFIG + '\n[daemon]\nmode = "observe"\n')
    bench.kubelet_emitter(True)
    node.systemctl("restart", "nodemedic")
    time.sleep(3)
    pid = bench.host_pid()
    start = sample(pid)
    chunk = total // chunks
    feed = _write_feed(bench, chunk)
    base = bench.entries_read()
    checkpoints = []
    try:
        for k in range(1, chunks + 1):
            began, fed = time.monotonic(), k * chunk
            node.run(["dd", f"if={feed}", f"of={FIFO}", "bs=1M", "status=none"], timeout=600)
            node.wait_for(lambda fed=fed: bench.entries_read() - base >= fed, timeout=600, interval=0.5,
                          what=f"nodemedic to read {fed} entries")
            checkpoints.append((fed, sample(pid), time.monotonic() - began))
    finally:
        node.write_file(CONF_D, BENCH_CONFIG)
        node.systemctl("reload", "nodemedic")
        node.run(["rm", "-f", feed])
    return MemoryResult(start, checkpoints, bench.entries_read() - base)


def _growth_ok(r: MemoryResult) -> tuple[bool, int]:
    """No growth: the heap (RssAnon) after the last chunk is within 1 MiB of its value halfway."""
    if len(r.checkpoints) < 2:
        return True, 0
    half = r.checkpoints[len(r.checkpoints) // 2 - 1][1].anon_kib
    grew = r.checkpoints[-1][1].anon_kib - half
    return grew <= 1024, grew


def memory_row(r: MemoryResult) -> Row:
    end = r.checkpoints[-1][1] if r.checkpoints else r.start
    fed = r.checkpoints[-1][0] if r.checkpoints else 0
    # The goal is the daemon's own memory, its anonymous RSS; VmRSS adds the journal files
    # libsystemd maps while reading, clean page cache the kernel takes back when it needs it.
    worst = max(r.start.anon_kib, end.anon_kib)
    size_ok = worst <= RSS_GOAL_KIB
    growth_ok, grew = _growth_ok(r)
    misses = [] if size_ok else [f"size MISSED by {mib(worst - RSS_GOAL_KIB)} (RssAnon)"]
    if not growth_ok:
        misses.append(f"the heap grew {mib(grew)} over the second half")
    seconds = sum(c[2] for c in r.checkpoints)
    notes = (
        "From the host's /proc/PID/status, 3 s after a fresh restart and after each chunk of entries — "
        "VmRSS (anon heap + mapped files): " + ", ".join(
            [f"start {mib(r.start.rss_kib)} ({mib(r.start.anon_kib)} + {mib(r.start.file_kib)})"]
            + [f"{n:,}: {mib(s.rss_kib)} ({mib(s.anon_kib)} + {mib(s.file_kib)})" for n, s, _ in r.checkpoints])
        + f"; peak (VmHWM) {mib(end.hwm_kib)}. The mapped-file part is mostly the journal files libsystemd "
        "mmaps while reading (clean page cache, shared and reclaimable); the anon part is the daemon's own "
        "heap, and what 'no growth' is judged on.",
        f"The entries: the benches' realistic mix (~1 % failure lines from the corpus) written by a process of "
        f"kubelet.service (a watched unit; journald rate limit off), in observe mode so the failure lines are "
        f"detected, confirmed and reported but do not restart containerd thousands of times. nodemedic counted "
        f"{r.entries_read:,} entries read (its metrics); journald + nodemedic together took {seconds:.0f} s "
        f"({fed / seconds if seconds else math.nan:,.0f} entries/s live).",
        "No comparison: the poll loops hold no memory between probes; a probe process costs its own peak RSS "
        "each time (see the probe row).",
    )
    return Row(f"memory: RSS after start and after {fed / 1e6:g}M journal entries",
               f"VmRSS {mib(r.start.rss_kib)} → {mib(end.rss_kib)}; heap (RssAnon) {mib(r.start.anon_kib)} → "
               f"{mib(end.anon_kib)}", "—", "—", NODE,
               Goal("RssAnon ≤ 30 MiB, no growth", size_ok and growth_ok,
                    f"RssAnon {mib(worst)}, heap growth over the second half {mib(grew)}"
                    + (": " + "; ".join(misses) if misses else "")), notes)
