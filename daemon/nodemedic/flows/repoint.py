"""`nodemedic repoint TARGET`: move containerd's root to other storage, or roll back.

Order: checks (read-only) → stop kubelet, then containerd → copy → verify the copy against the
source's manifest → move the old root aside (renamed, never deleted) → a systemd mount unit binds
TARGET at the configured root → start containerd → image-filesystem warm-up and CRI checks (the
image filesystem must now be on TARGET's filesystem, with a capacity) → start kubelet. Every step
after the stop is recorded with its undo; the first failure rolls everything back and starts the
services again on the old root.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodemedic.config import Settings
from nodemedic.flows import EXIT_FAILED, EXIT_NEEDS_OPERATOR, EXIT_OK, EXIT_REFUSED, mountunit
from nodemedic.flows.copy import CopyFailed, copy_argv, copy_tree
from nodemedic.flows.manifest import compare, usage
from nodemedic.flows.pause import daemon_paused
from nodemedic.flows.repoint_checks import (
    Layout,
    Refused,
    Shape,
    check_quiet,
    check_space,
    check_target,
    inspect_root,
    is_conversion,
    probe_xattrs,
)
from nodemedic.flows.report import FlowReport
from nodemedic.flows.services import CONTAINERD, KUBELET, start, stop, warm_imagefs
from nodemedic.flows.systemd import FlowBus
from nodemedic.flows.transaction import Transaction, failure_reason
from nodemedic.hostroot import HostRoot
from nodemedic.journal import ERR, NOTICE, WARNING, Kind
from nodemedic.mounts import read_mountinfo
from nodemedic.probes.cri import CriClient, CriError
from nodemedic.repairs.containerd_root import running_shims
from nodemedic.repairs.context import RepairContext
from nodemedic.safety import Guard, atomic_write, ensure_dir, remove_file, remove_tree
from nodemedic.sources.systemd_bus import BusError
from nodemedic.state import EngineState

RUNNING = ("active", "activating", "reloading")


@dataclass
class Plan:
    layout: Layout
    target: Path  # resolved
    unit: str
    unit_path: Path
    aside: Path | None  # where the old root goes (None: it already lives elsewhere)
    total_bytes: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def copies(self) -> bool:
        return not is_conversion(self.layout, self.target)


async def make_plan(settings: Settings, root: HostRoot, guard: Guard, target_arg: str) -> Plan:
    """Every read-only check, and the steps that would follow; raises Refused."""
    configured = root.path(settings.paths.containerd_root)
    unit = await mountunit.unit_name(settings.paths.containerd_root)
    unit_path = root.path(f"{mountunit.UNIT_DIR}/{unit}")
    mounts = read_mountinfo()
    layout = inspect_root(configured, unit_path, mounts)
    if unit_path.exists() and layout.shape is not Shape.MOUNTED and not mountunit.is_ours(unit_path.read_text()):
        raise Refused(f"{unit_path} exists and was not written by nodemedic; remove or rename it first")
    target = check_target(layout, root.path(target_arg) if os.path.isabs(target_arg) else Path(target_arg),
                          guard, mounts, settings.repoint.filesystems)
    check_quiet(layout, mounts, running_shims())
    aside = None
    if layout.shape is not Shape.MOUNTED:
        aside = configured.with_name(f"{configured.name}.nodemedic-{time.strftime('%Y%m%dT%H%M%S')}")
    plan = Plan(layout, target, unit, unit_path, aside)
    lines = [f"containerd root {configured} is a {layout.shape}" + (f" holding data at {layout.data}"
                                                                    if layout.data != configured else "")]
    if plan.copies:
        need = usage(layout.data)
        plan.total_bytes = need.bytes
        lines.append(check_space(target, need))
    lines += [f"stop {KUBELET}, then {CONTAINERD} (over D-Bus)"]
    if plan.copies:
        lines += [f"copy with `{' '.join(copy_argv(layout.data, target))}`, progress on stdout and STATUS=",
                  "verify the copy: paths, kinds, modes, owners, sizes, link targets, devices, xattrs, hard-link "
                  "groups, sparseness and a SHA-256 of every regular file"]
    if layout.shape is Shape.MOUNTED:
        lines.append(f"stop {unit}; the old data stays untouched at {layout.data}")
    else:
        lines.append(f"move {configured} aside to {aside} (renamed, never deleted) and create an empty {configured}")
    lines += [f"write {unit_path}: bind mount What={target} Where={settings.paths.containerd_root} "
              "(never a symlink), daemon-reload, enable and start it over D-Bus",
              f"start {CONTAINERD}; warm up the image filesystem; check CRI Status and that ImageFsInfo's "
              f"mountpoint is on {target}'s filesystem with a capacity > 0",
              f"start {KUBELET} (if it was running)",
              "on any failure after the stop: undo every step, newest first, and start the services on the old root"]
    plan.lines = lines
    return plan


class Repoint:
    def __init__(self, settings: Settings, root: HostRoot, guard: Guard, plan: Plan, report: FlowReport) -> None:
        self.settings = settings
        self.root = root
        self.guard = guard
        self.plan = plan
        self.report = report
        self.bus = FlowBus()
        self.timeout = settings.policy.step_timeout
        self.tx = Transaction(lambda what: report.event(Kind.REPOINT_STEP, what, step=what))

    async def run(self) -> int:
        plan = self.plan
        configured = plan.layout.root
        self.report.event(Kind.REPOINT_STARTED, f"repointing {configured} to {plan.target}", NOTICE,
                          root=configured, target=plan.target, shape=plan.layout.shape)
        try:
            await self.bus.connect((CONTAINERD, KUBELET), lambda _unit: None)
        except Exception as err:  # noqa: BLE001 - nothing changed yet: report and refuse
            return self._refused(f"cannot reach systemd over D-Bus: {err}")
        try:
            async with daemon_paused(self.report), CriClient(str(self.root.path(
                    self.settings.paths.containerd_socket))) as cri:
                ctx = RepairContext(self.settings, self.root, self.guard, self.bus, cri, EngineState())
                try:
                    await self._steps(ctx)
                except Refused as err:
                    failed = await self.tx.rollback()
                    return self._refused(str(err)) if not failed else self._incomplete(str(err), failed)
                except (Exception, asyncio.CancelledError) as err:  # noqa: BLE001 - every failure rolls back
                    return await self._roll_back(err)
        finally:
            self.bus.close()
        self.report.event(Kind.REPOINT_DONE, f"{configured} now lives on {plan.target} (mount unit {plan.unit}); "
                          + (f"the old root is kept at {plan.aside}" if plan.aside else
                             f"the old data is kept at {plan.layout.data}"), NOTICE,
                          root=configured, target=plan.target, unit=plan.unit, aside=plan.aside or plan.layout.data)
        return EXIT_OK

    async def _steps(self, ctx: RepairContext) -> None:
        plan, tx = self.plan, self.tx
        configured = plan.layout.root
        if plan.copies:
            self._prepare_target()
        running = {u: await self._running(u) for u in (KUBELET, CONTAINERD)}
        for unit in (KUBELET, CONTAINERD):
            if running[unit]:
                await stop(self.bus, tx, unit, self.timeout)
        if plan.copies:
            # The copy's undo is recorded before it starts: a half-done copy is removed too.
            tx.did(f"copying {plan.layout.data} to {plan.target}", self._remove_copy)
            await copy_tree(plan.layout.data, plan.target, plan.total_bytes, self.settings.repoint.copy_timeout,
                            self.settings.repoint.progress_interval, self.report.say)
            differences = compare(plan.layout.data, plan.target)
            if differences:
                raise CopyFailed("the copy differs from the root: " + "; ".join(differences))
            tx.did(f"verified the copy at {plan.target} against the root's manifest")
        if plan.layout.shape is Shape.MOUNTED:
            await self.bus.job("StopUnit", plan.unit, self.timeout)
            tx.did(f"stopped {plan.unit} (old data stays at {plan.layout.data})",
                   lambda: self.bus.job("StartUnit", plan.unit, self.timeout))
        else:
            self._move_aside(configured)
        await self._install_unit()
        await start(self.bus, tx, plan.unit, self.timeout)
        self._check_bind()
        await start(self.bus, tx, CONTAINERD, self.timeout)
        if problem := await warm_imagefs(ctx):
            raise RuntimeError(f"after the repoint: {problem}")
        await self._check_imagefs_on_target(ctx)
        tx.did("containerd answers CRI; ImageFsInfo's mountpoint is on the target with a capacity > 0")
        if running[KUBELET]:
            await start(self.bus, tx, KUBELET, self.timeout)

    async def _running(self, unit: str) -> bool:
        try:
            return (await self.bus.unit_state(unit)).active_state in RUNNING
        except BusError:
            return False  # not installed on this node: nothing to stop or start

    def _prepare_target(self) -> None:
        target = self.plan.target
        if not target.exists():
            st = os.stat(self.plan.layout.data)
            ensure_dir(self.guard, target, mode=0o700)  # cp gives it the root's mode and owner
            self.tx.did(f"created {target}", lambda: self._async(remove_tree, self.guard, target))
            os.chown(target, st.st_uid, st.st_gid)
        probe_xattrs(target)

    async def _remove_copy(self) -> None:
        target = self.plan.target
        if not target.is_dir():
            return
        for child in sorted(target.iterdir()):
            if child.is_dir() and not child.is_symlink():
                remove_tree(self.guard, child)
            else:
                remove_file(self.guard, child)
        self.report.say(f"removed the partial copy in {target}")

    def _move_aside(self, configured: Path) -> None:
        aside = self.plan.aside
        assert aside is not None
        self.guard.check_entry(configured)
        os.rename(configured, aside)  # same directory: a rename, nothing copied or deleted
        self.tx.did(f"moved {configured} aside to {aside}", lambda: self._async(os.rename, aside, configured))
        data = os.stat(self.plan.target)
        ensure_dir(self.guard, configured, mode=0o711)
        os.chown(configured, data.st_uid, data.st_gid)
        os.chmod(configured, data.st_mode & 0o7777)
        self.tx.did(f"created the empty mount point {configured}", lambda: self._async(os.rmdir, configured))

    async def _install_unit(self) -> None:
        plan = self.plan
        old = plan.unit_path.read_text() if plan.unit_path.exists() else None
        text = mountunit.unit_text(str(plan.target), self.settings.paths.containerd_root)
        ensure_dir(self.guard, plan.unit_path.parent)
        atomic_write(self.guard, plan.unit_path, text.encode(), mode=0o644)

        async def restore() -> None:
            if old is None:
                remove_file(self.guard, plan.unit_path)
            else:
                atomic_write(self.guard, plan.unit_path, old.encode(), mode=0o644)
            await self.bus.reload()

        self.tx.did(f"wrote {plan.unit_path} (What={plan.target})", restore)
        await self.bus.reload()
        self.tx.did("reloaded systemd's units")
        await self.bus.enable(plan.unit)
        await self.bus.reload()  # as `systemctl enable` does: containerd now requires the mount

        async def disable() -> None:
            await self.bus.disable(plan.unit)
            await self.bus.reload()

        # An earlier repoint's unit was enabled before and stays enabled on rollback.
        self.tx.did(f"enabled {plan.unit} (required by {CONTAINERD})", None if old is not None else disable)

    def _check_bind(self) -> None:
        here, there = os.stat(self.plan.layout.root), os.stat(self.plan.target)
        if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
            raise RuntimeError(f"{self.plan.layout.root} does not show {self.plan.target} after starting "
                               f"{self.plan.unit}")
        self.tx.did(f"{self.plan.layout.root} is bind-mounted from {self.plan.target}")

    async def _check_imagefs_on_target(self, ctx: RepairContext) -> None:
        try:
            filesystems = await ctx.cri.imagefs_info()
        except CriError as err:
            raise RuntimeError(f"CRI ImageFsInfo: {err}") from err
        device = os.stat(self.plan.target).st_dev
        for fs in filesystems:
            if os.stat(self.root.path(fs.mountpoint)).st_dev != device:
                raise RuntimeError(f"ImageFsInfo names {fs.mountpoint}, which is not on {self.plan.target}'s "
                                   "filesystem")

    @staticmethod
    async def _async(fn: Callable[..., object], *args: object) -> None:
        fn(*args)

    async def _roll_back(self, err: Exception) -> int:
        reason = failure_reason(err)
        self.report.say(f"failed: {reason}; rolling back")
        failed = await self.tx.rollback()
        if failed:
            return self._incomplete(reason, failed)
        self.report.event(Kind.REPOINT_ROLLED_BACK, f"repoint failed and was rolled back: {reason}", ERR,
                          reason=reason, root=self.plan.layout.root, target=self.plan.target)
        return EXIT_FAILED

    def _incomplete(self, reason: str, failed: list[str]) -> int:
        self.report.event(Kind.REPOINT_ROLLBACK_INCOMPLETE, f"repoint failed ({reason}) and the rollback is "
                          f"incomplete: {'; '.join(failed)}", ERR, reason="; ".join([reason, *failed]))
        return EXIT_NEEDS_OPERATOR

    def _refused(self, reason: str) -> int:
        self.report.event(Kind.REPOINT_REFUSED, f"refused: {reason}", WARNING, reason=reason)
        return EXIT_REFUSED


async def repoint(settings: Settings, root: HostRoot, target: str, dry_run: bool, report: FlowReport) -> int:
    if not dry_run and root.base != Path("/"):
        report.event(Kind.REPOINT_REFUSED, "refused: --root is for --dry-run only; a repoint acts on the running "
                     "system's units", WARNING, reason="--root without --dry-run")
        return EXIT_REFUSED
    guard = Guard.from_paths(root.path(p) for p in settings.policy.protected_paths)
    try:
        plan = await make_plan(settings, root, guard, target)
    except Refused as err:
        report.event(Kind.REPOINT_REFUSED, f"refused: {err}", WARNING, reason=str(err))
        return EXIT_REFUSED
    if dry_run:
        report.say(f"plan (dry run, nothing changed) for {plan.layout.root} -> {plan.target}:")
        for number, line in enumerate(plan.lines, start=1):
            print(f"  {number}. {line}", file=report.out or sys.stdout)
        return EXIT_OK
    return await Repoint(settings, root, guard, plan, report).run()
