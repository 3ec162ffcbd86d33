"""`nodemedic step NAME`: the privileged half of a step, run by nodemedic-step@NAME.service.

Only names listed here can run; systemd starts the unit only when the daemon asked for it
(nodemedic.repairs.privileged). Each action re-checks its precondition (no pods on the bridge,
owners of the chains stopped) itself, because the node may have changed since the daemon's
look, and returns what it changed; that goes to the journal and to the result file.
"""

from __future__ import annotations

import asyncio
import sys

from nodemedic.config import load_config
from nodemedic.hostroot import HostRoot
from nodemedic.probes.cri import CriClient
from nodemedic.repairs import network
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.privileged import Action, write_result
from nodemedic.safety import Guard
from nodemedic.sources.systemd_bus import SystemdBus
from nodemedic.state import EngineState

ACTIONS: dict[str, Action] = {
    "delete-stale-bridge": network.delete_stale_bridge,
    "remove-cni-leftovers": network.remove_cni_leftovers,
}

EXIT_OK, EXIT_FAILED, EXIT_UNKNOWN = 0, 1, 2


async def _run(root: HostRoot, name: str, action: Action) -> int:
    settings = load_config(root, lambda msg: print(f"warning: {msg}", file=sys.stderr)).settings
    guard = Guard.from_paths(root.path(p) for p in settings.policy.protected_paths)
    bus = SystemdBus()
    async with CriClient(str(root.path(settings.paths.containerd_socket)), timeout=5.0) as cri:
        ctx = RepairContext(settings, root, guard, bus, cri, EngineState())
        done: list[str] = []
        try:
            await bus.connect((), lambda _unit: None)
            done = await action(ctx)
        except Exception as err:  # noqa: BLE001 - reported to the daemon, which climbs the ladder
            write_result(ctx, name, done, f"{type(err).__name__}: {err}")
            print(f"{name} failed: {err}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            bus.close()
        write_result(ctx, name, done)
        for line in done or ["nothing to do"]:
            print(f"{name}: {line}")
        return EXIT_OK


def run_step(root: HostRoot, name: str) -> int:
    action = ACTIONS.get(name)
    if action is None:
        print(f"nodemedic step: unknown step {name!r} (known: {', '.join(sorted(ACTIONS))})", file=sys.stderr)
        return EXIT_UNKNOWN
    return asyncio.run(_run(root, name, action))
