"""Journal ingest: entries/s through nodemedic's journal source with the full catalogue, against
the raw libsystemd read (`_next()` + MESSAGE) and `journalctl -o cat`, on the same journal.

The journal (≥ 200k mixed entries: containerd, kubelet and unrelated units, ~1 % failure lines)
is written as a real journal file by systemd-journal-remote. Not a test: nothing is asserted.
`bench/run.py` calls `measure()` for its RESULTS.md row.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "daemon"), str(REPO)]

from systemd import journal  # noqa: E402

from bench.common import Goal, Row, rate  # noqa: E402
from bench.journalgen import Entry, write_journal  # noqa: E402
from bench.match_bench import realistic_mix  # noqa: E402
from nodemedic.detector.detector import Detector  # noqa: E402
from nodemedic.detector.matcher import Matcher  # noqa: E402
from nodemedic.detector.signatures import load_catalogue  # noqa: E402
from nodemedic.hostroot import HostRoot  # noqa: E402
from nodemedic.safety import Guard  # noqa: E402
from nodemedic.sources.events import JournalLine  # noqa: E402
from nodemedic.sources.journal import JournalSource  # noqa: E402

SMOKE_ENTRIES = 3_000
GOAL_RATIO = 0.7  # of the raw libsystemd read rate
UNITS = ("containerd.service", "kubelet.service")
OTHER = ("sshd.service", "cron.service", "systemd-logind.service", "node-exporter.service")


def make_journal(directory: Path, size: int) -> None:
    rng = random.Random(11)
    messages = realistic_mix(size)
    units = [rng.choice(UNITS) if rng.random() < 0.6 else rng.choice(OTHER) for _ in range(size)]
    write_journal(directory, (Entry(m, u) for m, u in zip(messages, units, strict=True)),
                  start_us=int((time.time() - 3600) * 1_000_000))


def raw_rate(directory: Path) -> tuple[float, int]:
    reader = journal.Reader(path=str(directory))
    start = time.perf_counter()
    count = 0
    while reader._next():
        reader._get("MESSAGE")
        count += 1
    return count / (time.perf_counter() - start), count


def journalctl_rate(directory: Path, total: int) -> float:
    start = time.perf_counter()
    subprocess.run(["journalctl", "--no-pager", "-o", "cat", f"--directory={directory}"],
                   check=True, stdout=subprocess.DEVNULL)
    return total / (time.perf_counter() - start)


async def nodemedic_rate(directory: Path, total: int, work: Path) -> tuple[float, int, int]:
    """Drain the whole journal through JournalSource → Detector with the full catalogue."""
    detector = Detector(Matcher(load_catalogue(HostRoot(work / "no-root")).signatures))
    queue: asyncio.Queue = asyncio.Queue(4096)
    source = JournalSource(UNITS, queue, work / "cursor", Guard.from_paths([]), batch_size=500,
                           replay_window=7200, replay_grace=5, path=str(directory),
                           prefilter=detector.matcher)
    lines = suspicions = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal lines, suspicions
        while True:
            line: JournalLine = await queue.get()
            lines += 1
            suspicions += len(detector.journal_line(line))

    source.on_drained = lambda _moved: done.set()
    start = time.perf_counter()
    consumer = asyncio.get_running_loop().create_task(consume())
    source.open()
    await done.wait()
    while not queue.empty():
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    consumer.cancel()
    source.close()
    return total / elapsed, lines, suspicions


@dataclass(frozen=True)
class IngestResult:
    entries: int
    watched_lines: int  # lines the source passed on (candidates for some signature)
    suspicions: int
    nodemedic: float  # entries/s
    raw: float  # entries/s, best of 2
    journalctl: float  # entries/s
    prefilter_us: float  # the matcher's literal prefilter alone, per line of the same mix

    def row(self) -> Row:
        ratio = self.nodemedic / self.raw
        met = ratio >= GOAL_RATIO
        detail = f"{ratio:.2f} × raw" + ("" if met else f": MISSED by {GOAL_RATIO - ratio:.2f} × raw")
        return Row(
            f"journal ingest: source + full catalogue, {self.entries:,} mixed entries",
            rate(self.nodemedic, "entries"),
            f"raw `_next()`+MESSAGE: {rate(self.raw, 'entries')}; `journalctl -o cat`: "
            f"{rate(self.journalctl, 'entries')}",
            f"{ratio:.2f} × raw; {self.nodemedic / self.journalctl:.1f} × journalctl", "host",
            Goal(f"≥ {GOAL_RATIO} × raw", met, detail),
            (f"A real journal file written by systemd-journal-remote (60 % containerd/kubelet, 40 % other units, "
             f"~1 % failure lines); {self.watched_lines:,} lines reached the detector, "
             f"{self.suspicions} suspicions raised.",
             f"Per entry: the raw read costs {1e6 / self.raw:.2f} µs, nodemedic {1e6 / self.nodemedic:.2f} µs; the "
             f"literal prefilter (Matcher.any_literal, Aho-Corasick over the whole MESSAGE) alone costs "
             f"{self.prefilter_us:.2f} µs per line of the same mix.",))


def measure(size: int) -> IngestResult:
    with tempfile.TemporaryDirectory(prefix="nodemedic-ingest-") as tmp:
        work = Path(tmp)
        make_journal(work / "journal", size)
        raw, total = raw_rate(work / "journal")
        raw = max(raw, raw_rate(work / "journal")[0])
        ours, lines, suspicions = asyncio.run(nodemedic_rate(work / "journal", total, work))
        ctl = journalctl_rate(work / "journal", total)
    return IngestResult(total, lines, suspicions, ours, raw, ctl, prefilter_cost(size))


def prefilter_cost(size: int) -> float:
    """µs per line for the matcher's literal prefilter alone, best of 3."""
    matcher = Matcher(load_catalogue(HostRoot(REPO / "bench" / "no-such-root")).signatures)
    lines = realistic_mix(size)
    best = min(_timed(matcher.any_literal, lines) for _ in range(3))
    return best / len(lines) * 1e6


def _timed(fn: Callable[[str], object], lines: list[str]) -> float:
    start = time.perf_counter()
    for line in lines:
        fn(line)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    args = parser.parse_args()
    r = measure(SMOKE_ENTRIES if args.smoke else args.entries)
    print(f"machine: {platform.machine()} python {platform.python_version()}; journal: {r.entries} entries, "
          f"{r.watched_lines} from watched units, {r.suspicions} suspicions raised")
    print("| measure | nodemedic | raw _next()+MESSAGE | ratio | journalctl -o cat |")
    print("|---|---|---|---|---|")
    print(f"| journal ingest, entries/s | {r.nodemedic:,.0f} | {r.raw:,.0f} | {r.nodemedic / r.raw:.2f} | "
          f"{r.journalctl:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
