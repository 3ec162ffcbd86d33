"""Node conditions from problems (nodemedic/kube/conditions.py): pure diffing."""

from __future__ import annotations

from typing import Any

from nodemedic.kube.conditions import MARK, ProblemView, camel, patch, removal, wanted
from nodemedic.problems import ProblemClass

T0, T1 = "2026-11-30T10:00:00Z", "2026-11-30T10:01:00Z"


def view(problem: str, phase: str, klass: ProblemClass = ProblemClass.NETWORK, **kw: Any) -> ProblemView:
    return ProblemView(problem, klass, phase, **kw)


def apply(conditions: list[dict[str, Any]], body: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What the API server does with a strategic-merge patch keyed by type (the subset used)."""
    if body is None:
        return conditions
    by_type = {c["type"]: dict(c) for c in conditions}
    for item in body["status"]["conditions"]:
        if item.get("$patch") == "delete":
            by_type.pop(item["type"], None)
        else:
            by_type.setdefault(item["type"], {}).update(item)
    return list(by_type.values())


def by_type(conditions: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(c for c in conditions if c["type"] == kind)


def test_camel_case_reason() -> None:
    assert camel("cni-config-missing") == "CniConfigMissing"
    assert camel("containerd-crash-loop") == "ContainerdCrashLoop"


def test_confirmed_problem_sets_its_class_true_with_progress_and_clears() -> None:
    step = view("cni-config-missing", "repairing", step="write-placeholder", step_index=2, steps=3,
                attempts=2, budget=5)
    conds = apply([], patch([], wanted([step], False), T0, heartbeat=False))
    net = by_type(conds, "ContainerNetworkProblem")
    assert net["status"] == "True" and net["reason"] == "CniConfigMissing"
    assert "step 2 of 3 (write-placeholder)" in net["message"] and "attempts 2 of 5" in net["message"]
    assert net["lastTransitionTime"] == T0
    assert by_type(conds, "ContainerRuntimeProblem")["status"] == "False"
    assert by_type(conds, "ContainerRuntimeProblem")["reason"] == "ContainerRuntimeIsHealthy"
    # Healed: False with the healthy reason; a new transition time.
    conds = apply(conds, patch(conds, wanted([view("cni-config-missing", "healed")], False), T1, False))
    net = by_type(conds, "ContainerNetworkProblem")
    assert (net["status"], net["reason"], net["lastTransitionTime"]) == ("False", "ContainerNetworkIsHealthy", T1)


def test_suspected_is_not_shown() -> None:
    assert wanted([view("cni-config-missing", "suspected")], False)["ContainerNetworkProblem"].status == "False"


def test_only_changes_are_sent_and_transition_time_kept_on_same_status() -> None:
    first = [view("cni-config-missing", "confirmed", attempts=0, budget=5)]
    conds = apply([], patch([], wanted(first, False), T0, False))
    assert patch(conds, wanted(first, False), T1, heartbeat=False) is None
    # The message changes (a step started), the status does not: no lastTransitionTime sent.
    climbing = [view("cni-config-missing", "repairing", step="s", step_index=1, steps=2, attempts=1, budget=5)]
    body = patch(conds, wanted(climbing, False), T1, heartbeat=False)
    assert body is not None
    [item] = body["status"]["conditions"]
    assert "lastTransitionTime" not in item and item["lastHeartbeatTime"] == T1
    assert by_type(apply(conds, body), "ContainerNetworkProblem")["lastTransitionTime"] == T0


def test_heartbeat_resends_everything_without_transition() -> None:
    conds = apply([], patch([], wanted([], False), T0, False))
    body = patch(conds, wanted([], False), T1, heartbeat=True)
    assert body is not None and len(body["status"]["conditions"]) == 4
    assert all("lastTransitionTime" not in c and c["lastHeartbeatTime"] == T1 for c in body["status"]["conditions"])


def test_worst_problem_of_a_class_names_the_reason() -> None:
    w = wanted([view("ingest-stale", "confirmed", ProblemClass.IMAGEFS),
                view("imagefs-capacity-zero", "exhausted", ProblemClass.IMAGEFS, attempts=3, budget=3)], False)
    c = w["ImageFilesystemProblem"]
    assert c.reason == "ImagefsCapacityZero" and "exhausted after attempts 3 of 3" in c.message
    assert "ingest-stale confirmed" in c.message


def test_handoff_false_only_when_exhausted_true_when_healed() -> None:
    climbing = wanted([view("cni-config-missing", "repairing", step="s", step_index=1, steps=3)], True)
    assert climbing["NetworkingReady"].status == "True"
    assert {"ContainerRuntimeReady", "NetworkingReady", "StorageReady"} <= set(climbing)
    exhausted = wanted([view("cni-config-missing", "exhausted", attempts=3, budget=3)], True)
    assert exhausted["NetworkingReady"].status == "False"
    assert exhausted["NetworkingReady"].reason == "NodemedicExhaustedCniConfigMissing"
    assert exhausted["ContainerRuntimeReady"].status == "True"
    assert wanted([view("cni-config-missing", "healed")], True)["NetworkingReady"].status == "True"
    assert "NetworkingReady" not in wanted([view("cni-config-missing", "exhausted")], False)


def test_handoff_turned_off_removes_only_our_handoff_conditions() -> None:
    conds = apply([], patch([], wanted([], True), T0, False))
    assert by_type(conds, "NetworkingReady")["status"] == "True"
    body = patch(conds, wanted([], False), T1, heartbeat=False)
    assert body is not None
    deleted = {c["type"] for c in body["status"]["conditions"] if c.get("$patch") == "delete"}
    assert deleted == {"ContainerRuntimeReady", "NetworkingReady", "StorageReady"}


def test_someone_elses_conditions_are_never_touched() -> None:
    theirs = [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting"},
              {"type": "NetworkingReady", "status": "False", "reason": "IPAMDNotReady", "message": "eks agent"},
              {"type": "KernelDeadlock", "status": "False", "reason": "KernelHasNoDeadlock", "message": "npd"}]
    body = patch(theirs, wanted([view("cni-config-missing", "exhausted")], True), T0, heartbeat=True)
    assert body is not None
    touched = {c["type"] for c in body["status"]["conditions"]}
    assert not touched & {"Ready", "NetworkingReady", "KernelDeadlock"}
    assert removal(theirs) is None


def test_removal_deletes_ours_only() -> None:
    conds = apply([{"type": "Ready", "status": "True", "message": "kubelet"}], patch([], wanted([], True), T0, False))
    body = removal(conds)
    assert body is not None
    left = apply(conds, body)
    assert [c["type"] for c in left] == ["Ready"]
    assert all(c["message"].startswith(MARK) for c in conds if c["type"] != "Ready")
