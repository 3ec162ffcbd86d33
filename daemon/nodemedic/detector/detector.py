"""Events × signatures → suspicions, with each signature's count/window or persistence.

Replayed entries (written before the daemon started) are counted but never raise a suspicion
by themselves; only a live entry can complete a threshold.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from nodemedic.detector.matcher import Matcher
from nodemedic.detector.signatures import Signature
from nodemedic.sources.events import JournalLine


@dataclass(frozen=True)
class Suspicion:
    problem: str
    trigger: str  # signature id or condition name
    cursor: str = ""
    detail: str = ""
    # The operator asked for it (nodemedic repair): no cooldown, and "disabled" does not apply.
    forced: bool = False
    # The evidence is the node as it is now (a path condition: no CNI config in the dir), not
    # a line about the past: after a heal it is confirmed like any fault, never dismissed by
    # one look at a component that may not have caught up yet.
    live: bool = False


class _Hits:
    """Recent hit times of one signature, in seconds."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.streak_start: float | None = None
        self.last: float | None = None

    def add(self, signature: Signature, at: float) -> bool:
        """Record a hit; True when the signature's threshold is now met."""
        threshold = signature.threshold
        if threshold.persists is not None:
            if self.last is None or at - self.last > threshold.persists:
                self.streak_start = at  # a gap longer than the period breaks the streak
            self.last = at
            assert self.streak_start is not None
            return at - self.streak_start >= threshold.persists
        assert threshold.count is not None and threshold.window is not None
        self.times.append(at)
        while self.times and at - self.times[0] > threshold.window:
            self.times.popleft()
        return len(self.times) >= threshold.count


class Detector:
    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher
        self._hits: dict[str, _Hits] = {}
        self.hit_counts: dict[str, int] = {}

    def journal_line(self, line: JournalLine) -> list[Suspicion]:
        suspicions = []
        at = line.realtime_us / 1_000_000
        for signature in self.matcher.match(line.message, line.unit, line.origin):
            self.hit_counts[signature.id] = self.hit_counts.get(signature.id, 0) + 1
            met = self._hits.setdefault(signature.id, _Hits()).add(signature, at)
            if met and not line.replay:
                suspicions.append(Suspicion(signature.problem, signature.id, line.cursor, signature.summary))
        return suspicions

    def forget(self, problem: str) -> None:
        """Start counting afresh for a problem, e.g. after it was healed."""
        for signature in self.matcher.signatures:
            if signature.problem == problem:
                self._hits.pop(signature.id, None)
