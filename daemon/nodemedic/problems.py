"""Every problem nodemedic knows, defined once, beneath everything.

A problem is its id (what signatures name, what the journal, the state file and the operator's
`[problems.NAME]` say) and the class of node health it belongs to: the class is what the cluster
side turns into a Node condition (one per class), so it lives here, where both the engine's side
and the cluster side can read it. Its ladder and confirming probe are attached to these objects
in repairs/remedies.py, and its README row is generated from that ladder (tests/unit/test_catalogue.py
walks the whole catalogue).
"""

from __future__ import annotations

from enum import StrEnum


class ProblemClass(StrEnum):
    RUNTIME = "runtime"
    NETWORK = "network"
    IMAGEFS = "imagefs"
    KUBELET = "kubelet"


class Problem(str):
    """A problem id that knows its class. It is a str, so it is the id wherever an id goes
    (dict keys, journal fields, JSON) and compares equal to the plain string."""

    klass: ProblemClass

    def __new__(cls, id: str, klass: ProblemClass) -> Problem:  # noqa: A002 - the problem's id
        problem = super().__new__(cls, id)
        problem.klass = klass
        return problem

    def __getnewargs__(self) -> tuple[str, ProblemClass]:  # type: ignore[override]
        # copy, deepcopy (dataclasses.asdict) and pickle rebuild it with its class
        return str(self), self.klass


def crash_loop_problem(unit: str) -> str:
    """The problem a crash-looping watched unit raises: `containerd-crash-loop` for
    containerd.service. The one place that name is built."""
    return f"{unit.removesuffix('.service')}-crash-loop"


CONTAINERD_UNIT = "containerd.service"
KUBELET_UNIT = "kubelet.service"

CNI_CONFIG_MISSING = Problem("cni-config-missing", ProblemClass.NETWORK)
CNI_BRIDGE_CONFLICT = Problem("cni-bridge-conflict", ProblemClass.NETWORK)
FLANNEL_SUBNET_MISSING = Problem("flannel-subnet-missing", ProblemClass.NETWORK)
IMAGEFS_CAPACITY_ZERO = Problem("imagefs-capacity-zero", ProblemClass.IMAGEFS)
INGEST_STALE = Problem("ingest-stale", ProblemClass.IMAGEFS)
DISK_PRESSURE = Problem("disk-pressure", ProblemClass.IMAGEFS)
SNAPSHOT_ROOTFS_MISSING = Problem("snapshot-rootfs-missing", ProblemClass.IMAGEFS)
SNAPSHOT_PARENT_MISSING = Problem("snapshot-parent-missing", ProblemClass.IMAGEFS)
RUNTIME_DOWN = Problem("runtime-down", ProblemClass.RUNTIME)
CONTAINERD_CRASH_LOOP = Problem(crash_loop_problem(CONTAINERD_UNIT), ProblemClass.RUNTIME)
CONTAINERD_METADATA_CORRUPT = Problem("containerd-metadata-corrupt", ProblemClass.RUNTIME)
CGROUP_DRIVER_MISMATCH = Problem("cgroup-driver-mismatch", ProblemClass.RUNTIME)
INOTIFY_LIMITS = Problem("inotify-limits", ProblemClass.RUNTIME)
SANDBOX_NAME_RESERVED = Problem("sandbox-name-reserved", ProblemClass.RUNTIME)
KUBELET_CRASH_LOOP = Problem(crash_loop_problem(KUBELET_UNIT), ProblemClass.KUBELET)
PLEG_UNHEALTHY = Problem("pleg-unhealthy", ProblemClass.KUBELET)
NODE_REGISTRATION_FAILED = Problem("node-registration-failed", ProblemClass.KUBELET)
SWAP_ENABLED = Problem("swap-enabled", ProblemClass.KUBELET)
JOIN_KUBELET_TIMEOUT = Problem("join-kubelet-timeout", ProblemClass.KUBELET)

# Every problem above, by id: the module is the list.
PROBLEMS: dict[str, Problem] = {value: value for value in list(globals().values()) if isinstance(value, Problem)}
CLASSES: dict[str, ProblemClass] = {problem: problem.klass for problem in PROBLEMS.values()}


def problem_class(problem: str) -> ProblemClass:
    """A problem's class; a crash loop of a unit nodemedic does not know is the runtime's."""
    return CLASSES.get(problem, ProblemClass.RUNTIME)
