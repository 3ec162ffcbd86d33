"""The benchmarks run in CI at tiny sizes so they cannot rot; their numbers are not asserted."""

import subprocess
import sys

from tests.conftest import REPO


def test_match_bench_smoke_prints_its_table():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "match_bench.py"), "--smoke"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert "| matching, lines/s |" in out
    assert "catalogue: 21 signatures" in out
