"""The benchmarks run in CI at tiny sizes so they cannot rot; their numbers are not asserted."""

import subprocess
import sys

from tests.conftest import REPO


def run_bench(name: str) -> str:
    return subprocess.run([sys.executable, str(REPO / "bench" / name), "--smoke"],
                          check=True, capture_output=True, text=True, timeout=300).stdout


def test_match_bench_smoke_prints_its_table():
    out = run_bench("match_bench.py")
    assert "| matching, lines/s |" in out
    assert "catalogue: 21 signatures" in out


def test_ingest_bench_smoke_reads_a_real_journal_file():
    out = run_bench("ingest_bench.py")
    assert "| journal ingest, entries/s |" in out
    assert "journal: 3000 entries" in out
