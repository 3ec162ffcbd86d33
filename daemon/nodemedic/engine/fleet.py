"""The daemon's side of the fleet guard: before a disruptive or destructive step the engine asks
nodemedic-kube.service (org.nodemedic.Kube1 on the system bus) for one of the fleet's slots, and
gives it back after the step and its verification. Safe steps never ask.

The daemon stays off the network: it only ever talks D-Bus; the Leases and the API server are
nodemedic-kube's business (kube/fleet.py). With `fleet.enabled` off (the default) the gate
admits every step without a byte on the bus. With it on, a step is held while nodemedic-kube
is not running, cannot reach the API server (fleet.when_unreachable = "hold") or has no slot
free; the episode waits (woken by SlotsChanged, with a capped backoff as a fallback) without
ever blocking the event loop, and gives up the node's repair lock while it waits, so that a
repair that needs no slot still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus

from nodemedic.config.model import Fleet

# org.nodemedic.Kube1 (kube/slot_bus.py owns it; written out here so that the daemon imports
# nothing of the cluster side)
KUBE_BUS_NAME = "org.nodemedic.Kube1"
KUBE_PATH = "/org/nodemedic/Kube1"
KUBE_INTERFACE = "org.nodemedic.Kube1"
NOT_RUNNING = "fleet guard not running (nodemedic-kube.service)"
CALL_TIMEOUT = 30.0  # nodemedic-kube answers at once or after one API call with its own timeout
RETRY_FIRST, RETRY_MAX = 2.0, 60.0  # the fallback when no SlotsChanged comes


class FleetGate:
    """admit/release for the engine; holds[problem] is the reason a problem's step waits."""

    def __init__(self, settings: Callable[[], Fleet | None] = lambda: None) -> None:
        self.settings = settings  # read at every request: a reload turns the guard on or off
        self.holds: dict[str, str] = {}
        self._held: set[str] = set()  # problems this daemon holds a slot for
        self._bus: MessageBus | None = None
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def enabled(self) -> bool:
        fleet = self.settings()
        return fleet is not None and fleet.enabled

    async def admit(self, problem: str, step: str) -> str:
        """One request: "" when the step may go, else why it is held."""
        if not self.enabled():
            return ""
        try:
            bus = await self._connect()
            reply = await asyncio.wait_for(bus.call(Message(
                destination=KUBE_BUS_NAME, path=KUBE_PATH, interface=KUBE_INTERFACE, member="AcquireSlot",
                signature="ss", body=[problem, step])), CALL_TIMEOUT)
        except TimeoutError:
            return "fleet guard did not answer"
        except (OSError, EOFError) as err:
            self._drop_bus()
            return f"fleet guard unreachable: no system bus ({err})"
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            if reply.error_name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                                    "org.freedesktop.DBus.Error.NameHasNoOwner"):
                return NOT_RUNNING
            return f"fleet guard refused: {reply.body[0] if reply.body else reply.error_name}"
        granted, holders, reason = reply.body
        if granted:
            self._held.add(problem)
            return ""
        return reason or f"waiting for a fleet slot (held by {', '.join(holders)})"

    async def wait(self, problem: str, step: str, on_hold: Callable[[str], None],
                   lock: asyncio.Lock | None = None) -> None:
        """Return once the step may go. Every new reason to wait goes to `on_hold` (the engine
        records and reports it). `lock`, held by the caller, is given up while waiting and held
        again before each new request."""
        delay = RETRY_FIRST
        reported = ""
        try:
            while True:
                self._changed.clear()  # before asking: a SlotsChanged during the call is not lost
                reason = await self.admit(problem, step)
                if not reason:
                    return
                self.holds[problem] = reason
                if reason != reported:
                    on_hold(reason)
                    reported = reason
                if lock is not None:
                    lock.release()
                try:
                    await asyncio.wait_for(self._changed.wait(), delay)
                    delay = RETRY_FIRST
                except TimeoutError:
                    delay = min(delay * 2, RETRY_MAX)
                finally:
                    if lock is not None:
                        await lock.acquire()
        except asyncio.CancelledError:
            self.release(problem)  # granted just before the cancel: give it back
            raise
        finally:
            self.holds.pop(problem, None)

    def release(self, problem: str) -> None:
        """The problem's step and its verification are over (or the episode ended): give the
        slot back. Nothing to do when none is held; never waits."""
        if problem not in self._held:
            return
        self._held.discard(problem)
        task = asyncio.get_running_loop().create_task(self._release(problem))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _release(self, problem: str) -> None:
        # If this fails nodemedic-kube is gone (it released when it went) or the lease expires.
        with contextlib.suppress(Exception):
            bus = await self._connect()
            await asyncio.wait_for(bus.call(Message(
                destination=KUBE_BUS_NAME, path=KUBE_PATH, interface=KUBE_INTERFACE, member="ReleaseSlot",
                signature="s", body=[problem])), CALL_TIMEOUT)

    async def _connect(self) -> MessageBus:
        if self._bus is not None and self._bus.connected:
            return self._bus
        self._drop_bus()
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        bus.add_message_handler(self._on_message)
        for rule in (f"type='signal',interface='{KUBE_INTERFACE}',member='SlotsChanged'",
                     # nodemedic-kube coming (back): its answer may be different now
                     "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                     f"member='NameOwnerChanged',arg0='{KUBE_BUS_NAME}'"):
            await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))
        self._bus = bus
        return bus

    def _on_message(self, message: Message) -> None:
        if message.message_type == MessageType.SIGNAL and message.member in ("SlotsChanged", "NameOwnerChanged"):
            self._changed.set()

    def _drop_bus(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    def close(self) -> None:
        self._drop_bus()
