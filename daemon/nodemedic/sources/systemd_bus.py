"""systemd over D-Bus: the one module that knows dbus-next.

Signals are only a hint that something changed; the state is always re-read from the manager,
so a lost or reordered signal can never leave nodemedic with a wrong picture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus

from nodemedic.sources.events import UnitChanged

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"


class BusError(Exception):
    """A D-Bus call failed or the bus went away."""


class JobFailed(BusError):
    """systemd ran the job and it did not end in "done" (`result` says how it ended), or did not
    end in time (`result` is "")."""

    def __init__(self, message: str, result: str = "") -> None:
        super().__init__(message)
        self.result = result


class JobRunner(Protocol):
    async def unit_job(self, verb: str, unit: str, timeout: float) -> str: ...


async def run_job(bus: JobRunner, verb: str, unit: str, timeout: float) -> None:
    """The one way to run a unit job: RestartUnit/StartUnit/StopUnit and wait for it; any end but
    "done" (failed, timeout, canceled, dependency, skipped) raises JobFailed, as does no end in
    `timeout`. A caller that leaves the result to a live probe catches JobFailed and says so."""
    try:
        result = await bus.unit_job(verb, unit, timeout)
    except TimeoutError:
        raise JobFailed(f"{verb} {unit}: no end of the job within {timeout:.0f}s") from None
    if result != "done":
        raise JobFailed(f"{verb} {unit}: job {result}", result)


class SystemdBus:
    def __init__(self) -> None:
        self._bus: MessageBus | None = None
        self._paths: dict[str, str] = {}  # unit object path -> unit name
        self._jobs: dict[str, asyncio.Future[str]] = {}
        # JobRemoved can arrive before the reply that names the job: keep such results here.
        self._finished: dict[str, str] = {}
        self._on_change: Callable[[str], None] = lambda _unit: None

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    async def connect(self, units: tuple[str, ...], on_change: Callable[[str], None]) -> None:
        """Connect, subscribe to the manager, and watch `units`; `on_change(unit)` on any signal."""
        self._on_change = on_change
        try:
            self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, EOFError) as err:
            raise BusError(f"cannot connect to the system bus: {err}") from err
        self._bus.add_message_handler(self._on_message)
        await self._call(MANAGER_PATH, MANAGER, "Subscribe")
        await self._add_match(f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'")
        for unit in units:
            [path] = await self._call(MANAGER_PATH, MANAGER, "LoadUnit", "s", [unit])
            self._paths[path] = unit
            await self._add_match(f"type='signal',sender='{SYSTEMD}',path='{path}',"
                                  f"interface='{PROPERTIES}',member='PropertiesChanged'")

    async def wait_disconnected(self) -> None:
        """Return when the bus is gone. dbus-next re-raises whatever broke the connection (EOF,
        a reset socket…); for us every such cause is the same event: the bus went away."""
        if self._bus is not None:
            try:
                await self._bus.wait_for_disconnect()
            except Exception as err:
                raise BusError(f"system bus lost: {err or type(err).__name__}") from err

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
        for future in self._jobs.values():
            if not future.done():
                future.set_exception(BusError("bus closed"))
        self._jobs.clear()

    async def unit_state(self, unit: str) -> UnitChanged:
        [path] = await self._call(MANAGER_PATH, MANAGER, "LoadUnit", "s", [unit])
        [props] = await self._call(path, PROPERTIES, "GetAll", "s", ["org.freedesktop.systemd1.Unit"])
        service: dict[str, Any] = {}
        if unit.endswith(".service"):
            [service] = await self._call(path, PROPERTIES, "GetAll", "s", ["org.freedesktop.systemd1.Service"])
        return UnitChanged(unit=unit, active_state=props["ActiveState"].value, sub_state=props["SubState"].value,
                           n_restarts=int(service["NRestarts"].value) if "NRestarts" in service else 0,
                           result=service["Result"].value if "Result" in service else "",
                           active_since_us=int(props["ActiveEnterTimestampMonotonic"].value)
                           if "ActiveEnterTimestampMonotonic" in props else 0)

    async def unit_job(self, verb: str, unit: str, timeout: float) -> str:
        """RestartUnit/StartUnit/StopUnit and wait for the job; returns systemd's job result."""
        if verb not in ("RestartUnit", "StartUnit", "StopUnit", "TryRestartUnit"):
            raise ValueError(verb)
        loop = asyncio.get_running_loop()
        [job] = await self._call(MANAGER_PATH, MANAGER, verb, "ss", [unit, "replace"])
        if job in self._finished:
            return self._finished.pop(job)
        future = self._jobs.setdefault(job, loop.create_future())
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._jobs.pop(job, None)

    async def reset_failed(self, unit: str) -> None:
        """ResetFailedUnit: forget the failed state and the start-limit count (`systemctl
        reset-failed`), so a deliberate fresh start is not refused for earlier crashes."""
        await self._call(MANAGER_PATH, MANAGER, "ResetFailedUnit", "s", [unit])

    async def _add_match(self, rule: str) -> None:
        await self._call("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", [rule],
                         destination="org.freedesktop.DBus")

    async def _call(self, path: str, interface: str, member: str, signature: str = "",
                    body: list[Any] | None = None, destination: str = SYSTEMD) -> list[Any]:
        if self._bus is None or not self._bus.connected:
            raise BusError("not connected to the system bus")
        try:
            reply = await self._bus.call(Message(destination=destination, path=path, interface=interface,
                                                 member=member, signature=signature, body=body or []))
        except (OSError, EOFError) as err:
            raise BusError(f"{member}: {err}") from err
        if reply is None or reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply is not None and reply.body else "no reply"
            raise BusError(f"{member} failed: {reply.error_name if reply else ''} {detail}".strip())
        return list(reply.body)

    def _on_message(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        if message.member == "JobRemoved" and message.interface == MANAGER:
            _id, job, unit, result = message.body
            future = self._jobs.get(job)
            if future is not None and not future.done():
                future.set_result(result)
            elif future is None:
                self._finished[job] = result
                while len(self._finished) > 64:  # jobs of others, nobody will ask for them
                    self._finished.pop(next(iter(self._finished)))
            if unit in self._paths.values():
                self._on_change(unit)
        elif message.member == "PropertiesChanged" and message.path in self._paths:
            self._on_change(self._paths[message.path])
