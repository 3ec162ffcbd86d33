"""The fleet guard on nodemedic-kube's side: `serve_fleet` puts the slots (kube/slots.py) on
the system bus (kube/slot_bus.py) and keeps them there until cancelled.

It reaches the API server through nodemedic-kube's own client (kube/api.py), on the one event
loop of `nodemedic kube run`, with the guard's own kubeconfig (fleet.kubeconfig): every call
has a timeout, and the D-Bus method answers whatever happens (held, with the reason), so the
repair daemon never waits on the API server. When the daemon's bus name vanishes while this
node holds a slot (the daemon stopped, crashed or was killed mid-step), the slot is released.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus
from dbus_next.constants import RequestNameReply

from nodemedic.journal import INFO, Kind, log
from nodemedic.kube.slot_bus import BUS_NAME, OBJECT_PATH, KubeInterface
from nodemedic.kube.slots import Conflict, Forbidden, LeaseRecord, Slots, Unreachable

DAEMON_BUS_NAME = "org.nodemedic1"  # the repair daemon's name (report/dbus_api.py)


class RestLeases:
    """kube/slots.py's LeaseApi over kube/api.py's Api: `request(method, path, body=None)`
    returning the parsed answer or raising an exception with an int `.status` for an error
    status (anything else: no answer), and `watch(path)` yielding a watch's events.

    `changes()` lists the Leases (their resourceVersion), then watches from there: a waiting
    node hears of a released slot within the API server's watch latency. kube/slots.py runs it
    only while a request waits, so an idle guard holds no connection and wakes for nothing. A
    client without `watch` is listed every POLL seconds instead (the unit tests' fake)."""

    POLL = 5.0

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return await self.client.request(method, path, body)
        except Exception as err:  # noqa: BLE001 - sorted into the three kinds the slots know
            raise _sorted(err) from None

    @staticmethod
    def _record(lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return LeaseRecord(holder=spec.get("holderIdentity") or "", duration=int(spec.get("leaseDurationSeconds") or 0),
                           renew=str(spec.get("renewTime") or ""), acquire=str(spec.get("acquireTime") or ""),
                           transitions=int(spec.get("leaseTransitions") or 0),
                           version=str((lease.get("metadata") or {}).get("resourceVersion") or ""))

    def _body(self, name: str, record: LeaseRecord) -> dict[str, Any]:
        spec: dict[str, Any] = {"holderIdentity": record.holder or None, "leaseDurationSeconds": record.duration,
                                "leaseTransitions": record.transitions}
        if record.renew:
            spec["renewTime"] = record.renew
        if record.acquire:
            spec["acquireTime"] = record.acquire
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace,
                                    "labels": {"app.kubernetes.io/managed-by": "nodemedic"}}
        if record.version:
            metadata["resourceVersion"] = record.version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def get(self, name: str) -> LeaseRecord | None:
        try:
            return self._record(await self._call("GET", f"{self.base}/{name}"))
        except LookupError:
            return None

    async def create(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        try:
            return self._record(await self._call("POST", self.base, self._body(name, lease)))
        except LookupError as err:
            raise Forbidden(f"namespace {self.namespace!r} not found: {err}") from None

    async def replace(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        try:
            return self._record(await self._call("PUT", f"{self.base}/{name}", self._body(name, lease)))
        except LookupError:
            raise Conflict(f"lease {name} was deleted") from None

    async def changes(self) -> AsyncIterator[None]:
        if hasattr(self.client, "watch"):
            listed = await self._call("GET", self.base)
            yield None  # something may have changed before the watch began
            version = str(((listed or {}).get("metadata") or {}).get("resourceVersion") or "")
            # timeoutSeconds: the server ends the watch after a while; kube/slots.py opens a new one.
            try:
                async for event in self.client.watch(f"{self.base}?watch=1&allowWatchBookmarks=false"
                                                     f"&timeoutSeconds=300&resourceVersion={version}"):
                    if event.get("type") == "ERROR":  # e.g. 410 Gone: list again
                        return
                    yield None
            except Exception as err:  # noqa: BLE001 - sorted into the kinds the slots know
                raise _sorted(err) from None
            return
        seen: dict[str, str] | None = None
        while True:
            listed = await self._call("GET", self.base)
            now = {str(item["metadata"]["name"]): str(item["metadata"].get("resourceVersion"))
                   for item in (listed or {}).get("items", [])}
            if now != seen:
                seen = now
                yield None
            await asyncio.sleep(self.POLL)


def _sorted(err: Exception) -> Exception:
    """`err` as one of the kinds kube/slots.py knows: Conflict, LookupError (404), Forbidden,
    Unreachable (no answer, or 5xx)."""
    status = getattr(err, "status", None)
    if not isinstance(status, int):
        return Unreachable(f"{type(err).__name__}: {err}")
    if status == 409:
        return Conflict(str(err))
    if status == 404:
        return LookupError(str(err))
    if 400 <= status < 500:
        return Forbidden(str(err))
    return Unreachable(str(err))


def leases_for(client: Any, namespace: str) -> Any:
    """The LeaseApi for `client` (kube/api.py's Api), or for None: no usable kubeconfig."""
    if client is None:
        return _NoClient()
    return RestLeases(client, namespace)


def node_name(settings: Any) -> str:
    """kubernetes.node_name when the configuration has it (h15a's block), else the host name
    the kubelet registers by default."""
    kubernetes = getattr(settings, "kubernetes", None)
    return getattr(kubernetes, "node_name", "") or socket.gethostname().lower()


async def serve_fleet(bus: MessageBus, client: Any, settings: Any, me: str | None = None) -> None:
    """Own org.nodemedic.Kube1 on `bus` and answer slot requests until cancelled. `client` is
    kube/api.py's Api on the guard's kubeconfig (see RestLeases); None: no usable kubeconfig,
    every request is held with the reason."""
    fleet = settings.fleet
    me = me or node_name(settings)
    interface: KubeInterface | None = None

    def changed() -> None:
        if interface is not None and bus.connected:
            interface.SlotsChanged()

    api = leases_for(client, fleet.namespace)
    slots = Slots(api, me, fleet.max_concurrent, fleet.lease_seconds, fleet.when_unreachable, on_changed=changed)
    interface = KubeInterface(slots)
    bus.export(OBJECT_PATH, interface)
    # The daemon's name vanishing while it holds a slot (stopped, crashed, SIGKILLed mid-step):
    # release now instead of after the lease duration.
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=[f"type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                                 f"member='NameOwnerChanged',arg0='{DAEMON_BUS_NAME}'"]))
    tasks: set[asyncio.Task[None]] = set()

    def on_message(message: Message) -> None:
        if (message.message_type == MessageType.SIGNAL and message.member == "NameOwnerChanged"
                and message.body and message.body[0] == DAEMON_BUS_NAME and not message.body[2]):
            slots.forget_waiter()
            task = asyncio.get_running_loop().create_task(slots.release())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    bus.add_message_handler(on_message)
    reply = await bus.request_name(BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        raise OSError(f"could not own {BUS_NAME}: {reply}")
    log(Kind.FLEET_SERVING, f"fleet guard serving {BUS_NAME} as {me}: {fleet.max_concurrent} slot(s) in "
        f"namespace {fleet.namespace}, lease {slots.duration}s, when unreachable: {fleet.when_unreachable}"
        + ("" if client is not None else "; no kubeconfig: every disruptive step is held"), INFO,
        holder=me, namespace=fleet.namespace)
    try:
        await slots.wake_waiters()
    finally:
        bus.remove_message_handler(on_message)
        await slots.release()


class _NoClient:
    """No kubeconfig the guard can use: every request is held, saying so."""

    async def get(self, name: str) -> LeaseRecord | None:
        raise Forbidden("no kubeconfig with an identity for the fleet slots")

    async def create(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        raise Forbidden("no kubeconfig with an identity for the fleet slots")

    async def replace(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        raise Forbidden("no kubeconfig with an identity for the fleet slots")

    async def changes(self) -> AsyncIterator[None]:
        await asyncio.Event().wait()
        yield None
