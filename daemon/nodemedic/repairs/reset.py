"""The escalating node reset (seed 001): the last rungs for a runtime that restarts do not bring back.

gentle (disruptive): nodemedic's CNI placeholder put in order, the CNI leftovers whose owners are
  gone removed (stale cni0/flannel.1, CNI-/FLANNEL-/KUBE- chains; privileged, in
  nodemedic-step@remove-cni-leftovers), containerd restarted, then kubelet once containerd
  answers CRI. No state of the node is deleted.
aggressive (destructive; policy.allow_destructive): kubelet and containerd stopped, the network
  leftovers removed (their owners are stopped now), containerd's root moved aside (renamed, never
  deleted), the CNI IPAM reservations and result cache and kubelet's CPU/memory manager
  checkpoints removed, containerd and kubelet started again. What `kubeadm reset` would do to the
  runtime, minus what the "never" rules forbid: not on a control-plane node, not with containers
  running (their shims), never /var/lib/kubelet/pods, volumes or plugins, never the node's
  identity (kubelet.conf, certificates: the node stays joined), never /etc/cni/net.d, never a
  protected path.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodemedic.repairs import cni
from nodemedic.repairs.containerd_root import move_root_aside, root_refusal
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.privileged import run_in_step_unit
from nodemedic.repairs.remedy_probes import Probe, runtime_ready, wait_until
from nodemedic.repairs.step import StepClass
from nodemedic.repairs.units import require_job, start_unit, stop_unit
from nodemedic.safety import remove_file, remove_tree

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"

CONTROL_PLANE_MARKS = (
    "/etc/kubernetes/manifests/kube-apiserver.yaml",
    "/etc/kubernetes/manifests/etcd.yaml",
    "/etc/kubernetes/admin.conf",
    "/var/lib/etcd/member",
)
# Host-local IPAM reservations and libcni's result cache: stale once no pod runs on the node.
CNI_STATE = ("/var/lib/cni/networks", "/var/lib/cni/results")
# kubelet refuses to start when these checkpoints disagree with its policy (kubeadm reset drops them).
KUBELET_CHECKPOINTS = ("/var/lib/kubelet/cpu_manager_state", "/var/lib/kubelet/memory_manager_state")


def control_plane_mark(ctx: RepairContext) -> str:
    return next((p for p in CONTROL_PLANE_MARKS if ctx.node_path(p).exists()), "")


def aggressive_refusal(ctx: RepairContext) -> str:
    """Why the aggressive reset must not run on this node now, or ""."""
    if mark := control_plane_mark(ctx):
        return f"this node looks like a control plane ({mark}): never reset it from here"
    return root_refusal(ctx)


def remove_node_state(ctx: RepairContext, files: tuple[str, ...] = (), trees: tuple[str, ...] = ()) -> list[str]:
    """Remove these node paths through the safety module; says what was there to remove."""
    done = [f"removed {path}" for path in files if remove_file(ctx.guard, ctx.node_path(path))]
    return done + [f"removed {path}/" for path in trees if remove_tree(ctx.guard, ctx.node_path(path))]


def tidy_placeholder(ctx: RepairContext, done: list[str]) -> None:
    """nodemedic's own placeholder goes once a real config exists (it would hide a real NotReady)."""
    if removed := cni.remove_placeholder_if_superseded(ctx):
        done.append(f"removed the superseded placeholder {removed}")


async def restart_runtime_then_kubelet(ctx: RepairContext, done: list[str]) -> None:
    done.append(await require_job(ctx, "RestartUnit", CONTAINERD))
    policy = ctx.settings.policy
    if not await wait_until(lambda: runtime_ready(ctx), policy.verify_attempts, policy.verify_interval):
        raise RuntimeError(f"{CONTAINERD} is not RuntimeReady after its restart; kubelet left alone")
    done.append(await require_job(ctx, "RestartUnit", KUBELET))


@dataclass(frozen=True)
class GentleReset:
    probe: Probe  # what "healthy again" means for the problem being repaired
    name: str = "gentle-node-reset"
    klass: StepClass = StepClass.DISRUPTIVE
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        return True

    async def apply(self, ctx: RepairContext) -> str:
        done: list[str] = []
        tidy_placeholder(ctx, done)
        done += await run_in_step_unit(ctx, "remove-cni-leftovers")
        await restart_runtime_then_kubelet(ctx, done)
        return "; ".join(done)

    async def verify(self, ctx: RepairContext) -> bool:
        return await self.probe(ctx)


@dataclass(frozen=True)
class AggressiveReset:
    probe: Probe
    name: str = "aggressive-node-reset"
    klass: StepClass = StepClass.DESTRUCTIVE
    idempotent: bool = False

    async def needed(self, ctx: RepairContext) -> bool:
        return not aggressive_refusal(ctx)

    async def apply(self, ctx: RepairContext) -> str:
        # Each stop is recorded (persisted) first: killed or failed from here on (the refusal
        # below included), the engine starts them again before it climbs or gives up.
        done = [await stop_unit(ctx, KUBELET), await stop_unit(ctx, CONTAINERD)]
        if refusal := aggressive_refusal(ctx):  # a container may have started since the gate looked
            raise RuntimeError(f"refused after stopping the units: {refusal}")
        done += await run_in_step_unit(ctx, "remove-cni-leftovers")
        root = ctx.settings.paths.containerd_root
        done.append(f"moved {root} aside to {move_root_aside(ctx)}")
        done += remove_node_state(ctx, files=KUBELET_CHECKPOINTS, trees=CNI_STATE)
        tidy_placeholder(ctx, done)
        # A fresh root is a fresh start: the crash loop's restarts must not hit its start limit.
        await ctx.bus.reset_failed(CONTAINERD)
        done.append(await start_unit(ctx, CONTAINERD))
        done.append(await start_unit(ctx, KUBELET))
        return "; ".join(done)

    async def verify(self, ctx: RepairContext) -> bool:
        return await self.probe(ctx)
