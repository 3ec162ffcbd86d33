"""What must hold before `kubeadm join` is worth running, fixed where nodemedic's policy allows.

- CNI: the placeholder policy (cni.placeholder) decides whether a placeholder config is written
  while no real CNI config exists; a real config always wins.
- containerd running and answering CRI, its image filesystem warm (ImageFsInfo with a capacity):
  kubelet's first image GC otherwise logs "invalid capacity 0 on image filesystem".
- cgroup driver: containerd's runc must use the driver kubelet will use (kubeadm's default since
  1.22 is systemd, or cgroupDriver in an existing /var/lib/kubelet/config.yaml); nodemedic only
  turns SystemdCgroup on (the catalogue's remedy), never off.
- swap off: only reported. Turning swap off changes the node's memory behaviour; the operator
  decides (failure-modes.md: never set failSwapOn=false as a blanket fix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodemedic.flows.services import CONTAINERD, runtime_ready, wait_until, warm_imagefs
from nodemedic.flows.systemd import FlowBus
from nodemedic.repairs import cni
from nodemedic.repairs.cgroup import EnableSystemdCgroup, set_systemd_cgroup
from nodemedic.repairs.context import RepairContext

KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
DEFAULT_KUBELET_DRIVER = "systemd"
_DRIVER = re.compile(r"^cgroupDriver:\s*[\"']?(\w+)", re.M)


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # "ok", "fixed", "would fix" (dry run) or "refused"
    detail: str

    @property
    def refused(self) -> bool:
        return self.result == "refused"


def kubelet_cgroup_driver(ctx: RepairContext) -> tuple[str, str]:
    """The driver kubelet will use and where that comes from."""
    path = ctx.node_path(KUBELET_CONFIG)
    try:
        found = _DRIVER.search(path.read_text())
    except OSError:
        found = None
    if found:
        return found.group(1), str(KUBELET_CONFIG)
    return DEFAULT_KUBELET_DRIVER, "kubeadm's default"


def containerd_systemd_cgroup(ctx: RepairContext) -> bool:
    path = ctx.node_path(ctx.settings.paths.containerd_config)
    text = path.read_text() if path.exists() else ""
    return not set_systemd_cgroup(text)[1]


def swap_devices(ctx: RepairContext) -> list[str]:
    swaps = ctx.node_path("/proc/swaps")
    lines = swaps.read_text().splitlines()[1:] if swaps.exists() else []
    return [line.split()[0] for line in lines if line.strip()]


async def check_swap(ctx: RepairContext, fix: bool) -> Check:
    devices = swap_devices(ctx)
    if devices:
        return Check("swap", "refused", f"swap is on ({', '.join(devices)}): kubelet refuses to start with swap "
                     "by default. Run `swapoff -a` and remove swap from /etc/fstab if the node is not meant to swap; "
                     "nodemedic does not change memory behaviour itself")
    return Check("swap", "ok", "off")


async def check_cni(ctx: RepairContext, fix: bool) -> Check:
    conf_dir = ctx.node_path(ctx.settings.paths.cni_conf_dir)
    real = cni.real_configs(conf_dir, ctx.settings.cni.placeholder_file)
    if real:
        return Check("cni", "ok", f"real CNI config present: {', '.join(p.name for p in real)}")
    step = cni.WritePlaceholder()
    if not await step.needed(ctx):
        if (conf_dir / ctx.settings.cni.placeholder_file).exists():
            return Check("cni", "ok", "nodemedic's placeholder CNI config is in place until the real CNI arrives")
        return Check("cni", "ok", f"no CNI config in {conf_dir} and cni.placeholder = {ctx.settings.cni.placeholder}"
                     ": the node stays NotReady until the CNI daemonset writes one (kubeadm join does not need it)")
    if not fix:
        return Check("cni", "would fix", "no CNI config: would write the placeholder (cni.placeholder = "
                     f"{ctx.settings.cni.placeholder})")
    return Check("cni", "fixed", await step.apply(ctx))


async def check_containerd(ctx: RepairContext, fix: bool) -> Check:
    bus = ctx.bus
    assert isinstance(bus, FlowBus)
    state = await bus.unit_state(CONTAINERD)
    started = ""
    if state.active_state != "active":
        if not fix:
            return Check("containerd", "would fix", f"{CONTAINERD} is {state.active_state}: would start it")
        await bus.job("StartUnit", CONTAINERD, ctx.settings.policy.step_timeout)
        started = f"started {CONTAINERD}; "
    if not fix:
        ready = await runtime_ready(ctx)
        return Check("containerd", "ok" if ready else "would fix",
                     "running and RuntimeReady" if ready else "not RuntimeReady: would warm up")
    problem = await warm_imagefs(ctx)
    if problem:
        return Check("containerd", "refused", f"{started}the image filesystem is not usable: {problem}")
    return Check("containerd", "fixed" if started else "ok", f"{started}running, image filesystem warm (capacity > 0)")


async def check_cgroup(ctx: RepairContext, fix: bool) -> Check:
    kubelet, source = kubelet_cgroup_driver(ctx)
    containerd = "systemd" if containerd_systemd_cgroup(ctx) else "cgroupfs"
    if kubelet == containerd:
        return Check("cgroup-driver", "ok", f"{containerd} for both containerd and kubelet ({source})")
    if kubelet != "systemd":
        return Check("cgroup-driver", "refused", f"kubelet uses {kubelet} ({source}) but containerd uses systemd; "
                     "align them by hand (nodemedic only turns SystemdCgroup on)")
    if not fix:
        return Check("cgroup-driver", "would fix", f"containerd uses cgroupfs, kubelet {kubelet} ({source}): would "
                     f"set SystemdCgroup = true in {ctx.settings.paths.containerd_config} and restart containerd")
    done = await EnableSystemdCgroup().apply(ctx)
    bus = ctx.bus
    assert isinstance(bus, FlowBus)
    await bus.job("RestartUnit", CONTAINERD, ctx.settings.policy.step_timeout)
    policy = ctx.settings.policy
    if not await wait_until(lambda: runtime_ready(ctx), policy.verify_attempts, policy.verify_interval):
        return Check("cgroup-driver", "refused", f"{done}; containerd is not RuntimeReady after the restart")
    return Check("cgroup-driver", "fixed", f"{done}; restarted {CONTAINERD}")


# Order matters: the containerd config is settled before the image filesystem is warmed up.
CHECKS = (check_swap, check_cni, check_cgroup, check_containerd)
