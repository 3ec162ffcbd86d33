"""The remedy engine: idle → suspected → confirmed → repairing(i) → verifying → healed, or up the
ladder, or exhausted. Every transition is persisted before the step it announces runs.

Without persistence (a state write failed: a read-only or immutable state file) the engine goes
on, degraded and reported once: only idempotent steps run, because a step that must never be
repeated cannot be known to have run after a restart; the others are held back until a write
succeeds again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, stop_after_delay, wait_exponential, wait_fixed

from nodemedic.detector.detector import Suspicion
from nodemedic.engine.fleet import FleetGate
from nodemedic.engine.policy import Gate
from nodemedic.engine.reporting import Fanout, StepFinished, Transition
from nodemedic.journal import ERR, NOTICE, WARNING, Kind, log
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedies import Probe
from nodemedic.repairs.step import NoUndo, Remedy, Step, StepClass
from nodemedic.safety import UnsafeOperation
from nodemedic.state import Phase, ProblemRecord, StateStore

PERSISTENCE_HOLD = "state cannot be saved"
SOON_FIRST = 0.01  # seconds before a suspicion is looked at again the first time; doubled each time


class PersistenceError(RuntimeError):
    """The state store could not be written: what a step would record cannot be relied on."""


class _RecordedUndo:
    """A step's undo log: entries live in its problem's record, saved before the step acts."""

    def __init__(self, engine: Engine, record: ProblemRecord) -> None:
        self.engine = engine
        self.record = record

    def will_stop(self, unit: str) -> None:
        if unit not in self.record.undo:
            self.record.undo.append(unit)
        if not self.engine.save():
            self.record.undo.remove(unit)
            raise PersistenceError(f"not stopping {unit}: {PERSISTENCE_HOLD} ({self.engine.persist_error})")

    def started(self, unit: str) -> None:
        if unit in self.record.undo:
            self.record.undo.remove(unit)
            self.engine.save()


class Engine:
    def __init__(self, ctx: RepairContext, store: StateStore, remedies: Mapping[str, Remedy],
                 confirms: Mapping[str, Probe], reporters: Fanout | None = None,
                 fleet: FleetGate | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.remedies = remedies
        self.confirms = confirms
        # journal, sd_notify status, D-Bus signals, metrics: assembled by the daemon (report/reporters.py)
        self.reporters = reporters if reporters is not None else Fanout()
        self.gate = Gate(ctx)
        self.fleet = fleet or FleetGate()  # the fleet guard (engine/fleet.py); off unless fleet.enabled
        self._repair_lock = asyncio.Lock()  # one repair at a time on the node
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: dict[str, Suspicion] = {}  # news that arrived while the problem was being checked
        self.current: tuple[str, int, int, str] | None = None  # problem, step no., ladder length, name
        self.persist_error = ""  # why the last state write failed; "" while writes succeed

    # -- entry points -------------------------------------------------------------------

    def suspect(self, suspicion: Suspicion) -> None:
        task = self._tasks.get(suspicion.problem)
        if task is not None and not task.done():
            # Already being handled; the running episode will see the result. An exhausted
            # problem's check may have looked just before the news (a unit running again), so
            # it looks once more when it is done.
            record = self.ctx.state.problems.get(suspicion.problem)
            if record is not None and record.phase == Phase.EXHAUSTED:
                self._again[suspicion.problem] = suspicion
            return
        task = self._start(suspicion.problem, self._handle(suspicion))
        task.add_done_callback(lambda _task: self._look_again(suspicion.problem))

    def _start(self, problem: str, episode: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(episode)
        task.add_done_callback(lambda done: self._task_done(problem, done))
        self._tasks[problem] = task
        return task

    def _task_done(self, problem: str, task: asyncio.Task[None]) -> None:
        """An episode's task never dies silently: an exception is reported, and the problem is
        not left "repairing" forever (it ends exhausted, for an operator, with the reason)."""
        if task.cancelled() or task.exception() is None:
            return
        err = task.exception()
        reason = f"internal error: {type(err).__name__}: {err}"
        log(Kind.TASK_FAILED, f"{problem}: the engine's task failed: {type(err).__name__}: {err}", ERR,
            problem=problem, error=f"{type(err).__name__}: {err}")
        record = self.ctx.state.problems.get(problem)
        if self.current is not None and self.current[0] == problem:
            self.current = None
        if record is not None and record.phase not in (Phase.IDLE, Phase.HEALED, Phase.EXHAUSTED):
            try:
                self._exhaust(record, reason)
            except Exception as again:  # noqa: BLE001 - reported; nothing else may escape a callback
                log(Kind.TASK_FAILED, f"{problem}: could not record the failure: {again}", ERR, problem=problem)

    def _look_again(self, problem: str) -> None:
        suspicion = self._again.pop(problem, None)
        if suspicion is not None:
            self.suspect(suspicion)

    def running(self, problem: str) -> bool:
        """A step of the problem is being applied or verified. Before that (confirming, waiting
        for the one repair slot) and in an exhausted problem's "has it cleared?" look, its task
        only probes: an operator's forget or repair cancels it instead of being refused as busy."""
        task = self._tasks.get(problem)
        record = self.ctx.state.problems.get(problem)
        return (task is not None and not task.done() and record is not None
                and record.phase in (Phase.REPAIRING, Phase.VERIFYING))

    def _cancel_probing(self, problem: str) -> None:
        task = self._tasks.get(problem)
        if task is not None and not task.done() and not self.running(problem):
            self._again.pop(problem, None)
            del self._tasks[problem]
            task.cancel()

    def repair_now(self, problem: str) -> None:
        """The operator's on-demand repair: no cooldown, and an exhausted problem starts over."""
        self._cancel_probing(problem)
        record = self.ctx.state.record(problem)
        record.not_before, record.healed_by = 0.0, ""
        if record.phase in (Phase.EXHAUSTED, Phase.HEALED):
            record.move(Phase.IDLE, "repair requested by the operator")
        record.episodes = 0
        self.save()
        self.suspect(Suspicion(problem, "operator", detail="repair requested by the operator", forced=True))

    def retry_held(self) -> None:
        """After a resume: look again at every problem that was confirmed but held back."""
        for record in list(self.ctx.state.problems.values()):
            if record.phase == Phase.CONFIRMED:
                self.suspect(Suspicion(record.problem, "resume", detail="re-checked after resume"))

    def retry_after_reload(self) -> None:
        """A reload may have lifted what stopped a ladder (allow_destructive, a larger budget):
        those problems start a new episode. Nothing else is re-tried: a reload that changed
        nothing must not restart a unit."""
        settings = self.ctx.settings
        for record in list(self.ctx.state.problems.values()):
            if record.phase != Phase.EXHAUSTED:
                continue
            lifted = ("destructive steps are off" in record.detail and settings.policy.allow_destructive) or (
                "attempt budget of" in record.detail and record.attempts < settings.attempt_budget(record.problem))
            if lifted:
                self._restart_held(record, "the policy that stopped the ladder changed at reload",
                                   "re-checked after a reload lifted its hold", "reload")

    def _restart_held(self, record: ProblemRecord, why: str, detail: str, trigger: str) -> None:
        self._cancel_probing(record.problem)
        record.move(Phase.IDLE, why)
        self.save()
        self.suspect(Suspicion(record.problem, trigger, detail=detail))

    def forget(self, problem: str) -> None:
        self._cancel_probing(problem)
        self.ctx.state.problems.pop(problem, None)
        self.save()
        self.reporters.on_transition(None, Transition(problem, Phase.IDLE, "forgotten by the operator"))

    def resume(self) -> None:
        """After a restart: undo what an interrupted step stopped, then verify the step; a step
        that is not idempotent is never applied again."""
        for record in list(self.ctx.state.problems.values()):
            if record.phase in (Phase.REPAIRING, Phase.VERIFYING) and record.problem in self.remedies:
                self._start(record.problem, self._resume(record))
            elif record.undo:
                # Stopped units without a step to resume (its ladder is gone): start them anyway.
                self._start(record.problem, self._restore_only(record))
            elif record.phase in (Phase.SUSPECTED, Phase.CONFIRMED):
                record.move(Phase.IDLE, "daemon restarted before a repair began")
        self.save()

    async def idle(self) -> None:
        """Wait for every running episode (tests and shutdown)."""
        while running := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.gather(*running, return_exceptions=True)

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    # -- the state machine --------------------------------------------------------------

    async def _handle(self, suspicion: Suspicion) -> None:
        record = self.ctx.state.record(suspicion.problem)
        now = time.time()
        if record.phase in (Phase.REPAIRING, Phase.VERIFYING):
            return  # a step is in flight (or being resumed); its own task finishes the episode
        exhausted = record.phase == Phase.EXHAUSTED
        healed = record.phase == Phase.HEALED
        if healed and now - record.last_change >= self.ctx.settings.policy.quiet_period:
            record.episodes = 0  # quiet long enough: the next episode starts without cooldown
        if healed and not (suspicion.forced or suspicion.live) and await self._healthy_now(suspicion.problem):
            return  # a late line about the outage just healed: the probe says it is still healed
        if exhausted:
            # Not "is it broken?" but "has it cleared?": the component may need a moment to catch
            # up with the news (containerd reloading a CNI config that just appeared).
            if await self._retry_until(lambda: self._healthy_now(suspicion.problem)):
                self._transition(record, Phase.IDLE, Kind.NOT_CONFIRMED, "cleared; live probe is healthy again")
            return  # still broken: it waits for the operator or for the probe to clear
        record.trigger, record.trigger_cursor = suspicion.trigger, suspicion.cursor
        self._transition(record, Phase.SUSPECTED, Kind.SUSPECTED, suspicion.detail or suspicion.trigger)
        if not await self._confirm(suspicion.problem):
            self._transition(record, Phase.IDLE, Kind.NOT_CONFIRMED, "live probe says healthy; no action")
            return
        self._transition(record, Phase.CONFIRMED, Kind.CONFIRMED, "confirmed by live probe"
                         if suspicion.problem in self.confirms else "confirmed by its signature's threshold")
        remedy = self.remedies.get(suspicion.problem)
        refusal = self.gate.refuse_episode(record, remedy, suspicion.forced)
        if refusal:
            log(Kind.HELD_BACK, f"{record.problem}: not repairing: {refusal}", NOTICE,
                problem=record.problem, reason=refusal)
            record.detail = refusal
            self.save()
            return
        assert remedy is not None
        waited = self._repair_lock.locked()
        async with self._repair_lock:
            # Another problem's repair ran meanwhile (one at a time) and may have fixed this one
            # too: a crash loop healed by moving a corrupt root aside needs no second move.
            if waited and await self._healthy_now(suspicion.problem):
                self._transition(record, Phase.IDLE, Kind.NOT_CONFIRMED, "cleared while another repair ran")
                return
            record.attempts = 0
            await self._climb(record, remedy, 0, suspicion)

    async def _resume(self, record: ProblemRecord) -> None:
        remedy = self.remedies[record.problem]
        step = remedy.steps[record.step]
        # Killed during apply (not during verification): the step may be half done.
        interrupted = record.phase == Phase.REPAIRING
        async with self._repair_lock:
            await self._restore(record)  # a half-done step's stopped units are started first
            log(Kind.STEP_STARTED, f"{record.problem}: resuming after restart by verifying {step.name}", NOTICE,
                problem=record.problem, step=step.name, resumed=1)
            self._transition(record, Phase.VERIFYING, None, f"verifying {step.name} after restart")
            if await self._verify(step):
                self._finish_step(record, step, "ok", resumed=True)
                self._heal(record)
                return
            self._finish_step(record, step, "failed", resumed=True)
            # Step.idempotent: an idempotent step cut off mid-apply may simply not have finished,
            # and applying it again is harmless, so it gets its turn again (within the budget);
            # any other step is never re-applied: the ladder climbs past it.
            again = interrupted and step.idempotent
            await self._climb(record, remedy, record.step if again else record.step + 1, resumed=True)

    async def _restore_only(self, record: ProblemRecord) -> None:
        async with self._repair_lock:
            await self._restore(record)

    async def _restore(self, record: ProblemRecord) -> None:
        """Start again, in reverse order of stopping (containerd before kubelet), the units an
        interrupted or failed step stopped; each outcome is reported. The log is cleared after
        one attempt either way: a unit that will not start is an operator's business, and a
        restore must not loop."""
        if not record.undo:
            return
        for unit in reversed(record.undo):
            try:
                # A stopped unit may carry a crash loop's failed state or start-limit count.
                await self.ctx.bus.reset_failed(unit)
                result = await self.ctx.bus.unit_job("StartUnit", unit, self.ctx.settings.policy.step_timeout)
            except Exception as err:  # noqa: BLE001 - reported; the others are still started
                result = f"{type(err).__name__}: {err}"
            ok = result == "done"
            log(Kind.RESTORED, f"{record.problem}: {'started' if ok else 'could not start'} {unit}, stopped by the "
                f"interrupted step {record.step_name}" + ("" if ok else f": {result}"), NOTICE if ok else ERR,
                problem=record.problem, step=record.step_name, unit=unit, result="ok" if ok else "failed")
        record.undo.clear()
        self.save()

    async def _climb(self, record: ProblemRecord, remedy: Remedy, start: int, suspicion: Suspicion | None = None,
                     resumed: bool = False) -> None:
        budget = self.ctx.settings.attempt_budget(record.problem)
        applied = start > 0 or resumed
        forced = suspicion is not None and suspicion.forced
        for index in range(start, len(remedy.steps)):
            step = remedy.steps[index]
            refusal = self.gate.refuse_step(step)
            if refusal:
                self._exhaust(record, f"next step {step.name} held back: {refusal}")
                return
            if record.attempts >= budget:
                self._exhaust(record, f"attempt budget of {budget} used")
                return
            try:
                needed = await step.needed(self.ctx)
            except Exception as err:  # a probe failing must not kill the episode
                needed, _ = True, err
            if not needed:
                continue
            if not applied and not forced and suspicion is not None and self._cooling(record, step, suspicion):
                return
            if step.klass != StepClass.SAFE:  # the fleet guard: a slot first (released in _finish_step / _transition)
                await self.fleet.wait(record.problem, step.name,
                                      lambda why, step=step: self._fleet_held(record, step, why), self._repair_lock)
            held = self.gate.refuse_next_step(record, forced)
            if held:
                # Paused, switched to observe or the problem disabled while a step ran (or a daemon
                # resuming one): nothing more is applied. Held as confirmed, as an episode refused
                # at its start is, so that `nodemedic resume` (retry_held) or the next sign of the
                # fault looks at it again.
                self.current = None
                self._transition(record, Phase.CONFIRMED, Kind.HELD_BACK, f"next step {step.name} held back: {held}")
                self.save()  # on disk too: a restart must not resume (verify) the step before it again
                return
            if not step.idempotent and self.persist_error:
                self._exhaust(record, f"next step {step.name} held back: {PERSISTENCE_HOLD} ({self.persist_error}); "
                              "a step that is not idempotent runs only where its progress is recorded")
                return
            record.step, record.step_name = index, step.name
            record.attempts += 1
            applied = True
            self.current = (record.problem, index + 1, len(remedy.steps), step.name)
            saved = self._transition(record, Phase.REPAIRING, None,
                                     f"step {index + 1}/{len(remedy.steps)}: {step.name}")
            if not saved and not step.idempotent:
                record.attempts -= 1
                self._exhaust(record, f"step {step.name} held back: {PERSISTENCE_HOLD} ({self.persist_error}); "
                              "a step that is not idempotent runs only where its progress is recorded")
                return
            log(Kind.STEP_STARTED, f"{record.problem}: step {index + 1}/{len(remedy.steps)} {step.name} "
                f"({step.klass})", NOTICE, problem=record.problem, step=step.name, step_class=step.klass,
                signature=record.trigger, trigger_cursor=record.trigger_cursor)
            self.ctx.undo = _RecordedUndo(self, record)
            try:
                done = await asyncio.wait_for(step.apply(self.ctx), self.ctx.settings.policy.step_timeout)
            except Exception as err:
                self.ctx.undo = NoUndo()
                self._finish_step(record, step, "failed", error=f"{type(err).__name__}: {err}")
                await self._restore(record)
                continue
            self.ctx.undo = NoUndo()
            if record.undo:  # the step finished: what it stopped and did not start is its own choice
                record.undo.clear()
            self._transition(record, Phase.VERIFYING, None, done)
            if await self._verify(step):
                self._finish_step(record, step, "ok", detail=done)
                self._heal(record)
                return
            self._finish_step(record, step, "failed", detail=done, error="verification failed")
        # "No step applies" is the never rules speaking (pods on the bridge, shims in the root).
        self._exhaust(record, "every step of the ladder was tried" if applied
                      else "no step of the ladder applies now (each one's precondition is unmet)")

    # -- helpers ------------------------------------------------------------------------

    def _cooling(self, record: ProblemRecord, step: Step, suspicion: Suspicion) -> bool:
        """The cooldown stops a flap: the step that healed the last episode is not the next
        episode's first response until its cooldown is over (then a timer looks again). Another
        step (a different fault of the same problem) goes at once."""
        wait = self.gate.cooldown_left(record)
        if step.name != record.healed_by or wait <= 0:
            return False
        refusal = f"cooling down for another {wait:.0f}s: {step.name} healed the last episode"
        log(Kind.HELD_BACK, f"{record.problem}: not repairing: {refusal}", NOTICE, problem=record.problem,
            reason=refusal, step=step.name)
        record.detail = refusal
        self.save()
        asyncio.get_running_loop().call_later(wait, self.suspect, suspicion)  # one timer, armed only now
        return True

    async def _healthy_now(self, problem: str) -> bool:
        """One probe, no retries: is the problem absent right now? (False without a probe.)"""
        probe = self.confirms.get(problem)
        if probe is None:
            return False
        try:
            return not await probe(self.ctx)
        except Exception:
            return False

    async def _retry_until(self, check: Callable[[], Awaitable[bool]], attempts: int | None = None,
                           interval: float | None = None, soon_first: bool = False) -> bool:
        """Call `check` until it says True, `attempts` times `interval` apart (policy's verify
        schedule by default); False when it never did. `soon_first`: look again after 10 ms,
        doubling up to `interval`, for at least as many looks and as long as that schedule."""
        policy = self.ctx.settings.policy
        count = max(1, attempts or policy.verify_attempts)
        gap = policy.verify_interval if interval is None else interval
        stop = stop_after_attempt(count)
        wait = wait_fixed(gap)
        if soon_first:
            stop = stop & stop_after_delay((count - 1) * gap)
            wait = wait_exponential(multiplier=SOON_FIRST, min=min(SOON_FIRST, gap), max=gap)
        retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_result(lambda ok: not ok),
                                 retry_error_callback=lambda _state: False)

        async def once() -> bool:  # tenacity awaits only coroutine functions, not lambdas returning one
            return await check()

        return await retrying(once)

    async def _confirm(self, problem: str) -> bool:
        probe = self.confirms.get(problem)
        if probe is None:
            return True
        async def broken() -> bool:
            try:
                return await probe(self.ctx)
            except Exception as err:  # a probe that cannot look confirms nothing, and kills nothing
                log(Kind.SOURCE_TROUBLE, f"{problem}: live probe failed: {type(err).__name__}: {err}", WARNING,
                    problem=problem)
                return False

        # The component may not have noticed yet (containerd reloads CNI config on its own
        # fsnotify event, mostly within milliseconds), so give the probe a few chances to see
        # the problem, the first ones soon: a second look a whole verify_interval later made
        # the CNI fault's p99 1 s instead of 10 ms (bench/RESULTS.md).
        return await self._retry_until(broken, soon_first=True)

    async def _verify(self, step: Step) -> bool:
        # A step may bring its own schedule (the image-fs warm-up: 5 attempts, 3 s apart).
        schedule = getattr(step, "verify_schedule", None)
        attempts, interval = schedule(self.ctx) if schedule else (None, None)

        async def attempt() -> bool:
            try:
                return await step.verify(self.ctx)
            except Exception:
                return False

        return await self._retry_until(attempt, attempts, interval)

    def _fleet_held(self, record: ProblemRecord, step: Step, reason: str) -> None:
        """Waiting for the fleet guard: confirmed (an operator may forget or repair it), with why."""
        self.current = None
        self._transition(record, Phase.CONFIRMED, Kind.FLEET_HELD, f"next step {step.name} held: {reason}")

    def _finish_step(self, record: ProblemRecord, step: Step, result: str, detail: str = "", error: str = "",
                     resumed: bool = False) -> None:
        self.fleet.release(record.problem)  # the step and its verification are over
        self.reporters.on_step(record, StepFinished(record.problem, step.name, result, detail, error, resumed))

    def _heal(self, record: ProblemRecord) -> None:
        policy = self.ctx.settings.policy
        # A flap is the same step healing episode after episode: its cooldown doubles each time.
        record.episodes = record.episodes + 1 if record.healed_by == record.step_name else 1
        record.healed_by = record.step_name
        cooldown = min(policy.cooldown * 2 ** max(0, record.episodes - 1), policy.cooldown_max)
        record.not_before = time.time() + cooldown
        self.current = None
        self._transition(record, Phase.HEALED, Kind.HEALED, f"healed by {record.step_name}")

    def _exhaust(self, record: ProblemRecord, reason: str) -> None:
        self.current = None
        self._transition(record, Phase.EXHAUSTED, Kind.EXHAUSTED, reason, priority=ERR)

    def _transition(self, record: ProblemRecord, phase: Phase, kind: Kind | None, detail: str,
                    priority: int = NOTICE) -> bool:
        """Move and report; True when the new phase is on disk (or needs not be)."""
        record.move(phase, detail)
        if phase not in (Phase.REPAIRING, Phase.VERIFYING):
            self.fleet.release(record.problem)  # held back or ended after the slot was granted
        saved = True
        if phase in (Phase.SUSPECTED, Phase.CONFIRMED):
            # A restart turns these back into idle (resume), so they need no fsync'd write: the
            # two disk syncs they would cost sit between a fault and its first step.
            self.reporters.on_change()
        else:
            saved = self.save()
        self.reporters.on_transition(record, Transition(record.problem, phase, detail, kind, priority))
        return saved

    def save(self) -> bool:
        """Persist the state; False (reported once per outage) when it cannot be written."""
        try:
            self.store.save(self.ctx.state)
        except (OSError, UnsafeOperation) as err:
            detail = f"{type(err).__name__}: {err}"
            if not self.persist_error:
                log(Kind.STATE_NOT_SAVED, f"cannot save the engine's state to {self.store.path}: {detail}; repairing "
                    "without persistence: only idempotent steps run until a write succeeds", ERR,
                    path=self.store.path, error=detail)
            # short, for the Status line and refusals; the journal entry above has the whole story
            self.persist_error = (err.strerror if isinstance(err, OSError) and err.strerror else "") or detail
            self.reporters.on_change()
            return False
        if self.persist_error:
            self.persist_error = ""
            log(Kind.STATE_SAVED_AGAIN, f"the engine's state is saved to {self.store.path} again; every step may run",
                NOTICE, path=self.store.path)
            held = [r for r in self.ctx.state.problems.values()
                    if r.phase == Phase.EXHAUSTED and PERSISTENCE_HOLD in r.detail]
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a one-shot command): nothing to look at again
                held = []
            for record in held:  # after this write returns: a suspect() runs its own saves
                loop.call_soon(self._restart_held, record, "the state can be saved again",
                               "re-checked once the state could be saved again", "persistence")
        self.reporters.on_change()
        return True

