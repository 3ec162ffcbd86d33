"""`nodemedic doctor`: a one-shot diagnosis that needs no running daemon.

Runs every live probe and every path/unit check once, and says for each problem found what
nodemedic would do (its ladder) or why it would not (policy, report-only, nothing to probe).
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodemedic import problems as p
from nodemedic.config import Settings
from nodemedic.engine.policy import Gate
from nodemedic.flows.mirrors_config import doctor_report
from nodemedic.hostroot import HostRoot
from nodemedic.probes import containerd_config, containerd_info
from nodemedic.probes.cri import CriClient, CriError
from nodemedic.problems import crash_loop_problem
from nodemedic.repairs import cgroup, cni, imagefs, ingest, sysctl
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedies import REMEDIES
from nodemedic.safety import Guard
from nodemedic.sources.systemd_bus import BusError, SystemdBus
from nodemedic.state import EngineState, ProblemRecord


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str
    problem: str = ""
    plan: list[str] = field(default_factory=list)
    # Why the check could not be made ("" when it was): a skip is neither ok nor bad, and does
    # not change the exit code; `detail` then says what was skipped.
    skipped: str = ""


@dataclass
class Diagnosis:
    findings: list[Finding]
    containerd: containerd_info.ContainerdInfo | None = None

    @property
    def healthy(self) -> bool:
        return all(f.ok for f in self.findings)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"healthy": self.healthy, "findings": [asdict(f) for f in self.findings]}
        if self.containerd is not None:
            out["containerd"] = self.containerd.as_json()
        return out


def plan_for(ctx: RepairContext, problem: str, forced: bool = False) -> list[str]:
    """What nodemedic would do about `problem`, step by step, or why it would not; `forced` is
    the operator's `nodemedic repair`, which disabled problems and cooldowns do not stop."""
    remedy = REMEDIES.get(problem)
    refusal = Gate(ctx).refuse_episode(ProblemRecord(problem), remedy, forced)
    if refusal:
        return [f"would not repair: {refusal}"]
    assert remedy is not None
    plan = []
    for number, step in enumerate(remedy.steps, start=1):
        held = Gate(ctx).refuse_step(step)
        plan.append(f"step {number}: {step.name} ({step.klass})" + (f" - held back: {held}" if held else ""))
    return plan


async def _runtime(ctx: RepairContext) -> list[Finding]:
    socket = ctx.settings.paths.containerd_socket
    try:
        status = await ctx.cri.status()
    except CriError as err:
        return [Finding("runtime", False, f"CRI at {socket} does not answer: {err}", p.RUNTIME_DOWN)]
    findings = [Finding("runtime", status.runtime_ready, "RuntimeReady" if status.runtime_ready else
                        f"RuntimeReady=false: {status.runtime_reason} {status.runtime_message}".strip(),
                        "" if status.runtime_ready else p.RUNTIME_DOWN)]
    conf_dir = ctx.node_path(ctx.settings.paths.cni_conf_dir)
    real = cni.real_configs(conf_dir, ctx.settings.cni.placeholder_file)
    placeholder = (conf_dir / ctx.settings.cni.placeholder_file).exists()
    if status.network_ready:
        detail = "NetworkReady" + (" (placeholder CNI config active: the real CNI is not installed yet)"
                                   if placeholder and not real else "")
        findings.append(Finding("network", True, detail))
    else:
        configs = ", ".join(p.name for p in real) or "none"
        findings.append(Finding("network", False, f"NetworkReady=false ({status.network_reason}: "
                                f"{status.network_message}); configs in {conf_dir}: {configs}", p.CNI_CONFIG_MISSING))
    problem = await imagefs.imagefs_problem(ctx)
    findings.append(Finding("image filesystem", not problem, problem or "capacity > 0",
                            p.IMAGEFS_CAPACITY_ZERO if problem else ""))
    return findings


