"""Pattern.found (a one-pattern RE2::Set, forward DFA only) answers as Pattern.search does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodemedic.detector import patterns
from nodemedic.detector.matcher import Matcher
from nodemedic.detector.patterns import Pattern
from nodemedic.detector.signatures import load_catalogue
from nodemedic.hostroot import HostRoot
from tests.conftest import REPO
from tests.unit.corpus import CORPUS_DIR, STARTUP_NEGATIVES, read_corpus

SHIPPED = load_catalogue(HostRoot(REPO / "tests" / "no-such-root")).signatures
# Every pattern nodemedic runs: each signature's own, its alternations and the matcher's gates.
PATTERNS = sorted({p.text for s in SHIPPED for p in (*s.patterns, s._message_any, s._error_any) if p is not None}
                  | {g.text for g in Matcher(SHIPPED)._gates.values() if g is not None})
LINES = sorted({sample.message for path in CORPUS_DIR.glob("*.log") if path != STARTUP_NEGATIVES
                 for sample in read_corpus(path)} | set(STARTUP_NEGATIVES.read_text().splitlines()))


def test_found_agrees_with_search_for_every_shipped_pattern_on_every_corpus_line():
    assert len(PATTERNS) > 50 and len(LINES) > 200  # the catalogue and corpus really were read
    hits = 0
    for text in PATTERNS:
        pattern = Pattern(text)
        for line in LINES:
            data = line.encode("utf-8", errors="replace")
            assert pattern.found(data) == (pattern.search(data) is not None), (text, line)
            hits += pattern.found(data)
    assert hits > len(LINES)  # the agreement includes many matches, not only misses


@settings(max_examples=300, deadline=None)
@given(text=st.sampled_from(PATTERNS), data=st.binary(max_size=200) | st.sampled_from(LINES).map(str.encode))
def test_found_agrees_with_search_on_any_bytes(text, data):
    pattern = Pattern(text)
    assert pattern.found(data) == (pattern.search(data) is not None)


@pytest.mark.parametrize("text, data, expected", [
    ("^abc", b"abc x", True), ("^abc", b"x abc", False), ("abc$", b"x abc", True), ("abc$", b"abc x", False),
    ("a.c", b"a\nc", False), ("(?s)a.c", b"a\nc", True), ("", b"", True),
])
def test_found_keeps_the_patterns_own_anchors_and_flags(text, data, expected):
    assert Pattern(text).found(data) is expected


def test_a_pattern_whose_set_re2_refuses_is_judged_by_search(monkeypatch):
    monkeypatch.setattr(patterns, "_one_pattern_set", lambda text: False)
    pattern = Pattern("no CNI configuration file")
    assert pattern.found(b'msg="no CNI configuration file in /etc/cni/net.d"')
    assert not pattern.found(b"all fine")
