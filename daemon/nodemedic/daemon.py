"""`nodemedic run`: the resident daemon. One asyncio loop, one queue of events.

sources → detector → engine → repairs; reporters see every transition. Nothing here polls: the
loop sleeps until the journal, D-Bus or inotify has something, or the watchdog is due.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
from collections.abc import Callable
from typing import Any

from nodemedic.config import ConfigError
from nodemedic.config.live import restart_only_changes
from nodemedic.detector import conditions
from nodemedic.detector.detector import Detector, Suspicion
from nodemedic.detector.matcher import Matcher
from nodemedic.doctor import plan_for
from nodemedic.engine.engine import Engine
from nodemedic.engine.fleet import FleetGate
from nodemedic.hostroot import HostRoot
from nodemedic.probes.cri import CriClient
from nodemedic.problems import problem_class
from nodemedic.repairs import cni
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.ingest import INGEST
from nodemedic.repairs.remedies import CONFIRMS, CONTAINERD, REMEDIES
from nodemedic.report.dbus_api import ApiServer, RefusedError
from nodemedic.report.journal import ERR, INFO, NOTICE, WARNING, Kind, log
from nodemedic.report.metrics import Metrics
from nodemedic.report.notify import notify, watchdog_interval
from nodemedic.runconfig import Loaded, load
from nodemedic.safety import Guard, UnsafeOperation
from nodemedic.sources.events import Event, JournalLine, PathChanged, SourceTrouble, UnitChanged
from nodemedic.sources.journal import JournalSource
from nodemedic.sources.paths import PathSource
from nodemedic.sources.systemd_bus import SystemdBus
from nodemedic.sources.units import UnitSource
from nodemedic.state import ACTIVE, Phase, StateStore

QUEUE_LIMIT = 4096  # the journal source waits when the detector falls behind, it never drops
# sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus=78 leaves a daemon that cannot start
# for its configuration failed, with the reason in the journal, instead of restarting it for ever.
EX_CONFIG = 78


class Daemon:
    def __init__(self, root: HostRoot, loaded: Loaded) -> None:
        self.root = root
        self.loaded = loaded
        settings = loaded.settings
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_LIMIT)
        self.detector = Detector(Matcher(loaded.catalogue.signatures))
        self.guard = Guard.from_paths(root.path(p) for p in settings.policy.protected_paths)
        state_dir = root.path(settings.daemon.state_dir)
        self.store = StateStore(state_dir / "state.json", self.guard)
        self.bus = SystemdBus()
        self.ctx = RepairContext(settings, root, self.guard, self.bus,
                                 CriClient(str(root.path(settings.paths.containerd_socket))), self.store.load())
        textfile = settings.metrics.textfile
        self.metrics = Metrics(root.path(textfile) if textfile else None, self.guard, loaded.metrics_dir_configured)
        self.api = ApiServer(self)
        self.engine = Engine(self.ctx, self.store, REMEDIES, CONFIRMS, on_change=self.update_status,
                             on_step=self.metrics.step_finished, on_transition=self.api.problem_changed,
                             fleet=FleetGate(lambda: self.ctx.settings.fleet))  # issue 15's fleet guard
        self.journal = JournalSource(settings.daemon.units, self.queue, state_dir / "journal.cursor", self.guard,
                                     settings.journal.batch_size, settings.journal.replay_window,
                                     settings.journal.replay_grace, on_drained=self.journal_drained,
                                     prefilter=self.detector.matcher)
        self.units = UnitSource(settings.daemon.units, self.queue, self.bus)
        self.paths = PathSource({
            "cni_conf_dir": root.path(settings.paths.cni_conf_dir),
            "containerd_root": root.path(settings.paths.containerd_root),
            "ingest_dir": root.path(settings.paths.containerd_root).joinpath(*INGEST),
        }, self.queue)
        self.stopping = asyncio.Event()
        self._status = ""
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        self._refusals: set[str] = set()  # refused operations already reported

    # -- life cycle ---------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Whatever escapes a callback or a task is reported in the journal, never lost on stderr.
        loop.set_exception_handler(self._loop_exception)
        notify("STATUS=starting: opening the journal")
        try:
            self.store.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # a read-only state dir: the first write reports it, and the daemon runs degraded
        self.journal.open()
        self.paths.open()
        notify("STATUS=starting: subscribing to systemd over D-Bus")
        units_task = loop.create_task(self.units.run())
        api_task = loop.create_task(self.api.run(self._api_trouble))
        await self.units.ready.wait()
        await self.api.ready.wait()
        self._refusable("checking the CNI config dir", self._check_cni_dir)
        self._refusable("checking the ingest dir", self._check_ingest_dir)
        self.engine.resume()
        for sig, handler in ((signal.SIGTERM, self.stopping.set), (signal.SIGINT, self.stopping.set),
                             (signal.SIGHUP, self.api_reload_task)):
            loop.add_signal_handler(sig, handler)
        self._arm_watchdog()
        log(Kind.STARTED, f"nodemedic started: watching {', '.join(self.ctx.settings.daemon.units)}; "
            f"{len(self.loaded.catalogue.signatures)} signatures; mode {self.ctx.settings.daemon.mode}", INFO)
        self.update_status()
        notify("READY=1")
        consumer = loop.create_task(self._consume())
        await self.stopping.wait()
        notify("STOPPING=1", "STATUS=stopping")
        log(Kind.STOPPING, "nodemedic stopping", INFO)
        consumer.cancel()
        units_task.cancel()
        api_task.cancel()
        self.engine.cancel()
        await asyncio.gather(consumer, units_task, api_task, return_exceptions=True)
        self.api.close()
        await self.engine.idle()
        self.engine.fleet.close()
        self.journal.close()
        self.paths.close()
        self.bus.close()
        await self.ctx.cri.close()
        return 0

    def _arm_watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        loop = asyncio.get_running_loop()

        def ping() -> None:
            # Sent from the loop itself: a wedged loop stops the pings and systemd restarts us.
            notify("WATCHDOG=1")
            loop.call_later(interval, ping)

        ping()

    async def reload(self) -> tuple[bool, list[str]]:
        """Validate, then swap everything the daemon acts on; on any error keep the old
        configuration and say why. (reloaded?, what was applied or why not)"""
        async with self._reload_lock:
            # MONOTONIC_USEC: Type=notify-reload (systemd >= 253) only counts a RELOADING=1 sent
            # after its signal; systemd 252 ignores the field.
            notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                   "STATUS=reloading configuration")
            try:
                outcome = self._reload()
            except Exception as err:  # a reload never leaves the unit "reloading" nor the daemon half-swapped
                outcome = False, [f"reload failed, keeping the old configuration: {err!r}"]
                log(Kind.CONFIG_REJECTED, outcome[1][0], ERR)
            finally:
                self._status = ""  # STATUS=reloading was sent in between: always send the status again
                notify("READY=1")
                self.update_status()
            return outcome

    def _reload(self) -> tuple[bool, list[str]]:
        try:
            fresh = load(self.root, config_warning)
        except ConfigError as err:
            reasons = [str(problem) for problem in err.problems]
        else:
            # What cannot change while running is refused, not half-applied: `config show` must
            # never list a value the daemon does not act on.
            reasons = [f"{origin}: {key} changed: {why}; restart nodemedic to apply it"
                       for key, origin, why in restart_only_changes(self.loaded.config, fresh.config)]
        if reasons:
            for reason in reasons:
                log(Kind.CONFIG_REJECTED, f"configuration rejected, keeping the old one: {reason}", ERR)
            return False, reasons
        self._swap(fresh)
        message = (f"configuration reloaded: {len(fresh.catalogue.signatures)} signatures, "
                   f"mode {fresh.settings.daemon.mode}")
        log(Kind.CONFIG_RELOADED, message, INFO)
        self.engine.retry_after_reload()
        return True, [message]

    def _swap(self, fresh: Loaded) -> None:
        settings = fresh.settings
        # The guard is built from policy.protected_paths: every holder gets the new one, so the
        # next file operation of any step, the state store, metrics or the cursor honours it.
        guard = Guard.from_paths(self.root.path(p) for p in settings.policy.protected_paths)
        self.guard = self.ctx.guard = self.store.guard = self.metrics.guard = self.journal.guard = guard
        self.loaded = fresh
        self.ctx.settings = settings
        self.journal.batch_size = settings.journal.batch_size
        self.detector = Detector(Matcher(fresh.catalogue.signatures))
        self.journal.prefilter = self.detector.matcher

    def api_reload_task(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    # -- events -------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                self._refusable(f"handling {type(event).__name__}", lambda event=event: self.dispatch(event))
            except Exception as err:  # one bad event must never take the daemon down
                log(Kind.SOURCE_TROUBLE, f"failed to handle {type(event).__name__}: {err}", ERR)

    def _refusable(self, what: str, action: Callable[[], None]) -> None:
        """Run `action`; a change the safety module refuses is reported (once per refusal), never
        raised: a protected path is the operator's word, not a reason to crash or restart."""
        try:
            action()
        except UnsafeOperation as err:
            self._refused(what, err)

    def _refused(self, what: str, err: UnsafeOperation) -> None:
        if str(err) not in self._refusals:
            self._refusals.add(str(err))
            log(Kind.OPERATION_REFUSED, f"{what}: refused: {err}", WARNING, reason=str(err))

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        err = context.get("exception")
        if isinstance(err, UnsafeOperation):
            self._refused("a background task", err)
            return
        detail = f"{type(err).__name__}: {err}" if err is not None else str(context.get("message"))
        log(Kind.TASK_FAILED, f"unhandled in the event loop: {context.get('message', '')}: {detail}", ERR,
            error=detail)

    def dispatch(self, event: Event) -> None:
        if isinstance(event, JournalLine):
            for suspicion in self.detector.journal_line(event):
                self.engine.suspect(suspicion)
        elif isinstance(event, UnitChanged):
            suspicion = conditions.unit_condition(event, CONTAINERD)
            if suspicion is not None:
                self.engine.suspect(suspicion)
            exhausted = {p for p, r in self.ctx.state.problems.items() if r.phase == Phase.EXHAUSTED}
            for suspicion in conditions.unit_recovered(event, CONTAINERD, exhausted):
                self.engine.suspect(suspicion)
        elif isinstance(event, PathChanged):
            if event.watch == "cni_conf_dir":
                self._check_cni_dir()
            elif event.watch == "ingest_dir":
                self._check_ingest_dir()
        elif isinstance(event, SourceTrouble):
            log(Kind.SOURCE_TROUBLE, f"{event.source}: {event.detail}; retrying", WARNING, source=event.source)

    def _check_cni_dir(self) -> None:
        real, suspicion = conditions.cni_conf_dir(self.ctx.settings, self.root)
        if real and not self.ctx.state.real_cni_seen:
            self.ctx.state.real_cni_seen = True
            self.engine.save()
        if real:
            try:
                removed = cni.remove_placeholder_if_superseded(self.ctx)
            except UnsafeOperation as err:  # a protected conf dir: report, and go on checking
                self._refused("removing the superseded placeholder CNI config", err)
                removed = None
            if removed is not None:
                log(Kind.PLACEHOLDER_REMOVED, f"removed placeholder CNI config {removed}: a real config exists",
                    NOTICE, path=removed)
                self.update_status()
        record = self.ctx.state.problems.get("cni-config-missing")
        if real and record is not None and record.phase == Phase.EXHAUSTED:
            # A config appeared while the problem waits for an operator: look again, so that it
            # clears once CRI says the network is ready.
            suspicion = Suspicion("cni-config-missing", "path:cni_conf_dir", detail="a CNI config appeared")
        if suspicion is not None:
            self.engine.suspect(suspicion)

    def _check_ingest_dir(self) -> None:
        suspicion = conditions.ingest_dir(self.ctx.settings, self.root)
        if suspicion is not None:
            self.engine.suspect(suspicion)

    # -- the operator's D-Bus API (report/dbus_api.py) ----------------------------------

    def _api_trouble(self, detail: str) -> None:
        log(Kind.SOURCE_TROUBLE, detail, WARNING, source="api")

    def _known_problem(self, problem: str) -> None:
        # A problem a signature names without a ladder (report-only) is known too: it has a
        # record to forget and a plan ("would not repair: ...") to show.
        known = frozenset(REMEDIES) | self.loaded.catalogue.problems | frozenset(self.ctx.state.problems)
        if problem not in known:
            raise RefusedError("UnknownProblem", f"unknown problem {problem!r}; known: {', '.join(sorted(known))}")

    def api_state(self) -> str:
        return self._state_text()

    def api_mode(self) -> str:
        return "paused" if self.engine.gate.paused else self.ctx.settings.daemon.mode

    def api_problems(self) -> list[list[object]]:
        return [[r.problem, r.phase.value, r.step_name, r.attempts, int(r.last_change), r.detail]
                for r in sorted(self.ctx.state.problems.values(), key=lambda r: r.problem)]

    def api_details(self) -> str:
        """Problems() with what a Node condition's message says: class, step i of n, attempts
        and budget (JSON, read by nodemedic-kube.service)."""
        settings = self.ctx.settings
        details = []
        for r in sorted(self.ctx.state.problems.values(), key=lambda r: r.problem):
            remedy = REMEDIES.get(r.problem)
            details.append({
                "problem": r.problem, "class": problem_class(r.problem).value, "phase": r.phase.value,
                "step": r.step_name, "step_index": r.step + 1 if r.step_name else 0,
                "steps": len(remedy.steps) if remedy is not None else 0,
                "attempts": r.attempts, "budget": settings.attempt_budget(r.problem),
                "last_change": r.last_change, "detail": r.detail,
            })
        return json.dumps({"paused": self.engine.gate.paused, "problems": details})

    def api_pause(self) -> None:
        # Kept in state.json: a daemon restarted (SIGKILL, a repoint or join flow's restart) is
        # still paused. Without persistence the pause holds only until a restart: reported.
        self.engine.gate.paused = True
        saved = self.engine.save()
        log(Kind.PAUSED, "paused by the operator: observing only until resumed"
            + ("" if saved else " (NOT saved: a restart of the daemon forgets this pause)"), NOTICE)
        self.update_status()

    def api_resume(self) -> None:
        self.engine.gate.paused = False
        self.engine.save()
        log(Kind.RESUMED, "resumed by the operator: repairing again", NOTICE)
        self.update_status()
        self.engine.retry_held()
        self._refusable("checking the CNI config dir", self._check_cni_dir)

    def api_check(self, member: str, args: list[object]) -> None:
        """Refuse a call that cannot be done, with a reason, before anything changes."""
        if member in ("Repair", "Plan", "Forget"):
            problem = str(args[0]) if args else ""
            self._known_problem(problem)
            if member == "Repair" and self.engine.gate.paused:
                raise RefusedError("Paused", "nodemedic is paused; `nodemedic resume` first")
            if member in ("Repair", "Forget") and self.engine.running(problem):
                raise RefusedError("Busy", f"{problem} is already being handled; wait for it to finish")

    def api_repair(self, problem: str) -> str:
        self.engine.repair_now(problem)
        return f"repair of {problem} started"

    def api_plan(self, problem: str) -> list[str]:
        return plan_for(self.ctx, problem, forced=True)

    def api_forget(self, problem: str) -> None:
        self.engine.forget(problem)
        self.detector.forget(problem)

    async def api_reload(self) -> tuple[bool, list[str]]:
        return await self.reload()

    # -- status -------------------------------------------------------------------------

    def journal_drained(self, moved: bool) -> None:
        if moved:  # a wake-up for another unit's entry changes nothing worth writing
            self.update_metrics()

    def update_metrics(self) -> None:
        self.metrics.update(self.ctx.state.problems.values(), self.journal.entries_read, self.detector.hit_counts,
                            state_save_failing=bool(self.engine.persist_error))

    def update_status(self) -> None:
        self.update_metrics()
        status = self._state_text()
        if status != self._status:
            self._status = status
            notify(f"STATUS={status}")

    def _state_text(self) -> str:
        settings = self.ctx.settings
        watching = f"watching {', '.join(settings.daemon.units)}; {len(self.loaded.catalogue.signatures)} signatures"
        records = self.ctx.state.problems.values()
        current = self.engine.current
        if current is not None:
            problem, number, total, name = current
            state = f"repairing {problem}: step {number}/{total} ({name})"
        elif active := [r for r in records if r.phase in ACTIVE]:
            state = "; ".join(f"{r.problem} {r.phase}" for r in active)
        elif exhausted := [r for r in records if r.phase == Phase.EXHAUSTED]:
            state = "needs an operator: " + ", ".join(f"{r.problem} exhausted" for r in exhausted)
        else:
            state = "healthy"
        placeholder = self.root.path(settings.paths.cni_conf_dir) / settings.cni.placeholder_file
        if _is_regular_file(placeholder):
            state += "; placeholder CNI config active (real network not yet configured)"
        for problem, reason in sorted(self.engine.fleet.holds.items()):  # the fleet guard's hold
            state += f"; {problem}: {reason}"
        if self.engine.persist_error:
            state += f"; state not saved ({self.engine.persist_error}): non-idempotent steps held back"
        if settings.daemon.mode == "observe":
            state += "; observe mode"
        if self.engine.gate.paused:
            state += "; paused by the operator"
        return f"{watching}; {state}"


def config_warning(message: str) -> None:
    log(Kind.CONFIG_REJECTED, message, WARNING)


def _is_regular_file(path: os.PathLike[str]) -> bool:
    """Judged by lstat: our placeholder is a regular file we wrote; a symlink at its name (to
    another network's config, say) is not it."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def run(root: HostRoot) -> int:
    try:
        loaded = load(root, config_warning)
    except ConfigError as err:
        for problem in err.problems:
            log(Kind.CONFIG_REJECTED, f"cannot start: {problem}", ERR)
        notify(f"STATUS=cannot start: configuration invalid: {err.problems[0] if err.problems else ''}")
        return EX_CONFIG
    return asyncio.run(Daemon(root, loaded).run())
