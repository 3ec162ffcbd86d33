"""Reading the fail2ban-style sample corpus: tests/corpus/<signature id>.log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

CORPUS_DIR = REPO / "tests" / "corpus"
# Real containerd start-up output, every line of which must match no signature.
STARTUP_NEGATIVES = CORPUS_DIR / "containerd-startup-real.log"


@dataclass(frozen=True)
class Sample:
    path: Path
    line: int
    expect_match: bool
    message: str

    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def read_corpus(path: Path) -> list[Sample]:
    samples = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        marker, _, message = raw.partition(" ")
        if marker not in ("+", "-"):
            raise ValueError(f"{path}:{number}: corpus lines start with '+ ', '- ' or '#'")
        samples.append(Sample(path, number, marker == "+", message))
    return samples


def read_plain(path: Path) -> list[Sample]:
    return [Sample(path, n, False, line) for n, line in enumerate(path.read_text().splitlines(), start=1)
            if line.strip() and not line.startswith("#")]