async def _containerd(ctx: RepairContext) -> tuple[containerd_info.ContainerdInfo, list[Finding]]:
    """containerd's version, its config file's version and deprecations, the cgroup driver (and
    where a kubelet/runc mismatch can happen), and whether it reads the CNI dir nodemedic watches."""
    path = ctx.settings.paths.containerd_config
    info = await containerd_info.gather(ctx.cri, ctx.node_path(path), path)
    findings = []
    if info.config_version is None:
        findings.append(Finding("containerd config", False, "; ".join(info.errors)))
    else:
        shown = f"{path} version {info.config_version}" if info.config_exists else f"no {path} (defaults)"
        note = info.config_note()
        unreadable = info.major is not None and info.major < 2 and info.config_version >= 3
        detail = f"containerd {info.version or '(not answering)'}, {shown}" + (f"; {note}" if note else "")
        findings.append(Finding("containerd config", not unreadable, detail))
    if info.deprecations:
        listed = "; ".join(f"{key}: {text}" for key, text in sorted(info.deprecations.items()))
        findings.append(Finding("containerd deprecations", True, f"{len(info.deprecations)} deprecation warning(s) "
                                f"(CRI {containerd_info.DEPRECATIONS_CONDITION}=false): {listed}"))
    elif info.deprecations == {}:
        findings.append(Finding("containerd deprecations", True, "none"))
    findings.append(await _cgroup_driver(ctx, info))
    try:
        config = containerd_config.load(ctx.node_path(path))
    except containerd_config.ContainerdConfigError:
        return info, findings
    watched = ctx.settings.paths.cni_conf_dir
    if config.cni_conf_dir.rstrip("/") != watched.rstrip("/"):
        findings.append(Finding("CNI config dir", False, f"containerd reads CNI configs from {config.cni_conf_dir} "
                                f"({'.'.join(config.layout.cni)}.conf_dir) but nodemedic watches {watched}: set "
                                "paths.cni_conf_dir to the same directory"))
    return info, findings


async def _cgroup_driver(ctx: RepairContext, info: containerd_info.ContainerdInfo) -> Finding:
    kubelet = cgroup.kubelet_cgroup_driver(ctx)
    note = info.cgroup_note(kubelet)
    if info.cgroup_driver is None and await cgroup.driver_mismatch(ctx):
        return Finding("cgroup driver", False, f"kubelet is configured for systemd and containerd's runc runs with "
                       f"cgroupfs; {note}", p.CGROUP_DRIVER_MISMATCH)
    return Finding("cgroup driver", True, note)


def _containerd_root(ctx: RepairContext) -> Finding:
    configured = ctx.settings.paths.containerd_root
    root = ctx.node_path(configured)
    if root.is_symlink():
        target = os.readlink(root)
        kind = "a relative symlink" if not os.path.isabs(target) else "a symlink"
        exists = "" if root.exists() else " (dangling)"
        real = os.path.realpath(root)
        if ctx.root.base != Path("/") and real.startswith(f"{ctx.root.base}/"):
            real = "/" + os.path.relpath(real, ctx.root.base)  # the node's path, as the operator types it
        fix = f"nodemedic repoint {real}" if not exists else "restore its target, then repoint"
        return Finding("containerd root", False, f"{configured} is {kind} to {target}{exists}; kubelet cannot map "
                       f"it to a device. Fix: {fix}", p.IMAGEFS_CAPACITY_ZERO)
    if not root.exists():
        return Finding("containerd root", True, f"{configured} does not exist yet (containerd creates it)")
    st = root.stat()
    mode = stat.S_IMODE(st.st_mode)
    # containerd 1.6 creates its root 0700 itself (seen on Debian 12); 0711 and 0755 are what
    # installers and guides use. Anything else, or another owner, lets others into the images.
    if (st.st_uid, st.st_gid) != (0, 0) or mode not in (0o700, 0o711, 0o755):
        return Finding("containerd root", False, f"{configured} is {st.st_uid}:{st.st_gid} {mode:04o}; expected "
                       "root:root 0700, 0711 or 0755")
    return Finding("containerd root", True, f"{configured}: root:root {mode:04o}")


# containerd's default; the configured one (images plugin, per config version) is read first.
SNAPSHOTTER = "io.containerd.snapshotter.v1.overlayfs"


