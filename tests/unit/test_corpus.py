"""Generated tests: every shipped signature against its corpus, in every format (fail2ban-regex style)."""

from __future__ import annotations

import pytest

from nodemedic.detector.decode import decode
from nodemedic.detector.matcher import Matcher
from nodemedic.detector.signatures import Signature, load_catalogue
from nodemedic.hostroot import HostRoot
from tests.conftest import REPO
from tests.unit.corpus import (
    COMPONENT_OF_UNIT,
    CORPUS_DIR,
    RELEASES,
    STARTUP_NEGATIVES,
    Sample,
    corpus_ids,
    formats_of,
    read_corpus,
    read_plain,
    read_spans,
    renderings,
    signature_ids,
)

CATALOGUE = load_catalogue(HostRoot(REPO / "tests" / "no-such-root"))
SIGNATURES = {s.id: s for s in CATALOGUE.signatures}
MATCHER = Matcher(CATALOGUE.signatures)
# The formats a unit's lines come in, as written (JSON renderings are generated from them).
UNIT_FORMATS = {
    "kubelet.service": {"klog", "klog-structured"},
    "containerd.service": {"logfmt"},
    "kubeadm": {"text"},
}


def _all_samples(signature_id: str) -> list[Sample]:
    written = read_corpus(CORPUS_DIR / f"{signature_id}.log")
    return written + [r for s in written for r in renderings(s)]


def test_the_corpus_directory_and_the_catalogue_name_the_same_signatures():
    assert set(signature_ids()) == set(SIGNATURES)
    assert set(corpus_ids()) == set(SIGNATURES)


@pytest.fixture(params=signature_ids(), name="signature")
def _signature(request) -> Signature:
    return SIGNATURES[request.param]


def test_corpus_has_positive_and_negative_lines(signature):
    samples = read_corpus(CORPUS_DIR / f"{signature.id}.log")
    assert any(s.expect_match for s in samples), "no '+' line"
    assert any(not s.expect_match for s in samples), "no '-' line"


def test_every_format_a_unit_writes_has_a_positive_variant(signature):
    """Each unit the signature trusts: a '+' line in each of its text formats, and (rendered
    from those) in its JSON format."""
    positives = [s for s in _all_samples(signature.id) if s.expect_match]
    have = formats_of(positives)
    for unit in signature.units:
        # kubelet 1.20 still wrote free text (klog), 1.21+ structured klog: both
        wanted = UNIT_FORMATS[unit]
        missing = wanted - have
        assert not missing, f"{unit}: no '+' line in {sorted(missing)}"
        if unit == "kubelet.service":
            assert "klog-json" in have
        if unit == "containerd.service":
            assert "logrus-json" in have


def test_every_supported_release_has_a_positive_variant(signature):
    """Each unit the signature trusts: every release line of its component (kubelet 1.20-1.36,
    containerd 1.6-2.3, kubeadm 1.20-1.36) is covered by a `# src:` block with a '+' line, or
    by a `# absent:` header saying why that release never writes the failure."""
    path = CORPUS_DIR / f"{signature.id}.log"
    samples = read_corpus(path)
    for unit in signature.units:
        component = COMPONENT_OF_UNIT[unit]
        covered = {r for s in samples if s.expect_match and s.span is not None and s.span.component == component
                   and not s.span.absent for r in s.span.releases()}
        covered |= {r for span in read_spans(path) if span.absent and span.component == component
                    for r in span.releases()}
        missing = [f"v{major}.{minor}" for major, minor in RELEASES[component] if (major, minor) not in covered]
        assert not missing, f"{unit}: no '# src: {component} ...' block with a '+' line for {missing}"


def test_absent_headers_head_no_positive_line(signature):
    for sample in read_corpus(CORPUS_DIR / f"{signature.id}.log"):
        if sample.span is not None and sample.span.absent:
            assert not sample.expect_match, f"{sample.where()}: a '+' line under '# absent:'"


def test_corpus_lines_match_as_annotated_in_every_format(signature):
    for sample in _all_samples(signature.id):
        assert signature.matches(sample.message) is sample.expect_match, (sample.where(), decode(sample.message))
        # through the matcher too, from each unit the signature trusts
        for unit in signature.units:
            ids = {s.id for s in MATCHER.match(sample.message, unit, signature.origin)}
            assert (signature.id in ids) is sample.expect_match, (sample.where(), unit)


def test_every_pattern_is_hit(signature):
    records = [decode(s.message) for s in _all_samples(signature.id) if s.expect_match]
    hit: set[str] = set()
    for record in records:
        verdict = signature.judge_record(record, explain=True)
        hit.update(p.text for p in signature.patterns if repr(p.text) in verdict.reason)
    never = [p.text for p in signature.message + signature.error if p.text not in hit]
    assert not never, f"never hit: {never}"


def test_positive_lines_point_at_one_problem_only():
    for signature_id in signature_ids():
        for sample in _all_samples(signature_id):
            if sample.expect_match:
                problems = {s.problem for s in MATCHER.match(sample.message)}
                assert len(problems) == 1, (sample.where(), problems)


def test_real_containerd_startup_lines_match_nothing():
    samples = read_plain(STARTUP_NEGATIVES)
    assert len(samples) >= 20, "capture more real containerd start-up output"
    for sample in samples + [r for s in samples for r in renderings(s)]:
        assert MATCHER.match(sample.message) == [], sample.where()


def test_the_literal_gate_loses_no_line_and_bytes_match_as_text():
    """Behind the RE2 gate, match() gives what trying every signature of the source gives."""
    lines = [s.message for sid in signature_ids() for s in _all_samples(sid)]
    lines += [s.message for s in read_plain(STARTUP_NEGATIVES)]
    for line in lines:
        assert MATCHER.match(line.encode("utf-8")) == MATCHER.match(line)
        for unit in MATCHER.units():
            for origin in ("unit", "manager"):
                expected = [s for s in MATCHER.signatures
                            if unit in s.units and s.origin == origin and s.matches(line)]
                assert MATCHER.match(line, unit, origin) == expected, (line, unit, origin)
