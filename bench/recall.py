"""Recall and false positives of the catalogue on held-out real variants (bench/heldout/).

The lines were collected from public issue threads and never used to tune a signature; this
prints how many the catalogue recognises as the right signature, and how many benign lines it
wrongly matches. Not a test: held-out data must not become a target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "daemon"), str(REPO)]

from nodemedic.detector.matcher import Matcher  # noqa: E402
from nodemedic.detector.signatures import load_catalogue  # noqa: E402
from nodemedic.hostroot import HostRoot  # noqa: E402

HELDOUT = REPO / "bench" / "heldout" / "real-variants.log"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="list every miss and false positive")
    parser.add_argument("file", nargs="?", type=Path, default=HELDOUT)
    args = parser.parse_args()
    matcher = Matcher(load_catalogue(HostRoot(REPO / "bench" / "no-such-root")).signatures)
    hits = positives = false_positives = negatives = 0
    heldout = args.file
    for number, raw in enumerate(heldout.read_text(encoding="utf-8").splitlines(), start=1):
        if raw.startswith("+ "):
            expected, line = raw[2:].split(" ", 1)
            positives += 1
            got = {s.id for s in matcher.match(line)}
            hits += expected in got
            if args.verbose and expected not in got:
                print(f"miss {heldout.name}:{number} {expected}: got {sorted(got)}")
        elif raw.startswith("- "):
            negatives += 1
            got = {s.id for s in matcher.match(raw[2:])}
            false_positives += bool(got)
            if args.verbose and got:
                print(f"false positive {heldout.name}:{number}: {sorted(got)}")
    print(f"recall {hits}/{positives} = {hits / positives:.0%}; false positives {false_positives}/{negatives}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
