"""Node conditions from the daemon's problems: one per class of problem, and the opt-in hand-off.

Pure: the problems (the daemon's Details()) and the Node's current conditions in, the
strategic-merge patch of nodes/NAME/status out (or None when nothing needs sending).

- NPD's convention for the per-class conditions: True means a problem, with a healthy reason
  when False. The reason is the worst problem in CamelCase, the message its state.
- The hand-off (kubernetes.handoff) follows the EKS node monitoring agent, as Karpenter's node
  repair, MachineHealthCheck and NodeHealthCheck read it: True means healthy. It goes False
  only once a problem is exhausted, never while the ladder still climbs.
- Ownership without a side file: a condition is nodemedic's when its type is one nodemedic
  writes AND its message starts with MARK. Anything else is someone else's and never touched,
  so an EKS agent's own NetworkingReady survives nodemedic's hand-off being turned off.
- lastTransitionTime is sent only when the status changes; otherwise the server keeps the
  one it has (a strategic merge leaves fields the patch does not name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodemedic.problems import ProblemClass

MARK = "nodemedic: "

PROBLEM_TYPES: dict[ProblemClass, str] = {
    ProblemClass.RUNTIME: "ContainerRuntimeProblem",
    ProblemClass.NETWORK: "ContainerNetworkProblem",  # never NetworkUnavailable: the CNI plugin's
    ProblemClass.IMAGEFS: "ImageFilesystemProblem",
    ProblemClass.KUBELET: "KubeletProblem",
}
HEALTHY_REASONS: dict[ProblemClass, str] = {
    ProblemClass.RUNTIME: "ContainerRuntimeIsHealthy",
    ProblemClass.NETWORK: "ContainerNetworkIsHealthy",
    ProblemClass.IMAGEFS: "ImageFilesystemIsHealthy",
    ProblemClass.KUBELET: "KubeletIsHealthy",
}
# EKS-convention conditions (True = healthy). A kubelet nodemedic cannot heal leaves the node's
# containers without a runtime that works for them: ContainerRuntimeReady, as the EKS agent
# files kubelet failures.
HANDOFF_TYPES: dict[ProblemClass, str] = {
    ProblemClass.RUNTIME: "ContainerRuntimeReady",
    ProblemClass.NETWORK: "NetworkingReady",
    ProblemClass.IMAGEFS: "StorageReady",
    ProblemClass.KUBELET: "ContainerRuntimeReady",
}
OWNED_TYPES = frozenset(PROBLEM_TYPES.values()) | frozenset(HANDOFF_TYPES.values())

SHOWN = frozenset({"confirmed", "repairing", "verifying", "exhausted"})  # suspected is not shown
RANK = {"exhausted": 3, "repairing": 2, "verifying": 2, "confirmed": 1}


@dataclass(frozen=True)
class ProblemView:
    """One problem as Details() reports it."""

    problem: str
    klass: ProblemClass
    phase: str
    step: str = ""
    step_index: int = 0
    steps: int = 0
    attempts: int = 0
    budget: int = 0

    @classmethod
    def from_details(cls, item: Mapping[str, Any]) -> ProblemView:
        return cls(str(item["problem"]), ProblemClass(item["class"]), str(item["phase"]), str(item.get("step", "")),
                   int(item.get("step_index", 0)), int(item.get("steps", 0)), int(item.get("attempts", 0)),
                   int(item.get("budget", 0)))

    def state(self) -> str:
        """confirmed / step i of n / exhausted, with attempts and budget."""
        count = f"attempts {self.attempts} of {self.budget}"
        if self.phase == "exhausted":
            return f"{self.problem} exhausted after {count}"
        if self.phase in ("repairing", "verifying") and self.step:
            doing = "verifying" if self.phase == "verifying" else "running"
            return f"{self.problem} {doing} step {self.step_index} of {self.steps} ({self.step}), {count}"
        return f"{self.problem} confirmed, {count}"


def camel(problem: str) -> str:
    """cni-config-missing -> CniConfigMissing (a condition's reason is CamelCase)."""
    return "".join(part[:1].upper() + part[1:] for part in problem.replace("_", "-").split("-") if part)


@dataclass(frozen=True)
class Wanted:
    type: str
    status: str  # "True" | "False"
    reason: str
    message: str


def wanted(problems: Iterable[ProblemView], handoff: bool) -> dict[str, Wanted]:
    """The conditions nodemedic means the Node to carry, by type."""
    by_class: dict[ProblemClass, list[ProblemView]] = {k: [] for k in PROBLEM_TYPES}
    for p in problems:
        if p.phase in SHOWN:
            by_class[p.klass].append(p)
    out: dict[str, Wanted] = {}
    for klass, kind in PROBLEM_TYPES.items():
        shown = sorted(by_class[klass], key=lambda p: (-RANK[p.phase], p.problem))
        if shown:
            out[kind] = Wanted(kind, "True", camel(shown[0].problem), MARK + "; ".join(p.state() for p in shown))
        else:
            out[kind] = Wanted(kind, "False", HEALTHY_REASONS[klass], MARK + "no problem found")
    if handoff:
        for kind in sorted(set(HANDOFF_TYPES.values())):
            classes = [k for k, t in HANDOFF_TYPES.items() if t == kind]
            exhausted = sorted((p for k in classes for p in by_class[k] if p.phase == "exhausted"),
                               key=lambda p: p.problem)
            if exhausted:
                out[kind] = Wanted(kind, "False", "NodemedicExhausted" + camel(exhausted[0].problem),
                                   MARK + "could not heal: " + "; ".join(p.state() for p in exhausted))
            else:
                out[kind] = Wanted(kind, "True", "NodemedicHealthy", MARK + "nothing nodemedic gave up on")
    return out


def owned(condition: Mapping[str, Any]) -> bool:
    return condition.get("type") in OWNED_TYPES and str(condition.get("message", "")).startswith(MARK)


def patch(current: Sequence[Mapping[str, Any]], want: Mapping[str, Wanted], now: str,
          heartbeat: bool) -> dict[str, Any] | None:
    """The strategic-merge patch that takes the Node's conditions `current` to `want`; None when
    nothing changed and no heartbeat is due. `now` is an RFC 3339 time (seconds, UTC)."""
    by_type = {c.get("type"): c for c in current}
    items: list[dict[str, Any]] = []
    changed = False
    for kind, w in sorted(want.items()):
        have = by_type.get(kind)
        if have is not None and not owned(have) and kind in HANDOFF_TYPES.values():
            continue  # someone else's hand-off condition (the EKS agent's): leave it alone
        same = (have is not None and have.get("status") == w.status and have.get("reason") == w.reason
                and have.get("message") == w.message)
        if same and not heartbeat:
            continue
        changed = changed or not same
        item: dict[str, Any] = {"type": kind, "status": w.status, "reason": w.reason, "message": w.message,
                                "lastHeartbeatTime": now}
        if have is None or have.get("status") != w.status:
            item["lastTransitionTime"] = now
        items.append(item)
    for kind, have in sorted(by_type.items(), key=lambda kv: str(kv[0])):
        if kind not in want and owned(have):  # ours, no longer managed (hand-off turned off)
            items.append({"type": kind, "$patch": "delete"})
            changed = True
    if not items or not (changed or heartbeat):
        return None
    return {"status": {"conditions": items}}


def removal(current: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Purge, or kubernetes.enabled turned off: remove nodemedic's own conditions, no one else's."""
    items = [{"type": c["type"], "$patch": "delete"} for c in current if owned(c)]
    return {"status": {"conditions": items}} if items else None
