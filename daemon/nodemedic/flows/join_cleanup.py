"""The cleanup ladder between join attempts: gentle first, aggressive only when allowed.

gentle (disruptive): restart containerd, then kubelet once containerd is RuntimeReady, and put
  nodemedic's own CNI placeholder in order (removed once a real config exists, written when the
  policy wants one and none is there). Nothing is deleted.
aggressive (destructive; policy.allow_destructive, later attempts only): what `kubeadm reset`
  would do for a worker that failed mid-join, minus what the "never" rules forbid. kubelet is
  stopped; the files the failed join wrote are removed (kubelet.conf, bootstrap-kubelet.conf,
  pki/ca.crt, kubelet's config, flags and client certificates; a retry's preflight otherwise
  fails with "already exists"); containerd's root is moved aside, never deleted; containerd and
  kubelet are started again. Never: on a control-plane node (kube-apiserver/etcd manifests,
  admin.conf, /var/lib/etcd, or a `--control-plane` join), with containers running (their
  shims), /var/lib/kubelet/pods, plugins or volumes, /etc/cni/net.d or the CNI IPAM state
  (failure-modes.md: never on a node with workloads), nor any protected path.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from nodemedic.flows.services import CONTAINERD, KUBELET, warm_imagefs
from nodemedic.flows.systemd import FlowBus
from nodemedic.repairs import cni, reset
from nodemedic.repairs.containerd_root import MoveRootAside, root_refusal, running_shims
from nodemedic.repairs.context import RepairContext


class Level(StrEnum):
    GENTLE = "gentle"
    AGGRESSIVE = "aggressive"


# Written by `kubeadm join` on a worker; a retry's preflight refuses while they exist.
JOIN_FILES = (
    "/etc/kubernetes/kubelet.conf",
    "/etc/kubernetes/bootstrap-kubelet.conf",
    "/etc/kubernetes/pki/ca.crt",
    "/var/lib/kubelet/config.yaml",
    "/var/lib/kubelet/instance-config.yaml",
    "/var/lib/kubelet/kubeadm-flags.env",
    "/var/lib/kubelet/cpu_manager_state",
    "/var/lib/kubelet/memory_manager_state",
)
JOIN_TREES = ("/var/lib/kubelet/pki",)  # kubelet's client and serving certificates

def choose_level(failed_attempt: int, gentle_cleanups: int, allow_destructive: bool) -> tuple[Level, str]:
    """The cleanup after the `failed_attempt`-th failure, and why it is gentler than the ladder says."""
    if failed_attempt <= gentle_cleanups:
        return Level.GENTLE, ""
    if not allow_destructive:
        return Level.GENTLE, "aggressive cleanup held back: policy.allow_destructive = false"
    return Level.AGGRESSIVE, ""


def aggressive_refusal(ctx: RepairContext, argv: Sequence[str]) -> str:
    """Why the aggressive cleanup must not run on this node now, or ""."""
    if "--control-plane" in argv:
        return "a control-plane join: never reset a control-plane node without removing it from etcd first"
    if mark := reset.control_plane_mark(ctx):
        return f"this node looks like a control plane ({mark}): never reset it from here"
    shims = running_shims()
    if shims:
        return f"{len(shims)} container shim(s) running: never clean up under running workloads"
    return ""


async def gentle(ctx: RepairContext) -> list[str]:
    done: list[str] = []
    reset.tidy_placeholder(ctx, done)
    if not done and await cni.WritePlaceholder().needed(ctx):
        done.append(await cni.WritePlaceholder().apply(ctx))
    await reset.restart_runtime_then_kubelet(ctx, done)
    return done


def remove_join_files(ctx: RepairContext) -> list[str]:
    """Remove what a failed `kubeadm join` wrote, nothing else (kubelet must be stopped)."""
    done = reset.remove_node_state(ctx, files=JOIN_FILES, trees=JOIN_TREES)
    if removed := cni.remove_placeholder_if_superseded(ctx):
        done.append(f"removed the superseded placeholder {removed}")
    return done


async def aggressive(ctx: RepairContext) -> list[str]:
    bus = ctx.bus
    assert isinstance(bus, FlowBus)
    timeout = ctx.settings.policy.step_timeout
    await bus.job("StopUnit", KUBELET, timeout)
    done = [f"stopped {KUBELET}", *remove_join_files(ctx)]
    if refusal := root_refusal(ctx):
        done.append(f"kept {ctx.settings.paths.containerd_root} ({refusal}: not moved)")
        await bus.job("RestartUnit", CONTAINERD, timeout)
        await bus.job("StartUnit", KUBELET, timeout)
        done.append(f"restarted {CONTAINERD}, started {KUBELET}")
    else:
        # stops kubelet and containerd, renames the root next to itself, starts both again
        done.append(await MoveRootAside().apply(ctx))
    if problem := await warm_imagefs(ctx):
        raise RuntimeError(f"after the cleanup: {problem}")
    done.append("image filesystem warm again")
    return done
