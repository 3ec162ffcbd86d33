"""What every benchmark shares: the result row, percentiles, number formats and machine facts.

A benchmark never asserts anything; it measures, and a row says how the number compares with its
alternative and with the goal the issue set. A missed goal is reported, never hidden.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Goal:
    text: str  # the goal as the issue states it, e.g. "p99 ≤ 50 ms"
    met: bool | None  # None: not judged (no goal, or nothing measured)
    detail: str = ""  # the measured value against the goal, and by how much it is missed


@dataclass(frozen=True)
class Row:
    measure: str
    nodemedic: str
    comparison: str
    ratio: str
    machine: str  # where it ran: "host" or "node (nspawn)"
    goal: Goal | None = None
    notes: tuple[str, ...] = field(default=())  # how it was measured, breakdowns, caveats

    def markdown(self) -> str:
        goal = f" (goal {self.goal.text})" if self.goal and self.goal.met is not None else ""
        return f"| {self.measure}{goal} | {self.nodemedic} | {self.comparison} | {self.ratio} | {self.machine} |"


TABLE_HEADER = "| measure | nodemedic | comparison | ratio | machine |\n|---|---|---|---|---|"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile: with fewer than 100 samples this is the maximum."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.1f} ms" if seconds >= 0.001 else f"{seconds * 1000:.2f} ms"


def med_p99(values: Sequence[float]) -> str:
    return f"median {ms(median(values))}, p99 {ms(p99(values))} (n={len(values)})"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def rate(per_second: float, unit: str) -> str:
    return f"{per_second:,.0f} {unit}/s"


def times(faster: float, slower: float) -> str:
    """How many times `slower` is `faster` (both durations or costs, same unit)."""
    if faster <= 0 or math.isnan(faster) or math.isnan(slower):
        return "n/a"
    ratio = slower / faster
    return f"{ratio:,.0f}×" if ratio >= 10 else f"{ratio:.1f}×"


# ---- machine facts ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float:
    return os.getloadavg()[0]


def concurrent_runs() -> list[str]:
    """Other test or node processes that would disturb the numbers (not ours)."""
    ours = {os.getpid(), os.getppid()}
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if int(pid) not in ours and ("pytest" in args or "systemd-nspawn" in args) and "ps -eo" not in args:
            found.append(args[:100])
    return found


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu: str
    kernel: str
    python: str
    memory_gib: float

    @classmethod
    def here(cls) -> Machine:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return cls(os.cpu_count() or 0, cpu_model(), platform.release(), platform.python_version(), pages / 2**30)

    def line(self) -> str:
        return (f"{self.cores} cores, {self.cpu}, {self.memory_gib:.0f} GiB RAM, kernel {self.kernel}, "
                f"python {self.python} ({platform.machine()})")
