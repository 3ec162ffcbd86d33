"""Every nodemedic benchmark in one run; writes bench/RESULTS.md.

    .venv/bin/python bench/run.py            # full: ~20 min (10 of them the idle measure), as root
    .venv/bin/python bench/run.py --smoke    # tiny sizes, ~2 min: proves the bench still runs

Matching and journal ingest run on the host; everything else in ONE booted test node (see
tests/node/README.md) with the working tree's nodemedic running as its real systemd unit. Not a
test: nothing is asserted; numbers are reported with their comparison, and missed goals are said.
For numbers worth quoting, run it on an otherwise idle machine (load < 0.5): RESULTS.md records
the load average and any other test run it saw.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "daemon")]

from bench import ingest_bench, match_bench  # noqa: E402
from bench.common import Row  # noqa: E402
from bench.latency import (  # noqa: E402
    cni_runs,
    detection_rows,
    healing_row,
    line_runs,
    poll_comparison,
    start_streak,
)
from bench.nodebench import BenchNode  # noqa: E402
from bench.probecost import ProbeCost  # noqa: E402
from bench.report import Report  # noqa: E402
from bench.resources import (  # noqa: E402
    bare_python,
    idle,
    idle_row,
    import_costs,
    memory,
    memory_row,
    startup,
    startup_row,
)
from tests.node.testbed.node import NODE_PYTHON  # noqa: E402

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    match_lines: int
    ingest_entries: int
    cni_runs: int
    line_runs: int
    poll_faults: int
    poll_loops: int
    poll_period: float
    idle_seconds: float
    idle_fresh_seconds: float
    settle: float  # seconds for a node to go quiet after a change, before a window starts
    memory_entries: int
    memory_chunks: int
    restarts: int
    probes: int


FULL = Sizes(200_000, 200_000, 30, 30, 3, 10, 10.0, 600, 60, 5.0, 1_000_000, 4, 10, 50)
SMOKE = Sizes(match_bench.SMOKE_LINES, ingest_bench.SMOKE_ENTRIES, 2, 2, 1, 2, 2.0, 10, 5, 2.0, 20_000, 2, 3, 5)


class Runner:
    """Runs the measures one by one; a measure that fails becomes a FAILED row, the rest go on."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.failed: list[str] = []

    def step(self, name: str, fn: Callable[[], T]) -> T | None:
        started = time.monotonic()
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - one broken measure must not lose the others
            traceback.print_exc()
            self.failed.append(name)
            self.report.add(Row(name, f"FAILED: {type(err).__name__}: {str(err)[:200]}", "—", "—", "—"))
            return None
        print(f"bench: {name} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        return result


def host_measures(run: Runner, sizes: Sizes) -> None:
    match = run.step("matching", lambda: match_bench.measure(sizes.match_lines))
    ingest = run.step("journal ingest", lambda: ingest_bench.measure(sizes.ingest_entries))
    run.report.keep("ingest", ingest.row() if ingest else None)
    run.report.keep("match", match.row() if match else None)


def node_stack(bench: BenchNode) -> str:
    """The node's release and the versions of what nodemedic works with, as its dpkg says."""
    os_release = dict(line.split("=", 1) for line in bench.node.run(["cat", "/etc/os-release"]).stdout.splitlines()
                      if "=" in line)
    release = os_release.get("PRETTY_NAME", "?").strip('"')
    versions = bench.node.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "systemd", "containerd", "runc"]
                              ).stdout.split("\n")
    return f"{release} (stack `{bench.node.stack.name}`): " + ", ".join(v for v in versions if v)


def node_measures(run: Runner, sizes: Sizes) -> None:
    report = run.report
    with BenchNode.booted() as bench:
        report.node_python = bench.node.run([NODE_PYTHON, "-c", "import platform; print(platform.python_version())"]
                                            ).stdout.strip()
        report.node_stack = node_stack(bench)
        cni = run.step("CNI fault cycles", lambda: cni_runs(bench, sizes.cni_runs))
        # The PLEG signature needs a minute of lines first; what does not touch nodemedic runs meanwhile.
        streak = run.step("PLEG streak", lambda: start_streak(bench)) or time.monotonic()
        probe = run.step("probe cost", lambda: ProbeCost.measure(bench, sizes.probes))
        floor = run.step("bare interpreter", lambda: bare_python(bench, sizes.restarts)) or []
        imports = run.step("import costs", lambda: import_costs(bench)) or []
        report.imports = imports
        lines = run.step("journal line cycles", lambda: line_runs(bench, sizes.line_runs, streak))
        poll = run.step("poll loop comparison", lambda: poll_comparison(
            bench, sizes.poll_faults, sizes.poll_loops, sizes.poll_period, sizes.settle))
        starts = run.step("start-up", lambda: startup(bench, sizes.restarts))
        quiet = run.step("idle", lambda: idle(bench, sizes.idle_seconds, sizes.idle_fresh_seconds, sizes.settle))
        mem = run.step("memory", lambda: memory(bench, sizes.memory_entries, sizes.memory_chunks))
    if cni is not None and lines is not None and poll is not None:
        for row, key in zip(detection_rows(cni, lines, poll), ("detect-cni", "detect-line"), strict=True):
            report.keep(key, row)
        report.keep("heal", healing_row(cni, poll))
    report.keep("idle", idle_row(*quiet, poll.cpu_seconds_per_loop_minute if poll else float("nan"),
                                 sizes.poll_period) if quiet else None)
    report.keep("memory", memory_row(mem) if mem else None)
    report.keep("startup", startup_row(starts, floor, imports) if starts else None)
    for index, row in enumerate(probe.rows() if probe else []):
        report.keep(f"probe-{index}", row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): proves the bench runs")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py needs root: it boots a test node with systemd-nspawn", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else FULL
    report = Report(smoke=args.smoke)
    runner = Runner(report)
    host_measures(runner, sizes)
    node_measures(runner, sizes)
    report.finish()
    args.output.write_text(report.markdown())
    print(report.table())
    print(f"bench: wrote {args.output}" + (f"; FAILED: {', '.join(runner.failed)}" if runner.failed else ""),
          file=sys.stderr)
    return 1 if runner.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
