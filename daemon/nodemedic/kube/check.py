"""`nodemedic kube check`: which of nodemedic's cluster features the credentials allow, asked
of the API server itself through SelfSubjectAccessReview (what `kubectl auth can-i` does).

SelfSubjectAccessReview asks the authorizers (Node, RBAC), not admission: NodeRestriction
still limits a kubelet's credentials to its own Node, which is all nodemedic needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodemedic.kube.api import Api

FLEET_NAMESPACE = "nodemedic"


@dataclass(frozen=True)
class Need:
    feature: str
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    def attributes(self) -> dict[str, str]:
        attrs = {"verb": self.verb, "resource": self.resource, "group": self.group}
        for key in ("subresource", "namespace", "name"):
            if getattr(self, key):
                attrs[key] = getattr(self, key)
        return attrs

    def show(self) -> str:
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.verb} {what}{'.' + self.group if self.group else ''}{where}"


def needs(node: str, fleet_namespace: str = FLEET_NAMESPACE) -> list[Need]:
    return [
        Need("conditions", "get", "nodes", name=node),
        Need("conditions", "patch", "nodes", subresource="status", name=node),
        Need("events", "create", "events", namespace="default"),
        Need("events", "patch", "events", namespace="default"),
        Need("fleet guard", "get", "leases", "coordination.k8s.io", namespace=fleet_namespace),
        Need("fleet guard", "create", "leases", "coordination.k8s.io", namespace=fleet_namespace),
        Need("fleet guard", "update", "leases", "coordination.k8s.io", namespace=fleet_namespace),
        Need("fleet guard", "watch", "leases", "coordination.k8s.io", namespace=fleet_namespace),
    ]


async def check(api: Api, node: str, guard: Api | None = None,
                fleet_namespace: str = FLEET_NAMESPACE) -> tuple[list[str], bool]:
    """Lines for the operator, and whether conditions and Events (the essentials) work. The
    fleet guard's needs are asked with `guard` (its own kubeconfig, fleet.kubeconfig) when given."""
    lines: list[str] = []
    works: dict[str, bool] = {}
    for need in needs(node, fleet_namespace):
        asker = guard if guard is not None and need.feature == "fleet guard" else api
        allowed, reason = await asker.can_i(need.attributes())
        works[need.feature] = works.get(need.feature, True) and allowed
        lines.append(f"{'yes' if allowed else 'NO '}  {need.show()}" + (f"  ({reason})" if reason else ""))
    for feature, ok in works.items():
        if ok:
            lines.append(f"{feature}: will work")
        elif feature == "fleet guard":
            lines.append("fleet guard: will NOT work with these credentials (the kubelet's may not use "
                         f"Leases in {fleet_namespace}): disruptive steps hold while fleet.enabled is on; "
                         "give fleet.kubeconfig a user in group nodemedic:fleet "
                         "(packaging/kubernetes/rbac.yaml, docs/kubernetes.md)")
        else:
            lines.append(f"{feature}: will NOT work: grant what packaging/kubernetes/rbac.yaml grants")
    return lines, works["conditions"] and works["events"]
