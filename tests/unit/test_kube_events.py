"""Event aggregation and rate limiting (nodemedic/kube/events.py)."""

from __future__ import annotations

from nodemedic.kube.events import AGGREGATE_WINDOW, Recorder, TokenBucket, event_body


def test_repeats_aggregate_into_one_event_with_count_and_last_time() -> None:
    rec = Recorder("node-a")
    first = rec.record("ProblemConfirmed", "Warning", "CniConfigMissing: confirmed", 100.0)
    again = rec.record("ProblemConfirmed", "Warning", "CniConfigMissing: confirmed", 130.0)
    assert first is not None and again is not None
    assert first.kind == "create" and again.kind == "patch" and again.name == first.name
    assert (again.count, again.first, again.last) == (2, 100.0, 130.0)
    other = rec.record("ProblemHealed", "Normal", "CniConfigMissing: healed", 131.0)
    assert other is not None and other.kind == "create" and other.name != first.name
    assert first.name.startswith("node-a.")


def test_a_repeat_after_the_window_is_a_new_event() -> None:
    rec = Recorder("n")
    a = rec.record("R", "Normal", "m", 0.0)
    b = rec.record("R", "Normal", "m", AGGREGATE_WINDOW + 1)
    assert a is not None and b is not None and b.kind == "create" and b.name != a.name


def test_forgotten_event_is_created_again() -> None:
    rec = Recorder("n")
    a = rec.record("R", "Normal", "m", 0.0)
    assert a is not None
    rec.forget(a.name)
    b = rec.record("R", "Normal", "m", 1.0)
    assert b is not None and b.kind == "create"


def test_rate_limit_burst_then_one_per_refill() -> None:
    rec = Recorder("n", burst=3, refill=10.0)
    assert all(rec.record("R", "Normal", f"m{i}", 0.0) for i in range(3))
    assert rec.record("R", "Normal", "m3", 0.0) is None and rec.dropped == 1
    assert rec.record("R", "Normal", "m4", 9.0) is None
    assert rec.record("R", "Normal", "m5", 10.5) is not None


def test_bucket_never_exceeds_burst() -> None:
    b = TokenBucket(2, 1.0)
    assert b.take(0.0) and b.take(0.0) and not b.take(0.0)
    assert b.take(1000.0) and b.take(1000.0) and not b.take(1000.0)


def test_event_body_names_the_node_with_uid() -> None:
    rec = Recorder("n")
    action = rec.record("ProblemExhausted", "Warning", "X: exhausted", 0.0)
    assert action is not None
    body = event_body(action, "n", "uid-1", "ProblemExhausted", "Warning", "X: exhausted", "n")
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "uid-1"}
    assert body["reportingComponent"] == "nodemedic" and body["metadata"]["namespace"] == "default"
    assert body["count"] == 1 and body["firstTimestamp"] == "1970-01-01T00:00:00Z"
