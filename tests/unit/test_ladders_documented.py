"""The README's ladder table is the shipped REMEDIES and CONFIRMS, not a memory of them."""

from __future__ import annotations

import re
from pathlib import Path

from nodemedic.repairs.remedies import CONFIRMS, REMEDIES

README = Path(__file__).resolve().parents[2] / "README.md"


def documented() -> dict[str, tuple[str, bool]]:
    rows = re.findall(r"^\| `([\w-]+)` \| ([^|]+) \| (yes|no[^|]*) \|$", README.read_text(), flags=re.M)
    return {problem: (ladder.strip(), confirmed == "yes") for problem, ladder, confirmed in rows}


def test_every_problem_is_in_the_readme_with_its_ladder_and_probe():
    shipped = {
        name: (" → ".join(f"{s.name} ({s.klass})" for s in remedy.steps) or "report only", name in CONFIRMS)
        for name, remedy in REMEDIES.items()
    }
    assert documented() == shipped
