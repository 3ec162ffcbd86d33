"""The benchmarks run in CI at tiny sizes so they cannot rot; their numbers are not asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# One row per measure of bench/run.py, in RESULTS.md's order (issue 7).
RUN_ROWS = (
    "| detection: CNI config removed → step started",
    "| detection: journal line → step started",
    "| fault → healed: CNI config removed → CRI NetworkReady=true",
    "| journal ingest:",
    "| matching:",
    "| idle: CPU and wake-ups",
    "| memory: RSS after start and after",
    "| start-up: process start → READY=1",
    "| probe cost: one CRI Status, in process, channel reused",
    "| probe cost: one CRI Status, in process, fresh channel",
)


def run_bench(name: str, *args: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, str(REPO / "bench" / name), "--smoke", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"bench/{name} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done.stdout


def test_match_bench_smoke_prints_its_table():
    out = run_bench("match_bench.py")
    assert "| matching, lines/s |" in out
    shipped = len(list((REPO / "etc" / "nodemedic" / "signatures.d").glob("*.toml")))
    assert f"catalogue: {shipped} signatures" in out


def test_ingest_bench_smoke_reads_a_real_journal_file():
    out = run_bench("ingest_bench.py")
    assert "| journal ingest, entries/s |" in out
    assert "journal: 3000 entries" in out


@pytest.mark.node
def test_full_bench_smoke_writes_every_row(tmp_path: Path):
    """bench/run.py --smoke boots one node and produces every row (no FAILED row, exit 0)."""
    results = tmp_path / "RESULTS.md"
    out = run_bench("run.py", "--output", str(results), timeout=400)
    text = results.read_text()
    for row in RUN_ROWS:
        assert row in text, f"{row!r} missing from RESULTS.md"
        assert row in out
    assert "FAILED: " not in text
    assert "**Machine:**" in text and "cores" in text
    assert "## Goals" in text
