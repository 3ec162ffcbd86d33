"""Every problem nodemedic knows, by id, with the class of node health it belongs to.

The class is what the cluster side turns into a Node condition (one per class), so it lives
here, beneath everything, where both the engine's side and the cluster side can read it.
"""

from __future__ import annotations

from enum import StrEnum


class ProblemClass(StrEnum):
    RUNTIME = "runtime"
    NETWORK = "network"
    IMAGEFS = "imagefs"
    KUBELET = "kubelet"


CLASSES: dict[str, ProblemClass] = {
    "cni-config-missing": ProblemClass.NETWORK,
    "cni-bridge-conflict": ProblemClass.NETWORK,
    "flannel-subnet-missing": ProblemClass.NETWORK,
    "imagefs-capacity-zero": ProblemClass.IMAGEFS,
    "ingest-stale": ProblemClass.IMAGEFS,
    "disk-pressure": ProblemClass.IMAGEFS,
    "snapshot-rootfs-missing": ProblemClass.IMAGEFS,
    "snapshot-parent-missing": ProblemClass.IMAGEFS,
    "runtime-down": ProblemClass.RUNTIME,
    "containerd-crash-loop": ProblemClass.RUNTIME,
    "containerd-metadata-corrupt": ProblemClass.RUNTIME,
    "cgroup-driver-mismatch": ProblemClass.RUNTIME,
    "inotify-limits": ProblemClass.RUNTIME,
    "sandbox-name-reserved": ProblemClass.RUNTIME,
    "kubelet-crash-loop": ProblemClass.KUBELET,
    "pleg-unhealthy": ProblemClass.KUBELET,
    "node-registration-failed": ProblemClass.KUBELET,
    "swap-enabled": ProblemClass.KUBELET,
    "join-kubelet-timeout": ProblemClass.KUBELET,
}


def problem_class(problem: str) -> ProblemClass:
    """A problem's class; a crash loop of a unit nodemedic does not know is the runtime's."""
    return CLASSES.get(problem, ProblemClass.RUNTIME)
