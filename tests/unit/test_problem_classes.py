"""Every problem a signature or a remedy names has a class, so that it lands in a Node condition."""

from __future__ import annotations

import tomllib
from pathlib import Path

from nodemedic.problems import CLASSES
from nodemedic.repairs.remedies import REMEDIES

SIGNATURES = Path(__file__).resolve().parents[2] / "etc" / "nodemedic" / "signatures.d"


def test_every_signatures_problem_has_a_class():
    named = {tomllib.loads(path.read_text())["problem"] for path in SIGNATURES.glob("*.toml")}
    assert named, "no signatures found"
    assert sorted(named - CLASSES.keys()) == []


def test_every_remedy_has_a_class():
    assert sorted(REMEDIES.keys() - CLASSES.keys()) == []
