"""A cni0 bridge still carrying an old subnet's gateway: the probes that see it and the step that
deletes it, whose privileged half (delete_stale_bridge) runs in nodemedic-step@delete-stale-bridge
and checks its precondition again right before acting."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from nodemedic.probes.cri import CriError, PodSandbox
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.network.cniconf import BridgeExpectation, expected_bridge
from nodemedic.repairs.network.ip import delete_link, link_ipv4
from nodemedic.repairs.privileged import run_in_step_unit
from nodemedic.repairs.remedy_probes import runtime_ready
from nodemedic.repairs.step import StepClass
from nodemedic.safety import remove_file


class Refused(RuntimeError):
    """A privileged action's precondition no longer holds; nothing was changed."""


def wrong_addresses(addresses: Iterable[IPv4Interface], expected: BridgeExpectation) -> list[IPv4Interface]:
    # The bridge plugin accepts an IPv4 address only if it is exactly a gateway (address and
    # prefix); any other IPv4 address makes it fail with "already has an IP address different".
    return [a for a in addresses if a not in expected.gateways]


async def bridge_conflict(ctx: RepairContext) -> bool:
    """Confirm probe: the bridge exists and carries an IPv4 address that is not its expected
    gateway. An unknown expectation, or a link we cannot read, is not a confirmation."""
    expected = expected_bridge(ctx)
    if expected is None:
        return False
    try:
        addresses = await link_ipv4(expected.bridge)
    except (OSError, RuntimeError, TimeoutError, ValueError):
        return False
    return addresses is not None and bool(wrong_addresses(addresses, expected))


async def no_bridge_conflict(ctx: RepairContext) -> bool:
    return not await bridge_conflict(ctx)


async def runtime_ready_without_conflict(ctx: RepairContext) -> bool:
    """What the ladder's containerd restart must achieve: a runtime that answers, and a bridge
    the plugin will accept on the next sandbox."""
    return await runtime_ready(ctx) and not await bridge_conflict(ctx)


async def ready_sandboxes(ctx: RepairContext) -> list[PodSandbox] | None:
    """The READY pod sandboxes, or None when the runtime cannot be asked (unknown: never delete)."""
    try:
        sandboxes = await ctx.cri.list_pod_sandboxes()
    except CriError:
        return None
    return [s for s in sandboxes if s.ready]


async def no_pods_running(ctx: RepairContext) -> bool:
    return await ready_sandboxes(ctx) == []


def stale_reservations(directory: Path, subnets: tuple[IPv4Network, ...]) -> list[Path]:
    """host-local's reservation files (named by the IPv4 address) outside the expected subnets.
    Its other files (lock, last_reserved_ip.N) and anything not a plain file are left alone."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            address = IPv4Address(entry.name)
        except ValueError:
            continue
        try:
            regular = stat.S_ISREG(os.lstat(entry).st_mode)
        except OSError:
            continue
        if regular and not any(address in s for s in subnets):
            out.append(entry)
    return out


def names_of(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items)


async def delete_stale_bridge(ctx: RepairContext) -> list[str]:
    """The privileged half of DeleteStaleBridge, run in nodemedic-step@delete-stale-bridge: check
    again, right before acting, that the bridge is wrong and no pod sandbox is ready; then delete
    the bridge and the old subnet's host-local reservations."""
    expected = expected_bridge(ctx)
    if expected is None:
        raise Refused("the bridge's expected gateway is unknown (no usable CNI config or subnet.env)")
    addresses = await link_ipv4(expected.bridge)
    wrong = wrong_addresses(addresses or [], expected)
    if not wrong:
        return []  # gone or right already: nothing to do, and nothing done
    ready = await ready_sandboxes(ctx)
    if ready is None:
        raise Refused("the container runtime did not answer ListPodSandbox: pods may be running")
    if ready:
        raise Refused(f"{len(ready)} pod sandbox(es) ready ({names_of(f'{s.namespace}/{s.name}' for s in ready)}): "
                      f"deleting {expected.bridge} would cut their network")
    await delete_link(expected.bridge)
    done = [f"deleted {expected.bridge}, which carried {names_of(addresses or [])} instead of "
            f"{names_of(expected.gateways)} (from {expected.source})"]
    directory = ctx.node_path(expected.ipam_dir) / expected.network
    removed = [p.name for p in stale_reservations(directory, expected.subnets) if remove_file(ctx.guard, p)]
    if removed:
        done.append(f"removed host-local reservations outside {names_of(expected.subnets)} from {directory}: "
                    f"{names_of(removed)}")
    return done


@dataclass(frozen=True)
class DeleteStaleBridge:
    """cni0 carries an old subnet: delete it (the bridge plugin recreates it with the right
    gateway on the next sandbox) — only while no pod runs on the node."""

    name: str = "delete-stale-bridge"
    klass: StepClass = StepClass.DISRUPTIVE
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        # Never raises (the engine treats an exception here as "needed").
        return await bridge_conflict(ctx) and await no_pods_running(ctx)

    async def apply(self, ctx: RepairContext) -> str:
        done = await run_in_step_unit(ctx, self.name)
        return "; ".join(done) if done else "nothing removed: the bridge was already gone or right"

    async def verify(self, ctx: RepairContext) -> bool:
        # Live: the bridge is gone, or was recreated with the right address.
        return not await bridge_conflict(ctx)