def _snapshot_links(ctx: RepairContext) -> Finding:
    """Links in the snapshotter's tree whose target is gone: a root moved by a symlink (or by hand)
    leaves the snapshotter dir, its snapshots dir or single snapshots pointing at the old place,
    and every container using them fails to mount ("parent snapshot ... does not exist")."""
    try:
        config = containerd_config.load(ctx.node_path(ctx.settings.paths.containerd_config))
        snapshotter = f"io.containerd.snapshotter.v1.{config.snapshotter}"
    except containerd_config.ContainerdConfigError:
        snapshotter = SNAPSHOTTER
    base = ctx.node_path(ctx.settings.paths.containerd_root) / snapshotter
    candidates = [base, base / "snapshots"]
    try:
        candidates += sorted((base / "snapshots").iterdir())
    except OSError:
        pass
    dangling = [p for p in candidates if p.is_symlink() and not p.exists()]
    if dangling:
        shown = ", ".join(f"{p.relative_to(base.parent)} -> {os.readlink(p)}" for p in dangling[:3])
        more = f" and {len(dangling) - 3} more" if len(dangling) > 3 else ""
        return Finding("containerd snapshots", False, f"dangling snapshot link(s): {shown}{more}; containers on "
                       "them cannot start. Put the data back where the links point, or move the whole root with "
                       "nodemedic repoint; never recreate snapshot directories by hand", p.SNAPSHOT_PARENT_MISSING)
    return Finding("containerd snapshots", True, "no dangling snapshot links")


def _registry_mirrors(ctx: RepairContext) -> Finding:
    """Deprecated registry mirrors in config.toml (removal planned for containerd 2.4)."""
    shown = ctx.settings.paths.containerd_config
    path = ctx.node_path(shown)
    try:
        text = path.read_text() if path.exists() else None
    except (OSError, UnicodeDecodeError) as err:
        return Finding("registry mirrors", False, f"cannot read {shown}: {err}")
    ok, detail = doctor_report(text, shown)
    return Finding("registry mirrors", ok, detail)


def _host_checks(ctx: RepairContext) -> list[Finding]:
    findings = [_containerd_root(ctx), _snapshot_links(ctx), _registry_mirrors(ctx)]
    stale = ingest.stale_entries(ctx)
    findings.append(Finding("content ingest", not stale, f"{len(stale)} stale partial download(s)" if stale
                            else "no stale partial downloads", p.INGEST_STALE if stale else ""))
    try:
        low = sysctl.too_low(ctx)
    except OSError as err:
        findings.append(Finding("inotify limits", True, "not checked", skipped=f"cannot read: {err.strerror}"))
    else:
        findings.append(Finding("inotify limits", not low, ", ".join(f"{k}={v}" for k, v in low.items())
                                + " below what containers need" if low else "sufficient",
                                p.INOTIFY_LIMITS if low else ""))
    swaps = ctx.node_path("/proc/swaps")
    active = swaps.read_text().splitlines()[1:] if swaps.exists() else []
    findings.append(Finding("swap", not active, f"{len(active)} swap device(s) active" if active else "off",
                            p.SWAP_ENABLED if active else ""))
    return findings


async def _units(ctx: RepairContext) -> list[Finding]:
    findings = []
    try:
        await ctx.bus.connect(ctx.settings.daemon.units, lambda _unit: None)
        for unit in ctx.settings.daemon.units:
            state = await ctx.bus.unit_state(unit)
            looping = state.sub_state == "auto-restart"
            problem = crash_loop_problem(unit) if looping else ""
            findings.append(Finding(unit, state.active_state == "active" and not looping,
                                    f"{state.active_state}/{state.sub_state}, {state.n_restarts} restarts"
                                    + (f", result {state.result}" if state.result not in ("", "success") else ""),
                                    problem))
    except BusError as err:
        findings.append(Finding("systemd", True, "unit checks not made", skipped=str(err)))
    finally:
        ctx.bus.close()
    return findings


async def diagnose(settings: Settings, root: HostRoot) -> Diagnosis:
    guard = Guard.from_paths(root.path(p) for p in settings.policy.protected_paths)
    async with CriClient(str(root.path(settings.paths.containerd_socket)), timeout=3.0) as cri:
        ctx = RepairContext(settings, root, guard, SystemdBus(), cri, EngineState())
        info, containerd_findings = await _containerd(ctx)
        findings = await _units(ctx) + await _runtime(ctx) + containerd_findings + _host_checks(ctx)
        for finding in findings:
            if finding.problem:
                finding.plan = plan_for(ctx, finding.problem)
    return Diagnosis(findings, info)


def run_doctor(settings: Settings, root: HostRoot) -> Diagnosis:
    return asyncio.run(diagnose(settings, root))
