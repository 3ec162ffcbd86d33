"""Restart a unit over D-Bus (RestartUnit), never by killing it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.step import StepClass
from nodemedic.sources.systemd_bus import BusError, JobFailed, run_job

Probe = Callable[[RepairContext], Awaitable[bool]]

_DONE = {"StartUnit": "started", "StopUnit": "stopped", "RestartUnit": "restarted"}


async def require_job(ctx: RepairContext, verb: str, unit: str) -> str:
    """Start/stop/restart a unit and wait: systemd refusing, or a job that is not "done", raises."""
    try:
        await run_job(ctx.bus, verb, unit, ctx.settings.policy.step_timeout)
    except JobFailed as err:
        raise RuntimeError(str(err)) from err
    except BusError as err:
        raise RuntimeError(f"systemd refused {verb} {unit}: {err}") from err
    return f"{_DONE[verb]} {unit}"


async def job_ending(ctx: RepairContext, verb: str, unit: str) -> str:
    """run_job for a caller that weighs a job's end with more than the job: how a job that ended
    ended ("done", "failed", …); systemd refusing (BusError), or no end in time (TimeoutError),
    raises. A restart whose verification judges the unit (Restart=always may still bring it up
    within the verification's retries: the live probe, not the job, says whether the step
    worked), and a privileged step unit, whose result file says what failed."""
    try:
        await run_job(ctx.bus, verb, unit, ctx.settings.policy.step_timeout)
    except JobFailed as err:
        if not err.result:
            raise TimeoutError(str(err)) from err
        return err.result
    return "done"


async def stop_unit(ctx: RepairContext, unit: str) -> str:
    """StopUnit, recorded first (persisted) so that an interrupted or failed step is undone."""
    ctx.undo.will_stop(unit)
    return await require_job(ctx, "StopUnit", unit)


async def start_unit(ctx: RepairContext, unit: str, require: bool = True) -> str:
    """StartUnit of a unit the step stopped; afterwards there is nothing to undo for it.
    `require=False`: the job's result is the step's verification's business, not a failure."""
    if require:
        done = await require_job(ctx, "StartUnit", unit)
    else:
        done = f"start of {unit}: job {await job_ending(ctx, 'StartUnit', unit)}"
    ctx.undo.started(unit)
    return done


@dataclass(frozen=True)
class RestartUnit:
    unit: str
    probe: Probe  # what "healthy again" means for the problem this restart is meant to fix
    requires: Probe | None = None  # e.g. kubelet is restarted only once containerd is healthy
    klass: StepClass = StepClass.DISRUPTIVE
    idempotent: bool = True

    @property
    def name(self) -> str:
        return f"restart-{self.unit.removesuffix('.service')}"

    async def needed(self, ctx: RepairContext) -> bool:
        return self.requires is None or await self.requires(ctx)

    async def apply(self, ctx: RepairContext) -> str:
        try:
            result = await job_ending(ctx, "RestartUnit", self.unit)
        except BusError as err:
            raise RuntimeError(f"cannot restart {self.unit}: {err}") from err
        return f"restarted {self.unit}: job {result}"

    async def verify(self, ctx: RepairContext) -> bool:
        try:
            state = await ctx.bus.unit_state(self.unit)
        except BusError:
            return False
        return state.active_state == "active" and await self.probe(ctx)
