"""The node reset's leftovers sweep: the links and iptables chains of a CNI, flannel or
kube-proxy that no longer runs, each removed only while its owner is not running."""

from __future__ import annotations

import shlex

from nodemedic.probes.procs import pids_by_comm
from nodemedic.repairs import commands
from nodemedic.repairs.containerd_root import running_shims
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.network.bridge import names_of, ready_sandboxes
from nodemedic.repairs.network.cniconf import DEFAULT_BRIDGE
from nodemedic.repairs.network.ip import COMMAND_TIMEOUT, delete_link, link_ipv4
from nodemedic.repairs.network.iptables import chain_removal, parse_iptables_save
from nodemedic.sources.systemd_bus import BusError

FLANNEL_LINK = "flannel.1"
KUBELET = "kubelet.service"
CONTAINERD = "containerd.service"
# Chain name prefix -> whose chains they are (the owner that must not be running).
CHAIN_OWNERS = {"CNI-": "cni", "FLANNEL-": "flannel", "KUBE-": "kube-proxy"}


async def _runtime_stopped(ctx: RepairContext) -> bool:
    """containerd's unit is down (the aggressive reset stopped it): no sandbox can be set up, and
    with no shim running (checked next) no pod runs either, though CRI cannot say so."""
    try:
        state = (await ctx.bus.unit_state(CONTAINERD)).active_state
    except BusError:
        return False
    return state in ("inactive", "failed")


async def _running_owners(ctx: RepairContext) -> dict[str, str]:
    """Owner -> why it counts as running. Anything that cannot be determined counts as running."""
    proc = ctx.node_path("/proc")
    running: dict[str, str] = {}
    ready = await ready_sandboxes(ctx)
    if ready is None and not await _runtime_stopped(ctx):
        running["cni"] = "the container runtime did not answer ListPodSandbox"
    elif ready:
        running["cni"] = f"{len(ready)} pod sandbox(es) ready"
    elif shims := running_shims(proc):
        running["cni"] = f"{len(shims)} containerd-shim process(es) running"
    if pids := pids_by_comm("flanneld".__eq__, proc):
        running["flannel"] = f"flanneld running (pid {pids[0]})"
    if pids := pids_by_comm("kube-proxy".__eq__, proc):
        running["kube-proxy"] = f"kube-proxy running (pid {pids[0]})"
    else:
        try:
            kubelet = (await ctx.bus.unit_state(KUBELET)).active_state
        except BusError as err:
            kubelet = f"unknown ({err})"
        if kubelet != "inactive" and kubelet != "failed":
            # kubelet would start kube-proxy's pod again, and it re-creates KUBE- chains itself.
            running["kube-proxy"] = f"{KUBELET} is {kubelet}"
    return running


async def remove_cni_leftovers(ctx: RepairContext) -> list[str]:
    """Delete cni0 and flannel.1 and the CNI-/FLANNEL-/KUBE- iptables chains (filter, nat,
    mangle), each only while its owner is not running. Needs CAP_NET_ADMIN: run it in a
    nodemedic-step@ unit. Returns what was removed, one sentence each."""
    running = await _running_owners(ctx)
    done: list[str] = []
    for link, owner in ((DEFAULT_BRIDGE, "cni"), (FLANNEL_LINK, "flannel")):
        if owner not in running and await link_ipv4(link) is not None:
            await delete_link(link)
            done.append(f"deleted link {link}")
    prefixes = [prefix for prefix, owner in CHAIN_OWNERS.items() if owner not in running]
    if not prefixes:
        return done
    saved = await commands.run(["iptables-save"], COMMAND_TIMEOUT)
    if saved.returncode != 0:
        raise RuntimeError(f"iptables-save: {saved.stderr.strip()}")
    for table, argvs, chains in chain_removal(parse_iptables_save(saved.stdout), prefixes):
        for argv in argvs:
            result = await commands.run(argv, COMMAND_TIMEOUT)
            if result.returncode != 0:
                raise RuntimeError(f"{shlex.join(argv)}: {result.stderr.strip()}"
                                   + (f" (removed before: {'; '.join(done)})" if done else ""))
        done.append(f"deleted iptables chains in table {table}: {names_of(chains)}")
    return done
