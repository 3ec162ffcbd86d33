"""`nodemedic mirrors migrate`: move config.toml's deprecated registry mirrors into hosts.toml files.

Order: checks (read-only: config.toml parses, the edit proves itself, no hosts.toml in the way) →
a real pull of the verify image with the old configuration (it must work before, or the check
after proves nothing) → write certs.d/<registry>/hosts.toml → back up config.toml → write the
edited config.toml → restart containerd over D-Bus → CRI answers, its effective config names
config_path → the same pull again, now through hosts.toml. Every change is recorded with its
undo; the first failure restores config.toml byte for byte, removes what was written and
restarts containerd on the old configuration. The backup stays.

What hosts.toml cannot express stays in config.toml and is said: `configs.<host>.auth` and
`auths` (credentials: containerd's docs keep them out of hosts.toml on purpose; they still work
beside config_path). A malformed config.toml, a hosts.toml already there with other settings, or a
host directory with Docker-style certificates (which a new hosts.toml would switch off) is a
refusal before anything is changed.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nodemedic.config import Settings
from nodemedic.flows import EXIT_FAILED, EXIT_NEEDS_OPERATOR, EXIT_OK, EXIT_REFUSED
from nodemedic.flows.mirrors_config import (
    DEFAULT_CONFIG_PATH,
    MalformedConfig,
    RegistrySettings,
    dotted,
    parse,
    registry_settings,
)
from nodemedic.flows.mirrors_cri import ImageCri, registry_of
from nodemedic.flows.mirrors_edit import dropped_comments, migrate_text
from nodemedic.flows.mirrors_hosts import HEADER, HostsFile, hosts_files
from nodemedic.flows.pause import daemon_paused
from nodemedic.flows.report import FlowReport
from nodemedic.flows.services import CONTAINERD
from nodemedic.flows.systemd import FlowBus
from nodemedic.flows.transaction import Transaction, failure_reason
from nodemedic.hostroot import HostRoot
from nodemedic.journal import ERR, NOTICE, WARNING, Kind
from nodemedic.probes.cri import CriError
from nodemedic.repairs.remedy_probes import wait_until
from nodemedic.safety import Guard, UnsafeOperation, atomic_write, ensure_dir, remove_file

PULL_TIMEOUT = 300.0  # a first pull of a real image through a slow mirror
# containerd 2.x's deprecation ids (pkg/deprecation) for what this flow moves.
DEPRECATED_MIRRORS = "io.containerd.deprecation/cri-registry-mirrors"
DEPRECATED_CONFIGS = "io.containerd.deprecation/cri-registry-configs"
# A credential's value in a diff line, in table, dotted (configs."r".auth.password) or inline form.
_SECRET_LINE = re.compile(r"^(?P<head>.*?\b(?:password|auth|identitytoken)\s*=\s*).*$", re.IGNORECASE)


class Refused(Exception):
    """Nothing was changed; the message says why."""


@dataclass
class Plan:
    config: Path  # config.toml in this root
    shown: str  # its path as the operator knows it
    old_text: str
    mode: int
    registry: RegistrySettings
    certs_shown: str  # config_path as written into config.toml
    certs: Path  # the first config_path directory in this root
    new_text: str
    files: list[HostsFile]  # to write
    present: list[HostsFile]  # already there, saying the same
    backup: Path
    verify_image: str = ""
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def hosts_path(self, hosts: HostsFile) -> Path:
        return self.certs / hosts.namespace / "hosts.toml"


def _conflict(directory: Path, hosts: HostsFile) -> str:
    """Why `directory` (one config_path entry) cannot take `hosts`; "" when it can; "same" when
    an identical hosts.toml is already there."""
    namespace = directory / hosts.namespace
    target = namespace / "hosts.toml"
    if ":" in hosts.namespace:  # containerd looks at host_port_ first (docs/hosts.md, port handling)
        host, port = hosts.namespace.rsplit(":", 1)
        first = directory / f"{host}_{port}_"
        if first.exists():
            return f"{first} exists and containerd reads it before {namespace}; merge by hand or move it away"
    if target.is_symlink() or (target.exists() and not target.is_file()):
        return f"{target} exists and is not a regular file"
    if target.exists():
        try:
            there = parse(target.read_text(), str(target)).unwrap()
        except MalformedConfig as err:
            return f"{target} exists and {err}; fix or move it away first"
        if there == parse(hosts.text).unwrap():
            return "same"
        return (f"{target} exists with other settings than the mirrors in config.toml; merge them by hand "
                "(or move the file away) and run again")
    if namespace.is_dir():
        others = sorted(p.name for p in namespace.iterdir())
        if others:
            return (f"{namespace} holds {', '.join(others)} without a hosts.toml: containerd uses such "
                    "Docker-style certificate files only while there is no hosts.toml; add them to a hosts.toml "
                    "by hand first")
    elif namespace.exists():
        return f"{namespace} exists and is not a directory"
    return ""


def _config_dirs(registry: RegistrySettings) -> list[str]:
    if not registry.config_path:
        return [DEFAULT_CONFIG_PATH]
    dirs = [d for d in registry.config_path.split(":") if d]  # Go's filepath.SplitList
    for entry in dirs:
        if not os.path.isabs(entry):
            raise Refused(f"config_path entry {entry!r} is not absolute; set an absolute directory first")
    return dirs


def _mask(line: str) -> str:
    match = _SECRET_LINE.match(line)
    return f"{match['head']}\"***\"" if match else line


def config_diff(old: str, new: str, name: str) -> list[str]:
    """A unified diff of config.toml, credentials masked."""
    diff = difflib.unified_diff(old.splitlines(), new.splitlines(), f"{name} (now)", f"{name} (after)", lineterm="")
    return [_mask(line) for line in diff]


def make_plan(settings: Settings, root: HostRoot, guard: Guard, verify_image: str = "") -> Plan | None:
    """Every read-only check and the change that would follow; None when there is nothing to
    migrate; raises Refused."""
    shown = settings.paths.containerd_config
    config = root.path(shown)
    if not config.is_file():
        return None
    old_bytes = config.read_bytes()
    try:
        old_text = old_bytes.decode()
        registry = registry_settings(old_text, shown)
    except UnicodeDecodeError:
        raise Refused(f"{shown} is not UTF-8 text; nothing changed") from None
    except MalformedConfig as err:
        raise Refused(f"{err}; nothing changed") from None
    if not registry.movable:
        return None
    if registry.version == 1:
        raise Refused(f"{shown} is config version 1 (no `version` key); convert it to version 2 (containerd 1.x) "
                      "or 3 (containerd 2.x, `containerd config migrate`) first; nothing changed")
    dirs = _config_dirs(registry)
    certs_shown = dirs[0]
    certs = root.path(certs_shown)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    backup = config.with_name(f"{config.name}.nodemedic-{stamp}.bak")
    header = HEADER.format(source=shown, table=dotted(registry.table), backup=backup.name)
    try:
        files = hosts_files(registry, header)
        new_text = migrate_text(old_text, registry, registry.config_path or certs_shown)
    except MalformedConfig as err:
        raise Refused(f"{err}; nothing changed") from None
    to_write, present = [], []
    for hosts in files:
        reasons = [_conflict(root.path(d), hosts) for d in dirs]
        problems = [r for r in reasons if r not in ("", "same")]
        if problems:
            raise Refused(problems[0] + "; nothing changed")
        (present if reasons[0] == "same" else to_write).append(hosts)
    try:
        for path in [config, backup, certs, *(certs / h.namespace / "hosts.toml" for h in files)]:
            guard.check(path)
    except UnsafeOperation as err:
        raise Refused(str(err)) from None
    if certs.exists() and not certs.is_dir():
        raise Refused(f"{certs_shown} exists and is not a directory")
    plan = Plan(config, shown, old_text, config.stat().st_mode & 0o7777, registry, certs_shown, certs, new_text,
                to_write, present, backup, verify_image)
    if registry.auth_hosts or registry.auths:
        plan.kept = [d for d in registry.deprecated if ".auth" in d]
    plan.dropped = dropped_comments(old_text, new_text)
    plan.lines = _describe(plan)
    return plan


def _describe(plan: Plan) -> list[str]:
    registry = plan.registry
    moved = [d for d in registry.deprecated if ".auth" not in d]
    lines = [f"{plan.shown} (config version {registry.version}) sets deprecated {'; '.join(moved)}"]
    for hosts in plan.files:
        lines.append(f"write {plan.certs_shown}/{hosts.relpath}:\n" + _indented(hosts.text))
    for hosts in plan.present:
        lines.append(f"{plan.certs_shown}/{hosts.relpath} is already there with the same settings: kept as it is")
    set_path = (f"set config_path = \"{plan.certs_shown}\"" if not registry.config_path
                else f"keep config_path = \"{registry.config_path}\"")
    lines.append(f"back up {plan.shown} to {plan.backup.name}, then edit it round-trip (every other line and "
                 f"comment kept): remove {dotted(registry.table)}.mirrors and configs.*.tls, {set_path}:\n"
                 + _indented("\n".join(config_diff(plan.old_text, plan.new_text, plan.shown))))
    if plan.kept:
        lines.append("kept in config.toml, because hosts.toml cannot hold credentials (containerd's "
                     "docs/cri/registry.md; they keep working beside config_path; move them to ImagePullSecrets): "
                     + "; ".join(plan.kept))
    if plan.dropped:
        lines.append("comments inside the moved tables go with them (the backup keeps them): "
                     + " | ".join(plan.dropped))
    lines.append(f"restart {CONTAINERD} over D-Bus; wait for CRI RuntimeReady and config_path in its effective config")
    lines.append(f"verify with a real CRI PullImage of {plan.verify_image}, before the change and after it"
                 if plan.verify_image else
                 "verify with a real CRI PullImage of an image of a migrated registry found on the node "
                 "(or --verify-image), before the change and after it")
    lines.append("on any failure after the first write: restore config.toml byte for byte, remove the hosts.toml "
                 "files written, restart containerd")
    return lines


def _indented(text: str) -> str:
    return "\n".join(f"       {line}" for line in text.rstrip("\n").splitlines())


async def choose_image(cri: ImageCri, registry: RegistrySettings) -> str:
    """An image of a migrated registry that is on the node, to pull again as the check."""
    wanted = {h for h in registry.mirrors if h != "*"} | set(registry.tls)
    tags = sorted(await cri.image_tags())
    for tag in tags:
        if registry_of(tag) in wanted:
            return tag
    if "*" in registry.mirrors and tags:
        return tags[0]
    return ""


class Migrate:
    def __init__(self, settings: Settings, root: HostRoot, guard: Guard, plan: Plan, report: FlowReport) -> None:
        self.settings = settings
        self.guard = guard
        self.plan = plan
        self.report = report
        self.socket = str(root.path(settings.paths.containerd_socket))
        self.bus = FlowBus()
        self.timeout = settings.policy.step_timeout
        self.restarted = False
        self.cri_class = ImageCri  # the client class; tests put an in-process stand-in here
        self.tx = Transaction(lambda what: report.event(Kind.MIRRORS_STEP, what, step=what))

    async def run(self, skip_pull: bool) -> int:
        plan = self.plan
        self.report.event(Kind.MIRRORS_STARTED, f"moving the registry mirrors of {plan.shown} into "
                          f"{plan.certs_shown}", NOTICE, config=plan.shown, config_path=plan.certs_shown)
        try:
            await self.bus.connect((CONTAINERD,), lambda _unit: None)
        except Exception as err:  # noqa: BLE001 - nothing changed yet: report and refuse
            return self._refused(f"cannot reach systemd over D-Bus: {err}")
        try:
            async with daemon_paused(self.report), self.cri_class(self.socket) as cri:
                try:
                    await self._before(cri, skip_pull)
                    await self._steps(cri)
                except Refused as err:
                    failed = await self.tx.rollback()
                    return self._refused(str(err)) if not failed else self._incomplete(str(err), failed)
                except (Exception, asyncio.CancelledError) as err:  # noqa: BLE001 - every failure rolls back
                    return await self._roll_back(err, cri)
        finally:
            self.bus.close()
        pulled = f"; {plan.verify_image} pulled through it" if plan.verify_image else ""
        self.report.event(Kind.MIRRORS_DONE, f"registry mirrors now live in {plan.certs_shown} "
                          f"({', '.join(h.namespace for h in plan.files + plan.present)}){pulled}; "
                          f"the old {plan.shown} is kept as {plan.backup.name}", NOTICE,
                          config=plan.shown, config_path=plan.certs_shown, backup=plan.backup,
                          image=plan.verify_image or None)
        return EXIT_OK

    async def _before(self, cri: ImageCri, skip_pull: bool) -> None:
        """Read-only: containerd answers and, unless skipped, the check pull works today."""
        try:
            if not self.plan.verify_image and not skip_pull:
                self.plan.verify_image = await choose_image(cri, self.plan.registry)
        except CriError as err:
            raise Refused(f"containerd does not answer over CRI ({err}); nothing changed") from None
        if skip_pull:
            self.plan.verify_image = ""
            self.report.say("--skip-pull-check: the result is verified by CRI Status and its effective config only")
            return
        if not self.plan.verify_image:
            raise Refused("no image of a migrated registry is on this node to verify the migration with a real pull; "
                          "give --verify-image IMAGE (or --skip-pull-check); nothing changed")
        self.report.say(f"pulling {self.plan.verify_image} with the current configuration first")
        try:
            await cri.pull(self.plan.verify_image, PULL_TIMEOUT)
        except CriError as err:
            raise Refused(f"pulling {self.plan.verify_image} fails before any change ({err}); a check after the "
                          "migration would prove nothing: fix the mirror or give another --verify-image; nothing "
                          "changed") from None

    async def _steps(self, cri: ImageCri) -> None:
        plan, tx = self.plan, self.tx
        # Recorded first, undone last: after config.toml is back, containerd must read it again.
        tx.did(f"{CONTAINERD} is restarted to apply the change (and again on any rollback)", self._restart_back)
        for directory in (plan.certs, *(plan.certs / h.namespace for h in plan.files)):
            if not directory.exists():
                ensure_dir(self.guard, directory, mode=0o755)
                tx.did(f"created {directory}", self._rmdir(directory))
        for hosts in plan.files:
            path = plan.hosts_path(hosts)
            atomic_write(self.guard, path, hosts.text.encode(), mode=0o644)
            tx.did(f"wrote {path}", self._remove(path))
        atomic_write(self.guard, plan.backup, plan.old_text.encode(), mode=plan.mode)
        tx.did(f"backed up {plan.shown} to {plan.backup}")
        if plan.dropped:
            self.report.say("comments inside the moved tables go with them (the backup keeps them): "
                            + " | ".join(plan.dropped))
        atomic_write(self.guard, plan.config, plan.new_text.encode(), mode=plan.mode)
        tx.did(f"edited {plan.shown}: mirrors and configs.*.tls removed, config_path set", self._restore_config)
        self.restarted = True
        await self.bus.job("RestartUnit", CONTAINERD, self.timeout)
        if not await self._runtime_ready(cri):
            raise RuntimeError(f"{CONTAINERD} does not answer CRI with RuntimeReady after the restart (see "
                               f"`journalctl -u {CONTAINERD}` for \"failed to load plugin\")")
        tx.did(f"restarted {CONTAINERD}; CRI answers RuntimeReady")
        await self._check_effective(cri)
        if plan.verify_image:
            try:
                ref = await cri.pull(plan.verify_image, PULL_TIMEOUT)
            except CriError as err:
                raise RuntimeError(f"pulling {plan.verify_image} through hosts.toml failed: {err}") from None
            tx.did(f"pulled {plan.verify_image} with the new configuration ({ref})")

    async def _runtime_ready(self, cri: ImageCri) -> bool:
        async def ready() -> bool:
            try:
                return (await cri.status()).runtime_ready
            except CriError:
                return False

        policy = self.settings.policy
        return await wait_until(ready, max(policy.verify_attempts, 30), policy.verify_interval or 1.0)

    async def _check_effective(self, cri: ImageCri) -> None:
        """containerd's own view must agree: 1.x shows its registry config in CRI Status(verbose)
        (what `crictl info` shows), which must name config_path and no mirrors; 2.x shows no
        registry there but lists its deprecations as a Status condition, where the registry ones
        that moved must be gone (configs stays while credentials stay in config.toml)."""
        try:
            info = await cri.status_info()
            deprecations = await cri.deprecations()
        except CriError as err:
            raise RuntimeError(f"CRI Status: {err}") from None
        try:
            registry = json.loads(info.get("config", "{}")).get("registry")
        except (ValueError, AttributeError):
            registry = None
        if isinstance(registry, dict):
            if registry.get("configPath") != (self.plan.registry.config_path or self.plan.certs_shown):
                raise RuntimeError(f"containerd runs with registry configPath {registry.get('configPath')!r}")
            if registry.get("mirrors"):
                raise RuntimeError("containerd still runs with registry mirrors from config.toml")
            self.tx.did(f"containerd's effective config: configPath {registry['configPath']}, no mirrors")
        if deprecations is not None:
            gone = {DEPRECATED_MIRRORS} | (set() if self.plan.kept else {DEPRECATED_CONFIGS})
            if left := sorted(gone & set(deprecations)):
                raise RuntimeError(f"containerd still reports the deprecation(s) {', '.join(left)}")
            self.tx.did("containerd reports no registry mirror deprecation")
        if not isinstance(registry, dict) and deprecations is None:
            self.report.say("containerd's CRI Status shows neither its registry config nor deprecations; "
                            "the pull is the check")

    async def _restart_back(self) -> None:
        if not self.restarted:
            return
        await self.bus.job("RestartUnit", CONTAINERD, self.timeout)
        async with self.cri_class(self.socket) as cri:
            if not await self._runtime_ready(cri):
                raise RuntimeError(f"{CONTAINERD} does not answer CRI after the restart on the old configuration")

    def _remove(self, path: Path):  # type: ignore[no-untyped-def]
        async def undo() -> None:
            remove_file(self.guard, path)
        return undo

    def _rmdir(self, directory: Path):  # type: ignore[no-untyped-def]
        async def undo() -> None:
            directory.rmdir()  # only ever empty again here: what was written in it is removed first
        return undo

    async def _restore_config(self) -> None:
        atomic_write(self.guard, self.plan.config, self.plan.old_text.encode(), mode=self.plan.mode)

    async def _roll_back(self, err: BaseException, cri: ImageCri) -> int:
        reason = failure_reason(err)
        self.report.say(f"failed: {reason}; rolling back")
        failed = await self.tx.rollback()
        if failed:
            return self._incomplete(reason, failed)
        self.report.event(Kind.MIRRORS_ROLLED_BACK, f"mirror migration failed and was rolled back: {reason}", ERR,
                          reason=reason, config=self.plan.shown)
        return EXIT_FAILED

    def _incomplete(self, reason: str, failed: list[str]) -> int:
        self.report.event(Kind.MIRRORS_ROLLBACK_INCOMPLETE, f"mirror migration failed ({reason}) and the rollback "
                          f"is incomplete: {'; '.join(failed)}; the original config is in {self.plan.backup}", ERR,
                          reason="; ".join([reason, *failed]), backup=self.plan.backup)
        return EXIT_NEEDS_OPERATOR

    def _refused(self, reason: str) -> int:
        self.report.event(Kind.MIRRORS_REFUSED, f"refused: {reason}", WARNING, reason=reason)
        return EXIT_REFUSED


async def migrate(settings: Settings, root: HostRoot, dry_run: bool, report: FlowReport,
                  verify_image: str = "", skip_pull: bool = False) -> int:
    if not dry_run and root.base != Path("/"):
        report.event(Kind.MIRRORS_REFUSED, "refused: --root is for --dry-run only; a migration restarts the running "
                     "system's containerd", WARNING, reason="--root without --dry-run")
        return EXIT_REFUSED
    guard = Guard.from_paths(root.path(p) for p in settings.policy.protected_paths)
    try:
        plan = make_plan(settings, root, guard, verify_image)
    except Refused as err:
        report.event(Kind.MIRRORS_REFUSED, f"refused: {err}", WARNING, reason=str(err))
        return EXIT_REFUSED
    if plan is None:
        report.say(f"no deprecated registry mirrors or configs.*.tls in {settings.paths.containerd_config}: "
                   "nothing to migrate")
        return EXIT_OK
    if dry_run:
        report.say(f"plan (dry run, nothing changed) for {plan.shown}:")
        for number, line in enumerate(plan.lines, start=1):
            print(f"  {number}. {line}", file=report.out or sys.stdout)
        return EXIT_OK
    return await Migrate(settings, root, guard, plan, report).run(skip_pull)
