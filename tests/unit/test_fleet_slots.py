"""The fleet guard's slots (kube/slots.py) without an API server: expiry judged by observed change
on a fake monotonic clock, takeovers with the observed resourceVersion, outages. The Leases live
in LeaseStoreFake, an in-memory stand-in for the API server's optimistic concurrency (a replace
carrying a stale resourceVersion is a 409). The real API server is in tests/node/test_kube_fleet.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from nodemedic.kube import slots as slots_module
from nodemedic.kube.slots import Conflict, Forbidden, LeaseRecord, Observer, Slots, Unreachable


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseStoreFake:
    """The API server's Leases of one namespace, as far as the slots use them."""

    def __init__(self) -> None:
        self.leases: dict[str, LeaseRecord] = {}
        self.version = 0
        self.down: Exception | None = None  # raised by every call while set
        self.before_replace = None  # a hook: another writer sneaking in between get and replace
        self.changed = asyncio.Event()

    def _write(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        self.version += 1
        stored = dataclasses.replace(lease, version=str(self.version))
        self.leases[name] = stored
        self.changed.set()
        return stored

    async def get(self, name: str) -> LeaseRecord | None:
        if self.down:
            raise self.down
        return self.leases.get(name)

    async def create(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        if self.down:
            raise self.down
        if name in self.leases:
            raise Conflict("exists")
        return self._write(name, lease)

    async def replace(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        if self.down:
            raise self.down
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook()
        if self.leases[name].version != lease.version:
            raise Conflict("the object has been modified")
        return self._write(name, lease)

    async def changes(self) -> AsyncIterator[None]:
        while True:
            await self.changed.wait()
            self.changed.clear()
            yield None


def lease(holder: str, version: str, renew: str = "2026-01-01T00:00:00.000000Z", duration: int = 60) -> LeaseRecord:
    return LeaseRecord(holder, duration, renew, renew, 0, version)


# -- the observer: pure ---------------------------------------------------------------------

def test_a_held_lease_is_free_only_after_its_duration_without_change_on_our_clock():
    clock = FakeClock()
    observer = Observer(clock)
    seen = lease("node-a", "1")
    observer.see("s0", seen)
    clock.now += 59.9
    observer.see("s0", seen)  # the same record again: no change, the first sighting counts
    assert not observer.free_for("s0", seen, "node-b")
    clock.now += 0.1
    assert observer.free_for("s0", seen, "node-b")


def test_every_change_restarts_the_wait_whatever_the_renew_time_says():
    clock = FakeClock()
    observer = Observer(clock)
    # The holder's clock is years behind: its renewTime means nothing here, its changes do.
    renewals = [lease("node-a", str(v), renew=f"1999-01-01T00:00:{v:02d}.000000Z") for v in range(1, 6)]
    for renewal in renewals:
        observer.see("s0", renewal)
        clock.now += 40
        assert not observer.free_for("s0", renewal, "node-b")
    clock.now += 20
    assert observer.free_for("s0", renewals[-1], "node-b")


def test_a_renew_time_in_the_future_does_not_keep_a_dead_holder_alive():
    clock = FakeClock()
    observer = Observer(clock)
    ahead = lease("node-a", "7", renew="2999-01-01T00:00:00.000000Z")
    observer.see("s0", ahead)
    clock.now += 60
    assert observer.free_for("s0", ahead, "node-b")


def test_released_and_own_leases_are_free_at_once():
    observer = Observer(FakeClock())
    assert observer.free_for("s0", lease("", "3"), "node-b")
    assert observer.free_for("s0", lease("node-b", "3"), "node-b")
    assert not observer.free_for("s0", lease("node-a", "3"), "node-b")  # never seen: a full duration


def test_first_expiry_skips_our_own_and_past_expiries():
    clock = FakeClock()
    observer = Observer(clock)
    observer.see("s0", lease("node-a", "1"))
    observer.see("s1", lease("node-b", "2", duration=30))
    assert observer.first_expiry("node-b") == 60
    clock.now += 61
    assert observer.first_expiry("node-b") is None


# -- the slots against the fake store -----------------------------------------------------------

@pytest.fixture
def logged(monkeypatch):
    entries: list[tuple[str, str]] = []
    monkeypatch.setattr(slots_module, "log", lambda kind, message, *a, **kw: entries.append((kind.name, message)))
    return entries


def make(store, me, clock, count=1, when_unreachable="hold"):
    return Slots(store, me, count, 60, when_unreachable, clock=clock)


def test_one_slot_goes_to_one_node_at_a_time(logged):
    async def scenario():
        store, clock = LeaseStoreFake(), FakeClock()
        a, b = make(store, "node-a", clock), make(store, "node-b", clock)
        assert (await a.acquire("p")).granted
        refused = await b.acquire("q")
        assert not refused.granted and refused.holders == ("node-a",)
        assert refused.reason == "waiting for a fleet slot (held by node-a)"
        await a.release("p")
        assert store.leases["nodemedic-slot-0"].holder == ""
        assert (await b.acquire("q")).granted
        assert store.leases["nodemedic-slot-0"].holder == "node-b"
        assert store.leases["nodemedic-slot-0"].transitions == 1
        await b.release("q")

    asyncio.run(scenario())
    assert [k for k, _ in logged].count("FLEET_SLOT_TAKEN") == 2


def test_max_concurrent_slots_and_the_refusal_names_every_holder(logged):
    async def scenario():
        store, clock = LeaseStoreFake(), FakeClock()
        nodes = [make(store, f"node-{n}", clock, count=2) for n in "abc"]
        answers = [await node.acquire("p") for node in nodes]
        assert [a.granted for a in answers] == [True, True, False]
        assert answers[2].reason == "waiting for a fleet slot (held by node-a, node-b)"
        for node in nodes:
            await node.release()

    asyncio.run(scenario())


def test_a_dead_holder_frees_its_slot_after_the_duration_seen_from_the_waiter(logged):
    async def scenario():
        store, clock = LeaseStoreFake(), FakeClock()
        a, b = make(store, "node-a", clock), make(store, "node-b", clock)
        assert (await a.acquire("p")).granted
        a._renewer.cancel()  # node-a dies: no renewals, no release
        assert not (await b.acquire("q")).granted  # first sighting
        clock.now += 59
        assert not (await b.acquire("q")).granted
        clock.now += 1
        assert (await b.acquire("q")).granted
        assert store.leases["nodemedic-slot-0"].holder == "node-b"
        await b.release()

    asyncio.run(scenario())


def test_a_takeover_with_a_stale_resource_version_is_lost_not_doubled(logged):
    async def scenario():
        store, clock = LeaseStoreFake(), FakeClock()
        a, b = make(store, "node-a", clock), make(store, "node-b", clock)
        assert (await a.acquire("p")).granted
        a._renewer.cancel()
        assert not (await b.acquire("q")).granted
        clock.now += 60
        # node-a renews just between node-b's read and its takeover: the API server says 409.
        held = store.leases["nodemedic-slot-0"]
        store.before_replace = lambda: store._write("nodemedic-slot-0", dataclasses.replace(held, renew="later"))
        refused = await b.acquire("q")
        assert not refused.granted and refused.holders == ("node-a",)
        assert store.leases["nodemedic-slot-0"].holder == "node-a"
        clock.now += 59  # the renewal was seen now: a full duration again
        assert not (await b.acquire("q")).granted

    asyncio.run(scenario())


def test_unreachable_holds_or_proceeds_and_is_reported_once_per_outage(logged):
    async def scenario():
        store, clock = LeaseStoreFake(), FakeClock()
        hold, proceed = make(store, "node-a", clock), make(store, "node-b", clock, when_unreachable="proceed")
        store.down = Unreachable("ConnectError: connection refused")
        for _ in range(3):
            answer = await hold.acquire("p")
            assert not answer.granted and answer.reason == "API server unreachable"
        answer = await proceed.acquire("p")
        assert answer.granted and "without a slot" in answer.reason
        await proceed.release("p")  # nothing held: nothing written
        store.down = None
        assert (await hold.acquire("p")).granted
        await hold.release("p")

    asyncio.run(scenario())
    troubles = [m for k, m in logged if k == "FLEET_TROUBLE"]
    outages = [m for m in troubles if m.startswith("fleet guard: API server unreachable")]
    assert len(outages) == 2  # one per guard and outage, not one per try
    assert any("answers again" in m for m in troubles)


def test_credentials_that_may_not_use_leases_hold_and_say_there_is_no_identity(logged):
    async def scenario():
        store = LeaseStoreFake()
        store.down = Forbidden('403 Forbidden: leases.coordination.k8s.io "nodemedic-slot-0" is forbidden')
        answer = await make(store, "node-a", FakeClock(), when_unreachable="proceed").acquire("p")
        assert not answer.granted and answer.reason.startswith("fleet guard has no identity")

    asyncio.run(scenario())
    assert any("no identity" in m for k, m in logged if k == "FLEET_TROUBLE")


def test_waiters_are_woken_by_a_release_and_by_an_observed_expiry(logged):
    async def scenario():
        store, clock = LeaseStoreFake(), FakeClock()
        a = make(store, "node-a", clock)
        woken: list[float] = []
        b = Slots(store, "node-b", 1, 60, "hold", clock=clock, on_changed=lambda: woken.append(clock.now))
        waker = asyncio.get_running_loop().create_task(b.wake_waiters())
        assert (await a.acquire("p")).granted
        assert not (await b.acquire("q")).granted
        await a.release("p")  # the watch sees the write: SlotsChanged
        for _ in range(100):
            if woken:
                break
            await asyncio.sleep(0.01)
        assert woken
        assert (await b.acquire("q")).granted
        assert b._wanted.is_set() is False  # granted: no watch, no timer any more
        waker.cancel()

    asyncio.run(scenario())


def test_a_waiter_is_woken_when_a_dead_holders_slot_expires_without_any_write(logged):
    async def scenario():
        store = LeaseStoreFake()
        a = Slots(store, "node-a", 1, 1, "hold")  # a 1 s lease, on the real monotonic clock
        woken = asyncio.Event()
        b = Slots(store, "node-b", 1, 1, "hold", on_changed=woken.set)
        assert (await a.acquire("p")).granted
        a._renewer.cancel()  # node-a dies
        assert not (await b.acquire("q")).granted
        waker = asyncio.get_running_loop().create_task(b.wake_waiters())
        await asyncio.sleep(0.1)
        store.changed.clear()
        woken.clear()  # the watch's first round (a write seen) is not what this test is about
        await asyncio.wait_for(woken.wait(), 5)  # no write: the observed expiry's timer
        assert (await b.acquire("q")).granted
        waker.cancel()

    asyncio.run(scenario())


def test_an_outage_whose_wording_changes_from_try_to_try_is_still_reported_once(logged):
    async def scenario():
        store = LeaseStoreFake()
        guard = make(store, "node-a", FakeClock())
        for wording in ("ConnectError: connection refused", "ConnectTimeout: timed out", "503: unavailable"):
            store.down = Unreachable(wording)
            assert not (await guard.acquire("p")).granted

    asyncio.run(scenario())
    assert len([m for k, m in logged if k == "FLEET_TROUBLE"]) == 1


# -- the plain JSON client's adapter (kube/fleet.py RestLeases) ---------------------------------

class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class JsonApiFake:
    """The API server's Lease endpoints as a plain JSON client sees them (nodemedic.kube.api.Api's
    `request`): 404, 409 on a stale resourceVersion or an existing name, 403 while `forbidden`."""

    def __init__(self) -> None:
        self.leases: dict[str, dict] = {}
        self.version = 0
        self.forbidden = False
        self.down = False

    async def request(self, method: str, path: str, body=None):
        if self.down:
            raise ConnectionRefusedError("connection refused")
        if self.forbidden:
            raise StatusError(403)
        base = "/apis/coordination.k8s.io/v1/namespaces/nodemedic/leases"
        name = path.removeprefix(base).strip("/")
        if method == "GET":
            if not name:
                return {"items": list(self.leases.values())}
            if name not in self.leases:
                raise StatusError(404)
            return self.leases[name]
        if method == "POST":
            name = body["metadata"]["name"]
            if name in self.leases:
                raise StatusError(409)
        elif self.leases[name]["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise StatusError(409)
        self.version += 1
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        self.leases[name] = stored
        return stored


def test_the_plain_json_client_holds_slots_the_same_way(logged):
    from nodemedic.kube.fleet import RestLeases, leases_for

    async def scenario():
        api, clock = JsonApiFake(), FakeClock()
        assert isinstance(leases_for(api, "nodemedic"), RestLeases)
        a = Slots(leases_for(api, "nodemedic"), "node-a", 1, 60, "hold", clock=clock)
        b = Slots(leases_for(api, "nodemedic"), "node-b", 1, 60, "hold", clock=clock)
        assert (await a.acquire("p")).granted
        assert (await b.acquire("q")).reason == "waiting for a fleet slot (held by node-a)"
        a._renewer.cancel()
        clock.now += 60
        held = dict(api.leases["nodemedic-slot-0"])
        api.version += 1  # node-a renews between node-b's read and its takeover
        api.leases["nodemedic-slot-0"] = {**held, "metadata": {**held["metadata"], "resourceVersion": "99"}}
        original = api.request

        async def renew_first(method, path, body=None):
            if method == "PUT" and body["spec"]["holderIdentity"] == "node-b":
                api.leases["nodemedic-slot-0"]["metadata"]["resourceVersion"] = "100"
            return await original(method, path, body)

        api.request = renew_first
        assert not (await b.acquire("q")).granted  # 409: lost, not doubled
        assert api.leases["nodemedic-slot-0"]["spec"]["holderIdentity"] == "node-a"
        api.request = original
        clock.now += 60
        assert (await b.acquire("q")).granted
        await b.release("q")
        assert api.leases["nodemedic-slot-0"]["spec"]["holderIdentity"] is None
        c = Slots(leases_for(api, "nodemedic"), "node-c", 1, 60, "hold", clock=clock)  # node-a is dead
        api.forbidden = True
        assert (await c.acquire("p")).reason.startswith("fleet guard has no identity")
        api.forbidden, api.down = False, True
        assert (await c.acquire("p")).reason == "API server unreachable"

    asyncio.run(scenario())


def test_a_waiter_that_stopped_asking_is_forgotten_and_its_watch_ends(logged, monkeypatch):
    monkeypatch.setattr(slots_module, "WAITER_GONE", 0.3)

    async def scenario():
        store = LeaseStoreFake()
        a, b = Slots(store, "node-a", 1, 60, "hold"), Slots(store, "node-b", 1, 60, "hold")
        assert (await a.acquire("p")).granted
        assert not (await b.acquire("q")).granted  # and then node-b's problem clears: it never asks again
        waker = asyncio.get_running_loop().create_task(b.wake_waiters())
        for _ in range(200):
            if not b.waiting:
                break
            await asyncio.sleep(0.01)
        assert not b.waiting and not b._wanted.is_set()
        waker.cancel()
        await a.release()

    asyncio.run(scenario())


def test_the_api_clients_watch_is_used_from_the_listed_resource_version(logged):
    """With kube/api.py's Api (which has `watch`), changes() lists once, then watches from the
    list's resourceVersion: one yield for the list, one per event, and the watch's end ends it."""
    from nodemedic.kube.fleet import RestLeases

    class WatchingApi(JsonApiFake):
        def __init__(self) -> None:
            super().__init__()
            self.watched: list[str] = []

        async def request(self, method: str, path: str, body=None):
            answer = await super().request(method, path, body)
            if method == "GET" and path.endswith("/leases"):
                return {**answer, "metadata": {"resourceVersion": "42"}}
            return answer

        async def watch(self, path: str):
            self.watched.append(path)
            yield {"type": "MODIFIED", "object": {}}
            yield {"type": "ERROR", "object": {"code": 410}}  # too old: list again
            yield {"type": "MODIFIED", "object": {}}

    async def scenario():
        api = WatchingApi()
        seen = [None async for _ in RestLeases(api, "nodemedic").changes()]
        assert len(seen) == 2  # the list, one event; the ERROR ends it
        assert api.watched and "watch=1" in api.watched[0] and "resourceVersion=42" in api.watched[0]
        api.forbidden = True
        with pytest.raises(slots_module.Forbidden):
            [None async for _ in RestLeases(api, "nodemedic").changes()]

    asyncio.run(scenario())
