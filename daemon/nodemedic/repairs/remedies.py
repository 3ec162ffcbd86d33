"""Each problem's ladder of steps, least invasive first, and how a suspicion is confirmed.

Problems whose maintainers say "do not touch" get a report-only remedy that says why; the
reasons come from shared/reference/failure-modes.md's "never" rules.
"""

from __future__ import annotations

from nodemedic.repairs import cni, imagefs, ingest, network, sysctl
from nodemedic.repairs.cgroup import EnableSystemdCgroup, driver_mismatch, systemd_cgroup_in_effect
from nodemedic.repairs.containerd_root import MoveRootAside
from nodemedic.repairs.remedy_probes import (
    Probe,
    runtime_down_unless_stopped,
    runtime_ready,
    runtime_relists,
    unit_crash_looping,
    unit_stays_running,
)
from nodemedic.repairs.reset import AggressiveReset, GentleReset
from nodemedic.repairs.step import Remedy
from nodemedic.repairs.units import RestartUnit

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"


def report_only(problem: str, why: str) -> Remedy:
    return Remedy(problem, (), report_only=why)


REMEDIES: dict[str, Remedy] = {
    "cni-config-missing": Remedy("cni-config-missing", (
        cni.WritePlaceholder(),
        RestartUnit(CONTAINERD, cni.network_ready),
    )),
    "imagefs-capacity-zero": Remedy("imagefs-capacity-zero", (
        imagefs.WarmUp(),
        RestartUnit(CONTAINERD, imagefs.imagefs_healthy),
        RestartUnit(KUBELET, imagefs.imagefs_healthy, requires=runtime_ready),
    )),
    "ingest-stale": Remedy("ingest-stale", (ingest.RemoveStaleIngests(),)),
    # A runtime that a restart does not bring back climbs to the node reset (seed 001).
    "runtime-down": Remedy("runtime-down", (
        RestartUnit(CONTAINERD, runtime_ready), GentleReset(runtime_ready), AggressiveReset(runtime_ready))),
    "containerd-crash-loop": Remedy("containerd-crash-loop", (
        RestartUnit(CONTAINERD, runtime_ready), GentleReset(runtime_ready), AggressiveReset(runtime_ready))),
    "kubelet-crash-loop": Remedy("kubelet-crash-loop", (
        RestartUnit(KUBELET, unit_stays_running(KUBELET), requires=runtime_ready),)),
    "pleg-unhealthy": Remedy("pleg-unhealthy", (
        # Healed only once a relist answers again; RuntimeReady alone can be true while it hangs.
        RestartUnit(CONTAINERD, runtime_relists),
        RestartUnit(KUBELET, unit_stays_running(KUBELET), requires=runtime_ready),
    )),
    "inotify-limits": Remedy("inotify-limits", (
        sysctl.RaiseInotifyLimits(),
        RestartUnit(CONTAINERD, runtime_ready),
    )),
    "cgroup-driver-mismatch": Remedy("cgroup-driver-mismatch", (
        EnableSystemdCgroup(),
        RestartUnit(CONTAINERD, systemd_cgroup_in_effect),
    )),
    "containerd-metadata-corrupt": Remedy("containerd-metadata-corrupt", (MoveRootAside(),)),
    "sandbox-name-reserved": report_only(
        "sandbox-name-reserved", "kubelet retries and succeeds once the first RunPodSandbox completes; deleting "
        "sandbox state orphans shims, mounts and IPs (containerd#4604). Look for slow IO, CNI or image pulls"),
    "node-registration-failed": report_only(
        "node-registration-failed", "the API server refused or could not be reached: credentials, certificates or "
        "the network, not the node's runtime"),
    "swap-enabled": report_only(
        "swap-enabled", "turning swap off changes the node's memory behaviour: run `swapoff -a` and remove swap "
        "from /etc/fstab if the node is not meant to swap; never set failSwapOn=false as a blanket fix"),
    "disk-pressure": report_only(
        "disk-pressure", "kubelet's own image and container GC reclaims first; free space with `crictl rmi "
        "--prune`, log rotation or a larger disk. Never delete files under /var/lib/containerd or /var/lib/kubelet"),
    "join-kubelet-timeout": report_only(
        "join-kubelet-timeout", "kubeadm join timed out waiting for kubelet; `nodemedic join` retries with cleanup"),
    "snapshot-rootfs-missing": report_only(
        "snapshot-rootfs-missing", "remove the pods and the image using the broken snapshot (`crictl rmi`) and "
        "re-pull; never recreate or delete snapshot directories by hand"),
    "snapshot-parent-missing": report_only(
        "snapshot-parent-missing", "retry the pull or remove the half-pulled image (`crictl rmi`); never edit "
        "snapshot directories or meta.db"),
    "flannel-subnet-missing": report_only(
        "flannel-subnet-missing", "flannel writes /run/flannel/subnet.env once its pod runs on this node; fix the "
        "flannel pod (it needs node.spec.podCIDR)"),
    # Never while pods run (failure-modes: it cuts their network): the delete step is needed only
    # when CRI answers with no READY sandbox, so a node with pods ends exhausted, cni0 untouched.
    "cni-bridge-conflict": Remedy("cni-bridge-conflict", (
        network.DeleteStaleBridge(),
        # Only once the bridge is right: a restart cannot change cni0's address, and with pods on
        # it the ladder must end exhausted without touching anything.
        RestartUnit(CONTAINERD, network.runtime_ready_without_conflict, requires=network.no_bridge_conflict),
    )),
}

# A live probe that says the problem is really there now. A problem without one is confirmed
# by its signature's threshold alone. pleg-unhealthy is one on purpose: kubelet's own relist,
# every second for the signature's whole minute, is the live probe; a ListPodSandbox of ours
# would answer while kubelet's per-pod status calls hang (a stuck mount), and then the ladder's
# kubelet rung could never be reached.
CONFIRMS: dict[str, Probe] = {
    "cni-config-missing": cni.network_not_ready,
    "imagefs-capacity-zero": imagefs.imagefs_broken,
    "ingest-stale": ingest.stale_ingest_present,
    "runtime-down": runtime_down_unless_stopped(CONTAINERD),
    "containerd-crash-loop": runtime_down_unless_stopped(CONTAINERD),
    "kubelet-crash-loop": unit_crash_looping(KUBELET),
    "inotify-limits": sysctl.limits_too_low,
    "cgroup-driver-mismatch": driver_mismatch,
    "cni-bridge-conflict": network.bridge_conflict,
    # The panic in the log is evidence; a runtime that answers CRI (a fresh root) is not corrupt.
    "containerd-metadata-corrupt": runtime_down_unless_stopped(CONTAINERD),
}
