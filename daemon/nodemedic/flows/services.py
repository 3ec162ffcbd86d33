"""Stopping and starting containerd and kubelet for a flow, and waiting for a live probe."""

from __future__ import annotations

from nodemedic.flows.systemd import FlowBus
from nodemedic.flows.transaction import Transaction
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.imagefs import WarmUp, imagefs_problem
from nodemedic.repairs.remedy_probes import runtime_ready, wait_until

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"


async def stop(bus: FlowBus, tx: Transaction, unit: str, timeout: float) -> None:
    # The undo is recorded first: a stop that fails half-way must still be answered by a start.
    tx.did(f"stopping {unit}", lambda: bus.job("StartUnit", unit, timeout))
    await bus.job("StopUnit", unit, timeout)


async def start(bus: FlowBus, tx: Transaction, unit: str, timeout: float) -> None:
    # A failed start leaves a Restart=always unit retrying on its own: undo it with a stop anyway.
    tx.did(f"starting {unit}", lambda: bus.job("StopUnit", unit, timeout))
    await bus.job("StartUnit", unit, timeout)


async def warm_imagefs(ctx: RepairContext) -> str:
    """containerd answers CRI, and its image filesystem exists with a capacity; "" or why not."""
    imagefs = ctx.settings.imagefs
    if not await wait_until(lambda: runtime_ready(ctx), imagefs.warmup_attempts, imagefs.warmup_interval):
        return "containerd does not report RuntimeReady over CRI"
    step = WarmUp()
    await step.apply(ctx)
    problem = ""

    async def healthy() -> bool:
        nonlocal problem
        problem = await imagefs_problem(ctx)
        return not problem

    await wait_until(healthy, imagefs.warmup_attempts, imagefs.warmup_interval)
    return problem
