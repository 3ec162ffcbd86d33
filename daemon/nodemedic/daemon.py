"""`nodemedic run`: the resident daemon. One asyncio loop, one queue of events.

sources → detector → engine → repairs; reporters see every transition. Nothing here polls: the
loop sleeps until the journal, D-Bus or inotify has something, or the watchdog is due.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

from nodemedic.config import ConfigError
from nodemedic.config.live import restart_only_changes
from nodemedic.controller import Controller
from nodemedic.detector import conditions
from nodemedic.detector.conditions import Finding, NodeView, Tidy
from nodemedic.detector.detector import Detector
from nodemedic.detector.matcher import Matcher
from nodemedic.engine.engine import Engine
from nodemedic.engine.fleet import FleetGate
from nodemedic.engine.reporting import Fanout
from nodemedic.engine.tidy import Tidier
from nodemedic.hostroot import HostRoot
from nodemedic.probes.cri import CriClient
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedies import CONFIRMS, CONTAINERD, REMEDIES
from nodemedic.report.dbus_api import ApiServer
from nodemedic.report.journal import ERR, INFO, WARNING, Kind, log
from nodemedic.report.metrics import Metrics, MetricsReporter
from nodemedic.report.notify import notify, watchdog_interval
from nodemedic.report.reporters import assemble
from nodemedic.report.status import StatusReporter, status_text
from nodemedic.runconfig import Loaded, load
from nodemedic.safety import Guard, UnsafeOperation
from nodemedic.sources.events import Event, JournalLine, PathChanged, SourceTrouble, UnitChanged
from nodemedic.sources.journal import JournalSource
from nodemedic.sources.paths import PathSource
from nodemedic.sources.systemd_bus import SystemdBus
from nodemedic.sources.units import UnitSource
from nodemedic.state import StateStore

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
        self.reporters = Fanout()
        self.engine = Engine(self.ctx, self.store, REMEDIES, CONFIRMS, reporters=self.reporters,
                             fleet=FleetGate(lambda: self.ctx.settings.fleet))  # issue 15's fleet guard
        self.tidier = Tidier(self.engine)  # the conditions' changes to the node, through the engine's gate
        self.controller = Controller(self)
        self.api = ApiServer(self.controller)
        self.metrics_reporter = MetricsReporter(self.metrics, self.engine,
                                                lambda: (self.journal.entries_read, self.detector.hit_counts))
        self.status = StatusReporter(lambda: status_text(self.engine, self.root, len(self.loaded.catalogue.signatures)))
        self.reporters.reporters[:] = assemble(self.metrics_reporter, self.status, self.api)
        # The non-log detectors: each declares what it watches (detector/conditions/).
        self.path_conditions, self.unit_conditions = conditions.registered()
        self.journal = JournalSource(settings.daemon.units, self.queue, state_dir / "journal.cursor", self.guard,
                                     settings.journal.batch_size, settings.journal.replay_window,
                                     settings.journal.replay_grace, on_drained=self.journal_drained,
                                     prefilter=self.detector.matcher)
        self.units = UnitSource(settings.daemon.units, self.queue, self.bus)
        self.paths = PathSource({c.name: c.path(settings, root) for c in self.path_conditions}, self.queue)
        self.stopping = asyncio.Event()
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
        self.look_at_paths()
        self.engine.resume()
        for sig, handler in ((signal.SIGTERM, self.stopping.set), (signal.SIGINT, self.stopping.set),
                             (signal.SIGHUP, self.reload_task)):
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
                self.status.forget_sent()  # STATUS=reloading was sent in between: always send the status again
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

    def reload_task(self) -> None:
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

    def view(self) -> NodeView:
        return NodeView(self.ctx.settings, self.root, self.ctx.state, CONTAINERD)

    def dispatch(self, event: Event) -> None:
        if isinstance(event, JournalLine):
            for suspicion in self.detector.journal_line(event):
                self.engine.suspect(suspicion)
        elif isinstance(event, UnitChanged):
            view = self.view()
            for condition in self.unit_conditions:
                if event.unit in condition.units(view):
                    self._act(condition.check(event, view))
        elif isinstance(event, PathChanged):
            for condition in self.path_conditions:
                if condition.name == event.watch:
                    self._act(condition.check(self.view()))
        elif isinstance(event, SourceTrouble):
            log(Kind.SOURCE_TROUBLE, f"{event.source}: {event.detail}; retrying", WARNING, source=event.source)

    def look_at_paths(self) -> None:
        """Look at every path condition (at start, and when the operator resumes)."""
        for condition in self.path_conditions:
            self._refusable(f"checking {condition.name}", lambda c=condition: self._act(c.check(self.view())))

    def _act(self, findings: list[Finding]) -> None:
        """Hand a condition's findings to the engine, in order: a change the safety module
        refuses is reported and the findings after it still go."""
        for finding in findings:
            if isinstance(finding, Tidy):
                self._refusable(finding.what, lambda tidy=finding: self.tidier.request(tidy))
            else:
                self.engine.suspect(finding)

    def journal_drained(self, moved: bool) -> None:
        if moved:  # a wake-up for another unit's entry changes nothing worth writing
            self.metrics_reporter.on_change()

    def _api_trouble(self, detail: str) -> None:
        log(Kind.SOURCE_TROUBLE, detail, WARNING, source="api")

    def update_status(self) -> None:
        """Bring every view (the metrics file, STATUS=) up to date."""
        self.reporters.on_change()


def config_warning(message: str) -> None:
    log(Kind.CONFIG_REJECTED, message, WARNING)


def run(root: HostRoot) -> int:
    try:
        loaded = load(root, config_warning)
    except ConfigError as err:
        for problem in err.problems:
            log(Kind.CONFIG_REJECTED, f"cannot start: {problem}", ERR)
        notify(f"STATUS=cannot start: configuration invalid: {err.problems[0] if err.problems else ''}")
        return EX_CONFIG
    return asyncio.run(Daemon(root, loaded).run())
