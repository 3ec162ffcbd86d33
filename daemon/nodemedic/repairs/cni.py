"""CNI: the placeholder network config, and knowing which configs are real.

containerd loads the lexically first config in its conf dir, so the placeholder's name sorts
after every real one (flannel's 10-flannel.conflist, calico, cilium): a real config always wins,
and the placeholder is removed as soon as one appears.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from nodemedic.probes.cni_dir import real_configs
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.step import StepClass
from nodemedic.report.journal import NOTICE, Kind, log
from nodemedic.safety import atomic_write, ensure_dir, remove_file

# A bridge of our own: never `cni0`, which flannel and the bridge plugin own.
PLACEHOLDER_BRIDGE = "nodemedic0"


def placeholder_config(subnet: str) -> bytes:
    network = ipaddress.ip_network(subnet, strict=True)
    config = {
        "cniVersion": "1.0.0",
        "name": "nodemedic-placeholder",
        "plugins": [{
            "type": "bridge",
            "bridge": PLACEHOLDER_BRIDGE,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": str(network)}]]},
        }],
    }
    return (json.dumps(config, indent=2) + "\n").encode()


async def network_ready(ctx: RepairContext) -> bool:
    status = await ctx.cri_status()
    return status is not None and status.network_ready


async def network_not_ready(ctx: RepairContext) -> bool:
    status = await ctx.cri_status()
    return status is not None and status.runtime_ready and not status.network_ready


def placeholder_allowed(ctx: RepairContext) -> bool:
    policy = ctx.settings.cni.placeholder
    return policy == "always" or (policy == "until-first-real" and not ctx.state.real_cni_seen)


@dataclass(frozen=True)
class WritePlaceholder:
    name: str = "cni-placeholder"
    klass: StepClass = StepClass.SAFE
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        conf_dir = ctx.node_path(ctx.settings.paths.cni_conf_dir)
        return placeholder_allowed(ctx) and not real_configs(conf_dir, ctx.settings.cni.placeholder_file)

    async def apply(self, ctx: RepairContext) -> str:
        conf_dir = ctx.node_path(ctx.settings.paths.cni_conf_dir)
        ensure_dir(ctx.guard, conf_dir)
        target = conf_dir / ctx.settings.cni.placeholder_file
        atomic_write(ctx.guard, target, placeholder_config(ctx.settings.cni.placeholder_subnet), mode=0o644)
        # Never silent: the placeholder hides a real NotReady signal while it is there.
        log(Kind.PLACEHOLDER_ACTIVE, f"placeholder CNI config active: {target}", NOTICE, path=target)
        return f"wrote placeholder CNI config {target} ({ctx.settings.cni.placeholder_subnet})"

    async def verify(self, ctx: RepairContext) -> bool:
        return await network_ready(ctx)


def remove_placeholder_if_superseded(ctx: RepairContext) -> Path | None:
    """Remove the placeholder once a real config exists; returns the path removed."""
    conf_dir = ctx.node_path(ctx.settings.paths.cni_conf_dir)
    placeholder = conf_dir / ctx.settings.cni.placeholder_file
    # Ours is a regular file we wrote: a symlink at its name (another network's config) is not.
    if placeholder.is_file() and not placeholder.is_symlink() \
            and real_configs(conf_dir, ctx.settings.cni.placeholder_file):
        remove_file(ctx.guard, placeholder)
        return placeholder
    return None
