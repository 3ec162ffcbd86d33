"""The fleet's slots: `max_concurrent` coordination.k8s.io/v1 Leases (nodemedic-slot-0..N-1),
one of which a node holds while a disruptive or destructive step and its verification run.

Expiry is judged the way client-go's leader election judges it: by *observed* change. For each
Lease we remember what we last saw (its resourceVersion, holder and renewTime) and when *we*
saw it change, on our own monotonic clock. A slot held by someone else is free once it has not
changed for its leaseDurationSeconds as measured here; the renewTime written by the holder is
never compared with our clock, so clocks may disagree. A takeover is a replace carrying the
resourceVersion we observed: if anyone wrote the Lease since, the API server answers 409 and
the takeover is lost, not doubled.

The API is reached through `LeaseApi` (kube/fleet.py adapts kube/api.py to it), so this module is
plain asyncio and tested without an API server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from nodemedic.journal import NOTICE, WARNING, Kind, log

PREFIX = "nodemedic-slot-"
# A refused daemon asks again at least every minute (engine/fleet.py's backoff); one that has
# not asked for this long no longer waits, and the watch for it ends.
WAITER_GONE = 180.0


class Conflict(Exception):
    """409: the Lease changed since we read it (or it exists already)."""


class Forbidden(Exception):
    """401/403: the credentials may not use Leases here (the kubelet's never may)."""


class Unreachable(Exception):
    """No answer from the API server (connection refused, timeout, 5xx)."""


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says, as far as the slots care."""

    holder: str  # "" when released
    duration: int  # leaseDurationSeconds
    renew: str = ""  # renewTime as written by the holder (RFC 3339): only compared for change
    acquire: str = ""
    transitions: int = 0
    version: str = ""  # metadata.resourceVersion; "" for a Lease not yet created


class LeaseApi(Protocol):
    async def get(self, name: str) -> LeaseRecord | None: ...
    async def create(self, name: str, lease: LeaseRecord) -> LeaseRecord: ...
    async def replace(self, name: str, lease: LeaseRecord) -> LeaseRecord: ...  # lease.version must match
    def changes(self) -> AsyncIterator[None]: ...  # yields after any Lease of the namespace changed


@dataclass
class _Seen:
    key: tuple[str, str, str]  # resourceVersion, holder, renewTime
    at: float  # our monotonic clock when that key was first seen
    duration: int


class Observer:
    """client-go's observedRecord/observedTime, for every slot: pure, with an injectable clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def see(self, name: str, lease: LeaseRecord) -> None:
        key = (lease.version, lease.holder, lease.renew)
        seen = self._seen.get(name)
        if seen is None or seen.key != key:
            self._seen[name] = _Seen(key, self.clock(), lease.duration)

    def free_for(self, name: str, lease: LeaseRecord, me: str) -> bool:
        """May `me` take this slot now? Released, ours already, or unchanged for its duration."""
        if not lease.holder or lease.holder == me:
            return True
        return self.expires_in(name, lease) <= 0

    def expires_in(self, name: str, lease: LeaseRecord) -> float:
        """Seconds until a held slot counts as expired here (a never-seen one: a full duration)."""
        seen = self._seen.get(name)
        if seen is None or seen.key != (lease.version, lease.holder, lease.renew):
            return float(lease.duration)
        return seen.at + lease.duration - self.clock()

    def first_expiry(self, me: str) -> float | None:
        """Seconds until the next slot seen held by someone else will count as expired (None:
        none will; one already past its expiry was announced when it passed)."""
        held = [seen.at + seen.duration - self.clock() for seen in self._seen.values()
                if seen.key[1] and seen.key[1] != me]
        future = [left for left in held if left > 0]
        return min(future) if future else None


def micro_time(clock: Callable[[], float] = time.time) -> str:
    """A MicroTime as the API server writes it."""
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Answer:
    granted: bool
    holders: tuple[str, ...]
    reason: str


class Slots:
    """This node's side of the slots: take one for a problem's step, renew it, release it."""

    def __init__(self, api: LeaseApi, me: str, count: int, lease_seconds: float, when_unreachable: str,
                 clock: Callable[[], float] = time.monotonic, on_changed: Callable[[], None] = lambda: None) -> None:
        self.api = api
        self.me = me
        self.count = count
        self.duration = max(1, round(lease_seconds))
        self.when_unreachable = when_unreachable
        self.observer = Observer(clock)
        self.on_changed = on_changed  # SlotsChanged: a slot may have freed, waiters should ask again
        self.held: str | None = None  # the Lease this node holds
        self.lease: LeaseRecord | None = None  # as last written by us
        self.problems: set[str] = set()  # what it is held for (the engine runs one repair at a time)
        self.waiting = False  # a request was refused: wake the daemon when a slot may have freed
        self.asked_at = 0.0  # when the daemon last asked (it asks again at least every minute)
        self.trouble = ""  # the current outage, reported once
        self.trouble_kind = ""  # "unreachable" or "identity"
        self._lock = asyncio.Lock()
        self._wanted = asyncio.Event()  # set while someone waits: wake_waiters watches only then
        self._renewer: asyncio.Task[None] | None = None

    # -- the outage report: once per outage, not once per try ---------------------------------

    def _troubled(self, kind: str, detail: str) -> None:
        # Judged by its kind, not its text: a connection error's wording varies from try to try.
        if kind != self.trouble_kind:
            log(Kind.FLEET_TROUBLE, f"fleet guard: {detail}", WARNING, reason=detail)
        self.trouble, self.trouble_kind = detail, kind

    def _untroubled(self) -> None:
        if self.trouble:
            log(Kind.FLEET_TROUBLE, f"fleet guard: the API server answers again (was: {self.trouble})", NOTICE)
            self.trouble, self.trouble_kind = "", ""

    # -- acquire / release -------------------------------------------------------------------

    async def acquire(self, problem: str) -> Answer:
        async with self._lock:
            try:
                answer = await self._acquire(problem)
            except Forbidden as err:
                detail = (f"no identity for the fleet slots: these credentials may not use Leases in this "
                          f"namespace ({err}); the kubelet's never may (NodeRestriction): set fleet.kubeconfig, "
                          f"see packaging/kubernetes/rbac.yaml")
                self._troubled("identity", detail)
                answer = Answer(False, (), f"fleet guard has no identity ({err})")
            except Unreachable as err:
                self._troubled("unreachable", f"API server unreachable: {err}")
                if self.when_unreachable == "proceed":
                    answer = Answer(True, (), "API server unreachable: proceeding without a slot")
                else:
                    answer = Answer(False, (), "API server unreachable")
            else:
                self._untroubled()
            self.waiting = not answer.granted
            self.asked_at = self.observer.clock()
            if self.waiting:
                self._wanted.set()
            else:
                self._wanted.clear()
            return answer

    async def _acquire(self, problem: str) -> Answer:
        if self.held is not None:  # one slot per node: the node's repairs run one at a time
            self.problems.add(problem)
            return Answer(True, (self.me,), "")
        holders: list[str] = []
        for index in range(self.count):
            name = f"{PREFIX}{index}"
            lease = await self.api.get(name)
            if lease is None:
                try:
                    taken = await self.api.create(name, self._claim(None))
                except Conflict:  # someone created it just now: theirs
                    holders.append("?")
                    continue
                return self._took(name, taken, problem)
            self.observer.see(name, lease)
            if self.observer.free_for(name, lease, self.me):
                try:
                    taken = await self.api.replace(name, self._claim(lease))
                except Conflict:  # written since we read it: somebody else was quicker
                    fresh = await self.api.get(name)
                    if fresh is not None:
                        self.observer.see(name, fresh)
                    holders.append(fresh.holder if fresh is not None and fresh.holder else "?")
                    continue
                return self._took(name, taken, problem)
            holders.append(lease.holder)
        names = ", ".join(sorted(set(holders)))
        return Answer(False, tuple(sorted(set(holders))), f"waiting for a fleet slot (held by {names})")

    def _claim(self, lease: LeaseRecord | None) -> LeaseRecord:
        now = micro_time()
        if lease is None:
            return LeaseRecord(self.me, self.duration, now, now, 0, "")
        ours = lease.holder == self.me
        return dataclasses.replace(lease, holder=self.me, duration=self.duration, renew=now,
                                   acquire=lease.acquire if ours and lease.acquire else now,
                                   transitions=lease.transitions + (0 if ours else 1))

    def _took(self, name: str, lease: LeaseRecord, problem: str) -> Answer:
        self.held, self.lease = name, lease
        self.problems = {problem}
        self.observer.see(name, lease)
        log(Kind.FLEET_SLOT_TAKEN, f"fleet guard: took slot {name} for {problem}", NOTICE, lease=name,
            problem=problem, holder=self.me)
        self._renewer = asyncio.get_running_loop().create_task(self._renew(name))
        return Answer(True, (self.me,), "")

    async def release(self, problem: str | None = None) -> None:
        """Release the slot when no problem needs it any more (None: whatever it is held for)."""
        async with self._lock:
            if problem is not None:
                self.problems.discard(problem)
            if self.held is None or (problem is not None and self.problems):
                return
            name, lease = self.held, self.lease
            self.held, self.lease, self.problems = None, None, set()
            if self._renewer is not None:
                self._renewer.cancel()
                self._renewer = None
            assert lease is not None
            try:
                # As client-go releases: no holder, a 1 s duration; the others see it free at once.
                await self.api.replace(name, dataclasses.replace(lease, holder="", duration=1, renew=micro_time()))
            except Conflict:
                log(Kind.FLEET_SLOT_LOST, f"fleet guard: slot {name} was taken over before it was released",
                    WARNING, lease=name)
                return
            except (Unreachable, Forbidden) as err:  # it expires on its own after its duration
                log(Kind.FLEET_SLOT_RELEASED, f"fleet guard: could not release slot {name} ({err}); it frees "
                    f"itself after {self.duration}s", WARNING, lease=name)
                return
            log(Kind.FLEET_SLOT_RELEASED, f"fleet guard: released slot {name}", NOTICE, lease=name)
        self.on_changed()

    async def _renew(self, name: str) -> None:
        """Renew every third of the duration while held. A failed renewal tries again at the next
        tick; a 409 means another node took it over (we were cut off for longer than the duration)."""
        while True:
            await asyncio.sleep(self.duration / 3)
            async with self._lock:
                if self.held != name or self.lease is None:
                    return
                try:
                    self.lease = await self.api.replace(name, dataclasses.replace(self.lease, renew=micro_time()))
                except Conflict:
                    log(Kind.FLEET_SLOT_LOST, f"fleet guard: slot {name} was taken over by another node while "
                        "held (renewals failed for longer than the lease duration)", WARNING, lease=name)
                    self.held, self.lease, self.problems = None, None, set()
                    return
                except (Unreachable, Forbidden) as err:
                    self._troubled("identity" if isinstance(err, Forbidden) else "unreachable",
                                   f"renewing slot {name}: {err}")
                    continue
                self._untroubled()
                self.observer.see(name, self.lease)

    # -- waking the waiters ------------------------------------------------------------------

    def forget_waiter(self) -> None:
        """The daemon went away: nobody waits any more."""
        self.waiting = False
        self._wanted.clear()

    async def wake_waiters(self) -> None:
        """While a request is refused, say SlotsChanged whenever a Lease of the namespace changes
        (a watch: no polling) or a slot held by someone else would count as expired by now. With
        nobody waiting there is no watch and no timer."""
        while True:
            await self._wanted.wait()
            changed = asyncio.Event()
            follower = asyncio.get_running_loop().create_task(self._follow(changed))
            try:
                while self.waiting:
                    if self.observer.clock() - self.asked_at > WAITER_GONE:
                        self.forget_waiter()  # its problem cleared or was forgotten: stop watching
                        break
                    expiry = self.observer.first_expiry(self.me)
                    expiry = WAITER_GONE if expiry is None else min(expiry, WAITER_GONE)
                    try:
                        await asyncio.wait_for(changed.wait(), expiry)
                    except TimeoutError:
                        pass
                    changed.clear()
                    if self.waiting:
                        self.on_changed()
                        # the daemon asks again at once; give its answer the chance to land
                        await asyncio.sleep(0.05)
            finally:
                follower.cancel()

    async def _follow(self, changed: asyncio.Event) -> None:
        delay = 1.0
        while True:
            try:
                async for _ in self.api.changes():
                    delay = 1.0
                    changed.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001, S110 - an outage is reported by acquire; watch again
                pass
            changed.set()  # the API server may be back: let the waiters ask again
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
