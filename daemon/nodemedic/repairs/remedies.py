"""Each problem's ladder of steps, least invasive first, and how a suspicion is confirmed.

One entry per problem (nodemedic.problems defines the problem and its class): its ladder and its
confirming probe side by side, so REMEDIES and CONFIRMS are read off one table. Problems whose
maintainers say "do not touch" get a report-only remedy that says why; the reasons come from
shared/reference/failure-modes.md's "never" rules.
"""

from __future__ import annotations

from nodemedic import problems as p
from nodemedic.problems import CONTAINERD_UNIT, KUBELET_UNIT
from nodemedic.repairs import cni, imagefs, ingest, network, sysctl
from nodemedic.repairs.cgroup import EnableSystemdCgroup, driver_mismatch, systemd_cgroup_in_effect
from nodemedic.repairs.containerd_root import MoveRootAside
from nodemedic.repairs.remedy_probes import (
    Probe,
    runtime_down_unless_stopped,
    runtime_ready,
    runtime_relists,
    runtime_settled,
    unit_crash_looping,
    unit_stays_running,
)
from nodemedic.repairs.reset import AggressiveReset, GentleReset
from nodemedic.repairs.step import Remedy
from nodemedic.repairs.units import RestartUnit

CONTAINERD = CONTAINERD_UNIT
KUBELET = KUBELET_UNIT
SETTLED = runtime_settled(CONTAINERD)


def report_only(problem: str, why: str) -> Remedy:
    return Remedy(problem, (), report_only=why)


# A live probe says the problem is really there now; a problem without one is confirmed by its
# signature's threshold alone. pleg-unhealthy is one on purpose: kubelet's own relist, every
# second for the signature's whole minute, is the live probe; a ListPodSandbox of ours would
# answer while kubelet's per-pod status calls hang (a stuck mount), and then the ladder's
# kubelet rung could never be reached.
LADDERS: tuple[Remedy, ...] = (
    Remedy(p.CNI_CONFIG_MISSING, (
        cni.WritePlaceholder(),
        RestartUnit(CONTAINERD, cni.network_ready),
    ), confirm=cni.network_not_ready),
    Remedy(p.IMAGEFS_CAPACITY_ZERO, (
        imagefs.WarmUp(),
        RestartUnit(CONTAINERD, imagefs.imagefs_healthy),
        RestartUnit(KUBELET, imagefs.imagefs_healthy, requires=runtime_ready),
    ), confirm=imagefs.imagefs_broken),
    Remedy(p.INGEST_STALE, (ingest.RemoveStaleIngests(),), confirm=ingest.stale_ingest_present),
    # A runtime that a restart does not bring back climbs to the node reset (seed 001).
    # Healed only once it stays up: one ready answer between two crashes is not a repair.
    Remedy(p.RUNTIME_DOWN, (
        RestartUnit(CONTAINERD, SETTLED), GentleReset(SETTLED), AggressiveReset(SETTLED)),
        confirm=runtime_down_unless_stopped(CONTAINERD)),
    Remedy(p.CONTAINERD_CRASH_LOOP, (
        RestartUnit(CONTAINERD, SETTLED), GentleReset(SETTLED), AggressiveReset(SETTLED)),
        confirm=runtime_down_unless_stopped(CONTAINERD)),
    Remedy(p.KUBELET_CRASH_LOOP, (
        RestartUnit(KUBELET, unit_stays_running(KUBELET), requires=runtime_ready),),
        confirm=unit_crash_looping(KUBELET)),
    Remedy(p.PLEG_UNHEALTHY, (
        # Healed only once a relist answers again; RuntimeReady alone can be true while it hangs.
        RestartUnit(CONTAINERD, runtime_relists),
        RestartUnit(KUBELET, unit_stays_running(KUBELET), requires=runtime_ready),
    )),
    Remedy(p.INOTIFY_LIMITS, (
        sysctl.RaiseInotifyLimits(),
        RestartUnit(CONTAINERD, runtime_ready),
    ), confirm=sysctl.limits_too_low),
    Remedy(p.CGROUP_DRIVER_MISMATCH, (
        EnableSystemdCgroup(),
        RestartUnit(CONTAINERD, systemd_cgroup_in_effect),
    ), confirm=driver_mismatch),
    # The panic in the log is evidence; a runtime that answers CRI (a fresh root) is not corrupt.
    Remedy(p.CONTAINERD_METADATA_CORRUPT, (MoveRootAside(),), confirm=runtime_down_unless_stopped(CONTAINERD)),
    report_only(
        p.SANDBOX_NAME_RESERVED, "kubelet retries and succeeds once the first RunPodSandbox completes; deleting "
        "sandbox state orphans shims, mounts and IPs (containerd#4604). Look for slow IO, CNI or image pulls"),
    report_only(
        p.NODE_REGISTRATION_FAILED, "the API server refused or could not be reached: credentials, certificates or "
        "the network, not the node's runtime"),
    report_only(
        p.SWAP_ENABLED, "turning swap off changes the node's memory behaviour: run `swapoff -a` and remove swap "
        "from /etc/fstab if the node is not meant to swap; never set failSwapOn=false as a blanket fix"),
    report_only(
        p.DISK_PRESSURE, "kubelet's own image and container GC reclaims first; free space with `crictl rmi "
        "--prune`, log rotation or a larger disk. Never delete files under /var/lib/containerd or /var/lib/kubelet"),
    report_only(
        p.JOIN_KUBELET_TIMEOUT, "kubeadm join timed out waiting for kubelet; `nodemedic join` retries with cleanup"),
    report_only(
        p.SNAPSHOT_ROOTFS_MISSING, "remove the pods and the image using the broken snapshot (`crictl rmi`) and "
        "re-pull; never recreate or delete snapshot directories by hand"),
    report_only(
        p.SNAPSHOT_PARENT_MISSING, "retry the pull or remove the half-pulled image (`crictl rmi`); never edit "
        "snapshot directories or meta.db"),
    report_only(
        p.FLANNEL_SUBNET_MISSING, "flannel writes /run/flannel/subnet.env once its pod runs on this node; fix the "
        "flannel pod (it needs node.spec.podCIDR)"),
    # Never while pods run (failure-modes: it cuts their network): the delete step is needed only
    # when CRI answers with no READY sandbox, so a node with pods ends exhausted, cni0 untouched.
    Remedy(p.CNI_BRIDGE_CONFLICT, (
        network.DeleteStaleBridge(),
        # Only once the bridge is right: a restart cannot change cni0's address, and with pods on
        # it the ladder must end exhausted without touching anything.
        RestartUnit(CONTAINERD, network.runtime_ready_without_conflict, requires=network.no_bridge_conflict),
    ), confirm=network.bridge_conflict),
)

REMEDIES: dict[str, Remedy] = {remedy.problem: remedy for remedy in LADDERS}
CONFIRMS: dict[str, Probe] = {remedy.problem: remedy.confirm for remedy in LADDERS if remedy.confirm is not None}
