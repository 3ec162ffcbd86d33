"""Journal ingest: entries/s through nodemedic's journal source with the full catalogue, against
the raw libsystemd read (`_next()` + MESSAGE) and `journalctl -o cat`, on the same journal.

The journal (≥ 200k mixed entries: containerd, kubelet and unrelated units, ~1 % failure lines)
is written as a real journal file by systemd-journal-remote. Not a test: nothing is asserted.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "daemon"), str(REPO)]

from systemd import journal  # noqa: E402

from bench.journalgen import Entry, write_journal  # noqa: E402
from bench.match_bench import realistic_mix  # noqa: E402
from nodemedic.detector.detector import Detector  # noqa: E402
from nodemedic.detector.matcher import Matcher  # noqa: E402
from nodemedic.detector.signatures import load_catalogue  # noqa: E402
from nodemedic.hostroot import HostRoot  # noqa: E402
from nodemedic.repairs.safety import Guard  # noqa: E402
from nodemedic.sources.events import JournalLine  # noqa: E402
from nodemedic.sources.journal import JournalSource  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    args = parser.parse_args()
    size = 3_000 if args.smoke else args.entries
    with tempfile.TemporaryDirectory(prefix="nodemedic-ingest-") as tmp:
        work = Path(tmp)
        make_journal(work / "journal", size)
        raw, total = raw_rate(work / "journal")
        raw = max(raw, raw_rate(work / "journal")[0])
        ours, lines, suspicions = asyncio.run(nodemedic_rate(work / "journal", total, work))
        ctl = journalctl_rate(work / "journal", total)
    print(f"machine: {platform.machine()} python {platform.python_version()}; journal: {total} entries, "
          f"{lines} from watched units, {suspicions} suspicions raised")
    print("| measure | nodemedic | raw _next()+MESSAGE | ratio | journalctl -o cat |")
    print("|---|---|---|---|---|")
    print(f"| journal ingest, entries/s | {ours:,.0f} | {raw:,.0f} | {ours / raw:.2f} | {ctl:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
