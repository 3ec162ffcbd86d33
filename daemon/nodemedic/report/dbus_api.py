"""nodemedic's own D-Bus service: org.nodemedic1 at /org/nodemedic1 on the system bus.

Anyone may read the properties; only root may call methods (units/org.nodemedic1.conf).
No `from __future__ import annotations` here: dbus-next reads the D-Bus signatures from the
annotations at runtime.
"""

import asyncio
from collections.abc import Callable
from typing import Protocol

from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus
from dbus_next.constants import RequestNameReply
from dbus_next.errors import DBusError
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

BUS_NAME = "org.nodemedic1"
OBJECT_PATH = "/org/nodemedic1"
INTERFACE = "org.nodemedic1"
ERROR_PREFIX = "org.nodemedic1.Error"


class Steering(Protocol):
    """What the daemon offers the API; nodemedic/controller.py implements it."""

    def api_state(self) -> str: ...
    def api_mode(self) -> str: ...
    def api_problems(self) -> list[list[object]]: ...
    def api_pause(self) -> None: ...
    def api_resume(self) -> None: ...
    def api_repair(self, problem: str) -> str: ...
    def api_plan(self, problem: str) -> list[str]: ...
    def api_forget(self, problem: str) -> None: ...
    async def api_reload(self) -> tuple[bool, list[str]]: ...
    def api_check(self, member: str, args: list[object]) -> None: ...
    def api_details(self) -> str: ...


class RefusedError(Exception):
    """A method call the daemon refuses, with a message for the operator."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class NodemedicInterface(ServiceInterface):
    def __init__(self, daemon: Steering) -> None:
        super().__init__(INTERFACE)
        self.daemon = daemon

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":  # noqa: F821, N802 - D-Bus names and signatures
        return self.daemon.api_state()

    @dbus_property(access=PropertyAccess.READ)
    def Mode(self) -> "s":  # noqa: F821, N802
        return self.daemon.api_mode()

    @dbus_property(access=PropertyAccess.READ)
    def Problems(self) -> "a(sssuxs)":  # noqa: F821, N802 - problem, state, step, attempts, last change, detail
        return self.daemon.api_problems()

    @method()
    def Pause(self) -> None:  # noqa: N802
        self.daemon.api_pause()

    @method()
    def Resume(self) -> None:  # noqa: N802
        self.daemon.api_resume()

    @method()
    def Repair(self, problem: "s") -> "s":  # noqa: F821, N802
        return self.daemon.api_repair(problem)

    @method()
    def Plan(self, problem: "s") -> "as":  # noqa: F821, F722, N802
        return self.daemon.api_plan(problem)

    @method()
    def Forget(self, problem: "s") -> None:  # noqa: F821, N802
        self.daemon.api_forget(problem)

    @method()
    async def Reload(self) -> "bas":  # noqa: F821, N802 - reloaded?, and what was applied or why not
        # Answered when the reload is over, so `nodemedic reload` (ExecReload=) reports its real
        # outcome to `systemctl reload`. A refusal is a normal reply, not a D-Bus error: raised
        # from an async method, dbus-next 0.2.3 would also log the error as a crash.
        ok, lines = await self.daemon.api_reload()
        return [ok, lines]

    @method()
    def Details(self) -> "s":  # noqa: F821, N802
        # What the cluster side (nodemedic-kube.service) needs beyond Problems: each problem's
        # class, step i of n, attempts and budget, as one JSON text, so that adding a field
        # never changes this D-Bus signature. Read-only, yet root's only (as every method but
        # Plan): nodemedic-kube.service runs as root without capabilities.
        return self.daemon.api_details()

    @signal()
    def ProblemChanged(self, problem: str, state: str) -> "ss":  # noqa: F821, N802
        return [problem, state]


class ApiServer:
    """Owns the bus name and re-acquires it after the bus comes back."""

    def __init__(self, daemon: Steering) -> None:
        self.daemon = daemon
        self.interface = NodemedicInterface(daemon)
        self._bus: MessageBus | None = None
        self.ready = asyncio.Event()

    async def run(self, on_trouble: Callable[[str], None]) -> None:
        delay = 0.5
        reported = False
        while True:
            try:
                self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
                self._bus.add_message_handler(self._refuse)
                self._bus.export(OBJECT_PATH, self.interface)
                reply = await self._bus.request_name(BUS_NAME)
                if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                    raise OSError(f"could not own {BUS_NAME}: {reply}")
                self.ready.set()
                delay, reported = 0.5, False
                await self._bus.wait_for_disconnect()
                detail = "system bus disconnected"
            except Exception as err:  # every cause is the same for us: no API until we retry
                detail = f"D-Bus API unavailable: {err or type(err).__name__}"
            self.ready.set()  # start-up must not hang on the optional API
            if not reported:  # once per outage, not once per retry
                on_trouble(detail)
                reported = True
            if self._bus is not None:
                self._bus.disconnect()
                self._bus = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _refuse(self, message: Message) -> None:
        """Refuse a bad call before it reaches the method. Raised here, a DBusError becomes a
        clean error reply; raised inside a method, dbus-next 0.2.3 also logs it as a crash."""
        if (message.message_type == MessageType.METHOD_CALL and message.path == OBJECT_PATH
                and message.interface == INTERFACE):
            try:
                self.daemon.api_check(message.member, list(message.body))
            except RefusedError as err:
                raise DBusError(f"{ERROR_PREFIX}.{err.name}", str(err)) from None

    def problem_changed(self, problem: str, state: str) -> None:
        if self._bus is not None and self._bus.connected:
            self.interface.ProblemChanged(problem, state)
            self.interface.emit_properties_changed({"State": self.interface.daemon.api_state()})

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None


# -- the client side, for the `nodemedic status/pause/resume/repair/forget` commands ----------

class NotRunning(Exception):
    """Nobody owns org.nodemedic1: the daemon is not running (or the bus is not there)."""


class Denied(Exception):
    """The bus policy refused the call: only root may steer nodemedic."""


class Refused(Exception):
    """The daemon refused the call and said why."""


async def call(member: str, signature: str = "", body: list[object] | None = None,
               interface: str = INTERFACE) -> list[object]:
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, EOFError) as err:
        raise NotRunning(f"cannot reach the system bus: {err}") from err
    try:
        reply = await bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH, interface=interface,
                                       member=member, signature=signature, body=body or []))
    finally:
        bus.disconnect()
    if reply.message_type == MessageType.ERROR:
        name = reply.error_name or ""
        text = reply.body[0] if reply.body else name
        if name in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
            raise NotRunning("nodemedic is not running")
        if name == "org.freedesktop.DBus.Error.AccessDenied":
            raise Denied("permission denied: only root may steer nodemedic")
        raise Refused(text)
    return list(reply.body)


async def properties() -> dict[str, object]:
    [props] = await call("GetAll", "s", [INTERFACE], interface="org.freedesktop.DBus.Properties")
    return {name: variant.value for name, variant in props.items()}
