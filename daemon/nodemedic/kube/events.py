"""Events on the Node from the daemon's transitions, aggregated and rate-limited the way the
kubelet's event recorder (client-go's EventCorrelator) does it.

Pure: `Recorder.record(...)` says what to send, the caller sends it.
- Aggregation: a repeat of the same (reason, type, message) within AGGREGATE_WINDOW updates
  the one Event already on the server: count + 1 and lastTimestamp, not a new object.
- Rate limit: a token bucket per Node (client-go's spam filter: burst 25, one token per 5 min).
  An Event refused by it is dropped, counted, and said once in the journal by the caller.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nodemedic.kube.conditions import camel

COMPONENT = "nodemedic"
BURST = 25
REFILL = 300.0  # seconds per token
AGGREGATE_WINDOW = 600.0
CACHE = 256  # distinct Events remembered for aggregation

# Daemon phase -> (reason, type). Only these four transitions make an Event.
REASONS: dict[str, tuple[str, str]] = {
    "confirmed": ("ProblemConfirmed", "Warning"),
    "repairing": ("RepairStepStarted", "Normal"),
    "healed": ("ProblemHealed", "Normal"),
    "exhausted": ("ProblemExhausted", "Warning"),
}


@dataclass
class Sent:
    name: str
    count: int
    first: float
    last: float


@dataclass(frozen=True)
class Action:
    kind: str  # "create" | "patch"
    name: str
    count: int
    first: float
    last: float


class TokenBucket:
    def __init__(self, burst: int = BURST, refill: float = REFILL) -> None:
        self.burst, self.refill = burst, refill
        self.tokens = float(burst)
        self.stamp: float | None = None

    def take(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) / self.refill)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Recorder:
    def __init__(self, node: str, burst: int = BURST, refill: float = REFILL) -> None:
        self.node = node
        self.bucket = TokenBucket(burst, refill)
        self.seen: OrderedDict[tuple[str, str, str], Sent] = OrderedDict()
        self.dropped = 0

    def record(self, reason: str, type_: str, message: str, now: float) -> Action | None:
        """What to send for this occurrence, or None when the rate limit drops it."""
        if not self.bucket.take(now):
            self.dropped += 1
            return None
        key = (reason, type_, message)
        sent = self.seen.get(key)
        if sent is not None and now - sent.last <= AGGREGATE_WINDOW:
            sent.count += 1
            sent.last = now
            self.seen.move_to_end(key)
            return Action("patch", sent.name, sent.count, sent.first, now)
        # A name like the kubelet's: the object's name and a unique suffix.
        sent = Sent(f"{self.node}.{secrets.token_hex(8)}", 1, now, now)
        self.seen[key] = sent
        self.seen.move_to_end(key)
        while len(self.seen) > CACHE:
            self.seen.popitem(last=False)
        return Action("create", sent.name, 1, now, now)

    def forget(self, name: str) -> None:
        """The server lost the Event (404 on a patch): the next repeat creates a new one."""
        for key, sent in list(self.seen.items()):
            if sent.name == name:
                del self.seen[key]


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def event_body(action: Action, node: str, uid: str, reason: str, type_: str, message: str,
               host: str) -> dict[str, Any]:
    """A core/v1 Event on the Node (Events of cluster-scoped objects live in "default")."""
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": action.name, "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid},
        "reason": reason, "type": type_, "message": message, "count": action.count,
        "firstTimestamp": rfc3339(action.first), "lastTimestamp": rfc3339(action.last),
        "source": {"component": COMPONENT, "host": host},
        "reportingComponent": COMPONENT, "reportingInstance": host,
    }


def event_patch(action: Action) -> dict[str, Any]:
    return {"count": action.count, "lastTimestamp": rfc3339(action.last)}


def message_for(problem: str, state: str) -> str:
    return f"{camel(problem)}: {state}"
