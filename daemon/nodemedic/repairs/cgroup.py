"""cgroup driver: containerd's runc must use the systemd cgroup driver like kubelet does.

The edit is a round trip through tomlkit, so every other line and comment the operator wrote
stays; a backup is kept next to it. Never regenerate the file from `containerd config default`.

Where a mismatch can happen: kubelet passes cgroup paths in its own driver's format, and runc
rejects the other format ("expected cgroupsPath to be of format"). A kubelet >= 1.31
(KubeletCgroupDriverFromCRI, on by default) asks the runtime with CRI RuntimeConfig and follows
its answer, so against containerd 2.x (which implements RuntimeConfig) the two cannot disagree.
The mismatch remains possible with containerd 1.6/1.7 (no RuntimeConfig: kubelet uses its
config's cgroupDriver) and with an older kubelet, or one with that gate off, on any containerd.
The ladder is entered on runc's error, which only those combinations produce; `doctor` says
which case a node is in (probes.containerd_info.cgroup_note).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import tomlkit

from nodemedic.probes import containerd_config
from nodemedic.probes.cri import CriError
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.step import StepClass
from nodemedic.safety import atomic_write


def set_systemd_cgroup(text: str) -> tuple[str, bool]:
    """The config with SystemdCgroup = true for runc, and whether anything changed. The table is
    the one the file's own version names (containerd_config.layout): a version 2 file on
    containerd 2.x is edited as version 2, which 2.x migrates when it loads it."""
    document = tomlkit.parse(text)
    version = containerd_config.edit_version(document)
    table = containerd_config.table_at(document, containerd_config.layout(version).runc_options)
    if table.get("SystemdCgroup") is True:
        return text, False
    table["SystemdCgroup"] = True
    return tomlkit.dumps(document), True


# kubeadm writes the kubelet's configuration here, with cgroupDriver: systemd since v1.22.
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
_KUBELET_DRIVER = re.compile(r"""^cgroupDriver:[ \t]*["']?([\w-]+)""", re.MULTILINE)


async def _systemd_cgroup(ctx: RepairContext) -> bool | None:
    """What containerd runs with now, from CRI Status(verbose) — not what the file says;
    None when containerd does not answer."""
    try:
        info = await ctx.cri.status_info()
    except CriError:
        return None
    config = json.loads(info.get("config", "{}"))
    runtimes = config.get("containerd", {}).get("runtimes", {})
    options = runtimes.get("runc", {}).get("options", {})
    return bool(options.get("SystemdCgroup"))


async def systemd_cgroup_in_effect(ctx: RepairContext) -> bool:
    return bool(await _systemd_cgroup(ctx))


def kubelet_cgroup_driver(ctx: RepairContext) -> str:
    """The driver kubelet's config file names, "" when there is no file or it names none."""
    try:
        text = ctx.root.path(KUBELET_CONFIG).read_text()
    except OSError:
        return ""
    match = _KUBELET_DRIVER.search(text)
    return match.group(1) if match else ""


async def driver_mismatch(ctx: RepairContext) -> bool:
    """kubelet is configured for systemd and containerd's runc runs with cgroupfs. The ladder
    only ever changes containerd's side, so it must know kubelet's: a kubelet on cgroupfs (the
    other mismatch, where runc rejects cgroupfs paths) is never "fixed" from containerd."""
    return kubelet_cgroup_driver(ctx) == "systemd" and await _systemd_cgroup(ctx) is False


@dataclass(frozen=True)
class EnableSystemdCgroup:
    name: str = "containerd-systemd-cgroup"
    klass: StepClass = StepClass.SAFE  # the restart that makes it effective is its own step
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        path = ctx.root.path(ctx.settings.paths.containerd_config)
        text = path.read_text() if path.exists() else ""
        return set_systemd_cgroup(text)[1]

    async def apply(self, ctx: RepairContext) -> str:
        path = ctx.root.path(ctx.settings.paths.containerd_config)
        text = path.read_text() if path.exists() else ""
        new, changed = set_systemd_cgroup(text)
        if not changed:
            return "SystemdCgroup already true"
        backup = path.with_name(f"{path.name}.nodemedic-{time.strftime('%Y%m%dT%H%M%S')}.bak")
        if path.exists():
            atomic_write(ctx.guard, backup, text.encode(), mode=path.stat().st_mode & 0o777)
        atomic_write(ctx.guard, path, new.encode(), mode=0o644)
        return f"set SystemdCgroup = true in {path} (backup {backup.name})"

    async def verify(self, ctx: RepairContext) -> bool:
        # Effective only after containerd restarts: this step alone never counts as healed.
        return await systemd_cgroup_in_effect(ctx)
