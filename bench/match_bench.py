"""Matching speed: lines/s of the full catalogue on a realistic mix, against trying every regex.

The mix is mostly lines that match nothing (real containerd start-up output and typical kubelet
info lines), with about 1 % failure lines from the corpus. Prints one table; `--smoke` runs a
tiny size so CI keeps the benchmark from rotting. Not a test: nothing here asserts a timing.
`bench/run.py` calls `measure()` for its RESULTS.md row.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "daemon"), str(REPO)]

from bench.common import Goal, Row, rate  # noqa: E402
from nodemedic.detector.matcher import Matcher  # noqa: E402
from nodemedic.detector.signatures import load_catalogue  # noqa: E402
from nodemedic.hostroot import HostRoot  # noqa: E402

SMOKE_LINES = 2_000
KUBELET_INFO = [
    'I0416 22:26:30.150357   10125 kubelet_node_status.go:70] "Attempting to register node" node="worker-1"',
    'I0416 22:26:31.002100   10125 reconciler_common.go:245] "operationExecutor.VerifyControllerAttachedVolume '
    'started for volume" volumeName="kubernetes.io/projected/abc-kube-api-access-x2v5k" pod="kube-system/coredns-1"',
    'I0416 22:26:32.441000   10125 kuberuntime_manager.go:1046] "Updating runtime config through cri with podcidr" '
    'CIDR="10.244.1.0/24"',
    'I0416 22:26:33.120000   10125 pod_startup_latency_tracker.go:102] "Observed pod startup duration" '
    'pod="kube-system/kube-proxy-7x9q2" podStartSLOduration=2.1',
    'I0416 22:26:35.000000   10125 prober.go:107] "Probe failed" probeType="Readiness" pod="default/web-0"',
]


def realistic_mix(size: int, seed: int = 7) -> list[str]:
    corpus = REPO / "tests" / "corpus"
    benign = [ln for ln in (corpus / "containerd-startup-real.log").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")] if (corpus / "containerd-startup-real.log").exists() else []
    failing = [ln[2:] for p in sorted(corpus.glob("*.log")) for ln in p.read_text().splitlines()
               if ln.startswith("+ ")]
    rng = random.Random(seed)
    quiet = benign + KUBELET_INFO
    return [rng.choice(failing) if failing and rng.random() < 0.01 else rng.choice(quiet) for _ in range(size)]


def lines_per_second(fn: Callable[[str], object], lines: list[str]) -> float:
    start = time.perf_counter()
    for line in lines:
        fn(line)
    return len(lines) / (time.perf_counter() - start)


@dataclass(frozen=True)
class MatchResult:
    lines: int
    signatures: int
    regexes: int
    prefiltered: float  # lines/s, best of 3
    naive: float  # lines/s, best of 3

    def row(self) -> Row:
        return Row(
            f"matching: catalogue on a realistic mix ({self.lines:,} lines, ~1 % failing), best of 3",
            rate(self.prefiltered, "lines"), f"every regex in turn: {rate(self.naive, 'lines')}",
            f"{self.prefiltered / self.naive:.1f}× faster", "host",
            Goal("no goal set; must stay far above any journal rate", None),
            (f"{self.signatures} signatures, {self.regexes} regexes; nodemedic's Matcher (Aho-Corasick literal "
             "prefilter, then the anchored regexes of the signatures whose literal occurs).",))


def measure(size: int) -> MatchResult:
    signatures = load_catalogue(HostRoot(REPO / "bench" / "no-such-root")).signatures
    matcher = Matcher(signatures)
    lines = realistic_mix(size)
    alternatives = [alt for s in signatures for alt in s.alternatives]

    def every_regex(line: str) -> list[bool]:
        return [alt.match(line) is not None for alt in alternatives]

    prefiltered = max(lines_per_second(matcher.match, lines) for _ in range(3))
    naive = max(lines_per_second(every_regex, lines) for _ in range(3))
    return MatchResult(size, len(signatures), len(alternatives), prefiltered, naive)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    args = parser.parse_args()
    result = measure(SMOKE_LINES if args.smoke else args.lines)
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip())
    print(f"catalogue: {result.signatures} signatures, {result.regexes} regexes; {result.lines} lines, ~1 % failing")
    print("| measure | nodemedic (prefiltered) | every regex in turn | ratio |")
    print("|---|---|---|---|")
    print(f"| matching, lines/s | {result.prefiltered:,.0f} | {result.naive:,.0f} | "
          f"{result.prefiltered / result.naive:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
