"""Work the resident daemon's sandbox cannot do runs in nodemedic-step@NAME.service.

nodemedic.service has no capabilities (units/nodemedic.service): it may read the node's links
but not delete one, nor touch an iptables chain. A step that must (a stale cni0, the reset's
network leftovers) asks systemd to start nodemedic-step@NAME.service over D-Bus — only after
the daemon's policy gate let the step run — and waits for the job. That unit runs
`nodemedic step NAME` (nodemedic.repairs.step_actions), which re-checks the action's own
precondition right before acting and leaves what it did in a result file the daemon reads.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from nodemedic.config import Settings
from nodemedic.hostroot import HostRoot
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.units import job_ending
from nodemedic.safety import atomic_write, ensure_dir, remove_file
from nodemedic.sources.systemd_bus import BusError

# What one privileged action does; returns what it changed, one sentence each.
Action = Callable[[RepairContext], Awaitable[list[str]]]

STEP_UNIT = "nodemedic-step@{}.service"


class StepFailed(RuntimeError):
    pass


def result_path(settings: Settings, root: HostRoot, name: str) -> Path:
    return root.path(settings.daemon.state_dir) / "steps" / f"{name}.json"


def write_result(ctx: RepairContext, name: str, done: list[str], error: str = "") -> None:
    path = result_path(ctx.settings, ctx.root, name)
    ensure_dir(ctx.guard, path.parent, mode=0o700)
    atomic_write(ctx.guard, path, json.dumps({"done": done, "error": error}).encode(), mode=0o600)


def read_result(ctx: RepairContext, name: str) -> tuple[list[str], str]:
    try:
        raw = json.loads(result_path(ctx.settings, ctx.root, name).read_text())
        return [str(line) for line in raw.get("done", [])], str(raw.get("error", ""))
    except (OSError, ValueError, AttributeError):
        return [], "the step left no result"


async def run_in_step_unit(ctx: RepairContext, name: str) -> list[str]:
    """Start nodemedic-step@NAME.service, wait for its job, return what the step did."""
    # A result from an earlier run must never pass for this one's.
    remove_file(ctx.guard, result_path(ctx.settings, ctx.root, name))
    unit = STEP_UNIT.format(name)
    try:
        job = await job_ending(ctx, "StartUnit", unit)
    except BusError as err:
        raise StepFailed(f"cannot start {unit}: {err}") from err
    done, error = read_result(ctx, name)
    if job != "done" or error:
        raise StepFailed(f"{unit}: job {job}: {error or 'see journalctl -u ' + unit}"
                         + (f" (done before it failed: {'; '.join(done)})" if done else ""))
    return done
