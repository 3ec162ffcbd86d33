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
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "daemon"), str(REPO)]

from bench.common import Goal, Row, rate  # noqa: E402
from nodemedic.detector.decode import decode  # noqa: E402
from nodemedic.detector.matcher import Matcher  # noqa: E402
from nodemedic.detector.signatures import Signature, load_catalogue  # noqa: E402
from nodemedic.hostroot import HostRoot  # noqa: E402

SMOKE_LINES = 2_000
NAIVE_LINES = 20_000
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


class _RePattern:
    """The same pattern on Python's backtracking `re`, for the engine comparison only."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._re = re.compile(text.encode("utf-8"))

    def search(self, data: bytes) -> tuple[int, int] | None:
        found = self._re.search(data)
        return None if found is None else found.span()

    def found(self, data: bytes) -> bool:
        return self._re.search(data) is not None


def on_re(signature: Signature) -> Signature:
    def swap(patterns: tuple) -> tuple:
        return tuple(_RePattern(p.text) for p in patterns)
    return replace(signature, message=swap(signature.message), error=swap(signature.error),
                   legacy=swap(signature.legacy))


@dataclass(frozen=True)
class MatchResult:
    lines: int
    signatures: int
    regexes: int
    prefiltered: float  # lines/s, best of 3
    naive: float  # lines/s, once, on the first NAIVE_LINES lines
    on_re: float  # lines/s, best of 3: the same Matcher with the patterns on `re`
    candidates: int  # lines of the mix that passed the prefilter (decoded and judged)
    re2_candidates: float  # candidate lines/s, patterns on RE2
    re_candidates: float  # candidate lines/s, patterns on `re`

    def row(self) -> Row:
        return Row(
            f"matching: catalogue on a realistic mix ({self.lines:,} lines, ~1 % failing), best of 3",
            rate(self.prefiltered, "lines"), f"decode every line, try every signature: {rate(self.naive, 'lines')}",
            f"{self.prefiltered / self.naive:.0f}× faster", "host",
            Goal("no goal set; must stay far above any journal rate", None),
            (f"{self.signatures} signatures, {self.regexes} patterns; nodemedic's Matcher (Aho-Corasick literal "
             "prefilter, then only for a line holding a literal: decode its format once and run the patterns "
             "of the signatures whose literal occurs). Comparison: decode every line and try every signature.",
             f"Pattern engine, RE2 against Python's `re` (same catalogue, same Matcher): whole mix "
             f"{rate(self.prefiltered, 'lines')} against {rate(self.on_re, 'lines')}; on the "
             f"{self.candidates:,} lines that pass the prefilter {rate(self.re2_candidates, 'lines')} against "
             f"{rate(self.re_candidates, 'lines')}. RE2 is linear in the line for any pattern, operators' too; "
             "`re` can backtrack exponentially.",))


def measure(size: int) -> MatchResult:
    signatures = load_catalogue(HostRoot(REPO / "bench" / "no-such-root")).signatures
    matcher = Matcher(signatures)
    matcher_re = Matcher([on_re(s) for s in signatures])
    lines = realistic_mix(size)

    def every_signature(line: str) -> list[bool]:
        record = decode(line)
        return [s.judge(line, record).hit for s in signatures]

    prefiltered = max(lines_per_second(matcher.match, lines) for _ in range(3))
    naive = lines_per_second(every_signature, lines[:NAIVE_LINES])  # slow: once, on a slice
    with_re = max(lines_per_second(matcher_re.match, lines) for _ in range(3))
    candidates = [line for line in lines if matcher.any_literal(line)]
    re2_candidates = max(lines_per_second(matcher.match, candidates) for _ in range(3))
    re_candidates = max(lines_per_second(matcher_re.match, candidates) for _ in range(3))
    patterns = sum(len(s.patterns) for s in signatures)
    return MatchResult(size, len(signatures), patterns, prefiltered, naive, with_re, len(candidates),
                       re2_candidates, re_candidates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    args = parser.parse_args()
    result = measure(SMOKE_LINES if args.smoke else args.lines)
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip())
    print(f"catalogue: {result.signatures} signatures, {result.regexes} regexes; {result.lines} lines, ~1 % failing")
    print("| measure | nodemedic (prefiltered) | decode + every signature | ratio |")
    print("|---|---|---|---|")
    print(f"| matching, lines/s | {result.prefiltered:,.0f} | {result.naive:,.0f} | "
          f"{result.prefiltered / result.naive:.1f}x |")
    print(f"| patterns on RE2 vs re, whole mix, lines/s | {result.prefiltered:,.0f} | {result.on_re:,.0f} | "
          f"{result.prefiltered / result.on_re:.2f}x |")
    print(f"| patterns on RE2 vs re, the {result.candidates:,} prefiltered lines, lines/s | "
          f"{result.re2_candidates:,.0f} | {result.re_candidates:,.0f} | "
          f"{result.re2_candidates / result.re_candidates:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
