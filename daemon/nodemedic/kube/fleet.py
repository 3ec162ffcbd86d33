"""The fleet guard on nodemedic-kube's side: `serve_fleet` puts the slots (kube/slots.py) on
the system bus (kube/slot_bus.py) and keeps them there until cancelled.

It reaches the API server through lightkube's AsyncClient, on the one event loop; every call
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


class LightkubeLeases:
    """kube/slots.py's LeaseApi on lightkube: the API server's answers mapped to three kinds."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    async def _call(self, coro: Any) -> Any:
        from lightkube import ApiError  # imported here: the daemon's side never loads lightkube

        try:
            return await coro
        except ApiError as err:
            code = err.status.code if err.status is not None else 0
            if code == 409:
                raise Conflict(str(err)) from None
            if code == 404:
                raise LookupError(str(err)) from None
            if code in (401, 403) or 400 <= (code or 0) < 500:
                raise Forbidden(f"{code} {err.status.reason or ''}: {err}".strip()) from None
            raise Unreachable(f"{code}: {err}") from None
        except (Conflict, Forbidden, Unreachable, LookupError):
            raise
        except Exception as err:  # connection refused, TLS, timeout: no answer at all
            raise Unreachable(f"{type(err).__name__}: {err}") from None

    @staticmethod
    def _record(lease: Any) -> LeaseRecord:
        spec = lease.to_dict().get("spec", {})
        return LeaseRecord(holder=spec.get("holderIdentity") or "", duration=int(spec.get("leaseDurationSeconds") or 0),
                           renew=str(spec.get("renewTime") or ""), acquire=str(spec.get("acquireTime") or ""),
                           transitions=int(spec.get("leaseTransitions") or 0),
                           version=lease.metadata.resourceVersion or "")

    def _lease(self, name: str, record: LeaseRecord) -> Any:
        from lightkube.resources.coordination_v1 import Lease

        spec: dict[str, object] = {"holderIdentity": record.holder or None,
                                   "leaseDurationSeconds": record.duration,
                                   "leaseTransitions": record.transitions}
        if record.renew:
            spec["renewTime"] = record.renew
        if record.acquire:
            spec["acquireTime"] = record.acquire
        metadata: dict[str, object] = {"name": name, "namespace": self.namespace,
                                       "labels": {"app.kubernetes.io/managed-by": "nodemedic"}}
        if record.version:
            metadata["resourceVersion"] = record.version  # optimistic concurrency: 409 if it moved
        return Lease.from_dict({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                "metadata": metadata, "spec": spec})

    async def get(self, name: str) -> LeaseRecord | None:
        from lightkube.resources.coordination_v1 import Lease

        try:
            return self._record(await self._call(self.client.get(Lease, name, namespace=self.namespace)))
        except LookupError:
            return None

    async def create(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        try:
            return self._record(await self._call(self.client.create(self._lease(name, lease))))
        except LookupError as err:  # the namespace does not exist
            raise Forbidden(f"namespace {self.namespace!r} not found: {err}") from None

    async def replace(self, name: str, lease: LeaseRecord) -> LeaseRecord:
        try:
            return self._record(await self._call(self.client.replace(self._lease(name, lease))))
        except LookupError:  # deleted since we read it: somebody else's doing, as a conflict
            raise Conflict(f"lease {name} was deleted") from None

    async def changes(self) -> AsyncIterator[None]:
        from lightkube.resources.coordination_v1 import Lease

        async for _op, _obj in self.client.watch(Lease, namespace=self.namespace):
            yield None


class RestLeases:
    """kube/slots.py's LeaseApi over a plain JSON client: any object with
    `async request(method, path, body=None)` returning the parsed answer and raising an exception
    with an int `.status` for an error status (nodemedic.kube.api.Api), anything else for no
    answer. Without a watch on such a client, `changes()` lists the slots every few seconds,
    and only while a request waits (kube/slots.py runs it only then)."""

    POLL = 5.0

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return await self.client.request(method, path, body)
        except Exception as err:  # noqa: BLE001 - sorted into the three kinds the slots know
            status = getattr(err, "status", None)
            if not isinstance(status, int):
                raise Unreachable(f"{type(err).__name__}: {err}") from None
            if status == 409:
                raise Conflict(str(err)) from None
            if status == 404:
                raise LookupError(str(err)) from None
            if 400 <= status < 500:
                raise Forbidden(str(err)) from None
            raise Unreachable(str(err)) from None

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
        seen: dict[str, str] | None = None
        while True:
            listed = await self._call("GET", self.base)
            now = {str(item["metadata"]["name"]): str(item["metadata"].get("resourceVersion"))
                   for item in (listed or {}).get("items", [])}
            if now != seen:
                seen = now
                yield None
            await asyncio.sleep(self.POLL)


def leases_for(client: Any, namespace: str) -> Any:
    """The LeaseApi for `client`: lightkube's AsyncClient, a plain JSON client, or None."""
    if client is None:
        return _NoClient()
    if type(client).__module__.startswith("lightkube"):
        return LightkubeLeases(client, namespace)
    return RestLeases(client, namespace)


def node_name(settings: Any) -> str:
    """kubernetes.node_name when the configuration has it (h15a's block), else the host name
    the kubelet registers by default."""
    kubernetes = getattr(settings, "kubernetes", None)
    return getattr(kubernetes, "node_name", "") or socket.gethostname().lower()


async def serve_fleet(bus: MessageBus, client: Any, settings: Any, me: str | None = None) -> None:
    """Own org.nodemedic.Kube1 on `bus` and answer slot requests until cancelled. `client` is a
    lightkube AsyncClient or a plain JSON client (see RestLeases); None: no usable kubeconfig,
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
