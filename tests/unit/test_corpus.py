"""Generated tests: every shipped signature against its sample corpus (fail2ban-regex style)."""

from __future__ import annotations

import re
import time

import pytest

from nodemedic.detector.matcher import Matcher
from nodemedic.detector.signatures import Signature, load_catalogue
from nodemedic.hostroot import HostRoot
from tests.conftest import REPO
from tests.unit.corpus import CORPUS_DIR, STARTUP_NEGATIVES, read_corpus, read_plain

# The 21 failure modes of shared/reference/failure-modes.md, by the ids the issue fixes.
EXPECTED_IDS = {
    "kubelet-imagefs-invalid-capacity", "containerd-cni-config-load-failed", "kubelet-network-plugin-not-ready",
    "containerd-pull-failed-size-validation", "containerd-pull-failed-commit-on-ref",
    "containerd-reserve-sandbox-name", "containerd-rootfs-mount-missing", "kubelet-imagefs-info-unavailable",
    "kubelet-pleg-not-healthy", "cgroup-driver-mismatch", "kubeadm-join-kubelet-check-timeout",
    "kubelet-register-node-failed", "flannel-subnet-env-missing", "inotify-limits-exhausted",
    "kubelet-image-gc-insufficient", "kubelet-disk-pressure-eviction", "cni0-bridge-ip-conflict",
    "containerd-metadata-bolt-corrupt", "containerd-snapshot-parent-missing", "kubelet-swap-enabled",
    "kubelet-container-runtime-down",
}
# ReDoS guard: a pathological pattern takes milliseconds to seconds on these lines; a sane one
# a few microseconds. The best of several runs keeps scheduler noise out of the verdict.
REDOS_LIMIT_S = 50e-6
ADVERSARIAL_LEN = 4096

CATALOGUE = load_catalogue(HostRoot(REPO / "tests" / "no-such-root"))
SIGNATURES = {s.id: s for s in CATALOGUE.signatures}
MATCHER = Matcher(CATALOGUE.signatures)


def test_catalogue_ships_exactly_the_21_failure_modes():
    assert set(SIGNATURES) == EXPECTED_IDS


def test_every_corpus_file_belongs_to_a_signature():
    names = {p.stem for p in CORPUS_DIR.glob("*.log")} - {STARTUP_NEGATIVES.stem}
    assert names == set(SIGNATURES)


@pytest.fixture(params=sorted(SIGNATURES), name="signature")
def _signature(request) -> Signature:
    return SIGNATURES[request.param]


def test_corpus_exists_with_positive_and_negative_lines(signature):
    path = CORPUS_DIR / f"{signature.id}.log"
    assert path.is_file(), f"{signature.id} has no corpus {path}"
    samples = read_corpus(path)
    assert any(s.expect_match for s in samples), "no '+' line"
    assert any(not s.expect_match for s in samples), "no '-' line"


def test_corpus_lines_match_as_annotated(signature):
    for sample in read_corpus(CORPUS_DIR / f"{signature.id}.log"):
        assert signature.matches(sample.message) is sample.expect_match, sample.where()
        # through the matcher too, from each unit the signature trusts
        for unit in signature.units:
            ids = {s.id for s in MATCHER.match(sample.message, unit, signature.origin)}
            assert (signature.id in ids) is sample.expect_match, (sample.where(), unit)


def test_every_regex_alternative_is_hit(signature):
    positives = [s.message for s in read_corpus(CORPUS_DIR / f"{signature.id}.log") if s.expect_match]
    for alternative in signature.alternatives:
        assert any(alternative.match(line) for line in positives), f"never hit: {alternative.pattern}"


def test_positive_lines_point_at_one_problem_only():
    for path in sorted(CORPUS_DIR.glob("*.log")):
        if path == STARTUP_NEGATIVES:
            continue
        for sample in read_corpus(path):
            if sample.expect_match:
                problems = {s.problem for s in MATCHER.match(sample.message)}
                assert len(problems) == 1, (sample.where(), problems)


def test_real_containerd_startup_lines_match_nothing():
    samples = read_plain(STARTUP_NEGATIVES)
    assert len(samples) >= 20, "capture more real containerd start-up output"
    for sample in samples:
        assert MATCHER.match(sample.message) == [], sample.where()


def _adversarial_lines(signature: Signature) -> list[str]:
    positives = [s.message for s in read_corpus(CORPUS_DIR / f"{signature.id}.log") if s.expect_match]
    lines = [
        signature.literal * (ADVERSARIAL_LEN // max(1, len(signature.literal))),
        "a" * ADVERSARIAL_LEN,
        " " * ADVERSARIAL_LEN,
        '"' * ADVERSARIAL_LEN,
        "=\"" * (ADVERSARIAL_LEN // 2),
    ]
    for line in positives:
        # a real start that never finishes the way the pattern wants
        for filler in ("a", " ", '"', "\\", "x=\"y\" "):
            half = line[: len(line) // 2]
            lines.append((half + filler * ADVERSARIAL_LEN)[:ADVERSARIAL_LEN])
            lines.append((line + filler * ADVERSARIAL_LEN)[:ADVERSARIAL_LEN])
    return lines


def _best_time(pattern: re.Pattern[str], line: str, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        pattern.match(line)
        best = min(best, time.perf_counter() - start)
    return best


def test_no_pattern_backtracks_catastrophically(signature):
    for line in _adversarial_lines(signature):
        for alternative in signature.alternatives:
            spent = _best_time(alternative, line)
            assert spent <= REDOS_LIMIT_S, f"{alternative.pattern!r} took {spent * 1e6:.0f} µs on {line[:60]!r}…"
