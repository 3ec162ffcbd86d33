"""Each problem's ladder of steps, least invasive first, and how a suspicion is confirmed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nodemedic.repairs import cni
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.step import Remedy
from nodemedic.repairs.units import RestartUnit

Probe = Callable[[RepairContext], Awaitable[bool]]

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"


async def runtime_ready(ctx: RepairContext) -> bool:
    status = await ctx.cri_status()
    return status is not None and status.runtime_ready


async def runtime_down(ctx: RepairContext) -> bool:
    return not await runtime_ready(ctx)


REMEDIES: dict[str, Remedy] = {
    "cni-config-missing": Remedy("cni-config-missing", (
        cni.WritePlaceholder(),
        RestartUnit(CONTAINERD, cni.network_ready),
    )),
    "runtime-down": Remedy("runtime-down", (
        RestartUnit(CONTAINERD, runtime_ready),
    )),
}

# A live probe that says the problem is really there now. A problem without one is confirmed
# by its signature's threshold alone.
CONFIRMS: dict[str, Probe] = {
    "cni-config-missing": cni.network_not_ready,
    "runtime-down": runtime_down,
}
