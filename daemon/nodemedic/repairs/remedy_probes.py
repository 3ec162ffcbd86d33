"""Live probes shared by several ladders."""

from __future__ import annotations

from nodemedic.repairs.context import RepairContext


async def runtime_ready(ctx: RepairContext) -> bool:
    status = await ctx.cri_status()
    return status is not None and status.runtime_ready


async def runtime_down(ctx: RepairContext) -> bool:
    return not await runtime_ready(ctx)
