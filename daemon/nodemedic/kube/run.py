"""`nodemedic kube run`: what nodemedic-kube.service runs. Follows the daemon over D-Bus
(ProblemChanged, Details()) and keeps the Node's conditions and Events in step with it.

One asyncio loop, no threads. It sleeps until the daemon signals a transition, a retry is due
or the heartbeat is: nothing polls. Every fault (API server away, 403, 409, 5xx, a broken
kubeconfig, the daemon not running, the Node not registered yet) is one journal entry when it
starts and one when it ends, never one per try, and never a crash.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus

from nodemedic.journal import DEBUG, NOTICE, WARNING, Kind, log
from nodemedic.kube import conditions, events
from nodemedic.kube.api import Api, ApiStatus, ApiUnreachable, KubeconfigError, load_kubeconfig
from nodemedic.kube.conditions import ProblemView
from nodemedic.problems import problem_class
from nodemedic.report.dbus_api import BUS_NAME, INTERFACE, OBJECT_PATH

HEARTBEAT = 240.0  # a condition's lastHeartbeatTime is never older than this while all is well
RETRY_MIN, RETRY_MAX = 1.0, 30.0
PENDING_EVENTS = 64  # transitions kept while the API server is away, newest win


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: str
    node_name: str
    handoff: bool


def default_node_name() -> str:
    """What the kubelet registers without --hostname-override: the hostname, lower-cased."""
    return socket.gethostname().lower()


@dataclass
class Transition:
    problem: str
    state: str
    at: float
    seq: int = 0  # the order it arrived in: KubeSide.received when it came


@dataclass
class Outage:
    """Said once when it starts, once when it ends."""

    current: str | None = None
    since: float = 0.0

    def trouble(self, what: str) -> None:
        if self.current is None:
            self.since = time.monotonic()
            log(Kind.KUBE_TROUBLE, f"cluster side: {what}; retrying, local repairs are not affected", WARNING)
        self.current = what

    def over(self) -> None:
        if self.current is not None:
            log(Kind.KUBE_RECOVERED, f"cluster side: back after {time.monotonic() - self.since:.0f}s "
                f"(last trouble: {self.current})", NOTICE)
            self.current = None


@dataclass
class KubeSide:
    settings: KubeSettings
    api: Api | None = None
    node_uid: str | None = None
    node_conditions: list[dict[str, Any]] | None = None
    problems: list[ProblemView] = field(default_factory=list)
    daemon_present: bool = False
    pending: deque[Transition] = field(default_factory=lambda: deque(maxlen=PENDING_EVENTS))  # for Events
    unshown: deque[Transition] = field(default_factory=lambda: deque(maxlen=PENDING_EVENTS))  # for conditions
    last_sent: float = 0.0
    outage: Outage = field(default_factory=Outage)  # the API server (and the kubeconfig)
    bus_outage: Outage = field(default_factory=Outage)  # the system bus: its own, not the API's
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    bus: MessageBus | None = None

    def __post_init__(self) -> None:
        self.signalled = 0.0  # when the daemon's last ProblemChanged arrived (monotonic)
        self.received = 0  # ProblemChanged signals so far; a Transition's seq
        self._asked = 0  # the serial of the Details() call on its way
        self._covered = 0  # `received` when the last answer was taken in
        self.recorder = events.Recorder(self.settings.node_name)
        self.host = self.settings.node_name
        self._dropped_said = 0

    # -- D-Bus: the daemon -------------------------------------------------------------------

    async def follow_daemon(self) -> None:
        """Stay subscribed to the daemon's signals; reconnect when the bus goes away."""
        delay = RETRY_MIN
        while True:
            try:
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
                bus.add_message_handler(self._on_message)
                for rule in (f"type='signal',sender='{BUS_NAME}',interface='{INTERFACE}',member='ProblemChanged'",
                             f"type='signal',interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                             f"arg0='{BUS_NAME}'"):
                    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                           body=[rule]))
                self.bus = bus
                self.bus_outage.over()
                self.wake.set()  # read the daemon's state now that signals cannot be missed
                delay = RETRY_MIN
                await bus.wait_for_disconnect()
            except (OSError, EOFError) as err:
                self._bus_gone(err)
            self.bus = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _bus_gone(self, err: BaseException) -> None:
        self.bus_outage.trouble(f"system bus unavailable: {str(err) or 'the connection was closed'}")

    def _on_message(self, message: Message) -> bool:
        if message.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR):
            # The answer covers the signals sent before it, and only those. Signals read from
            # the socket with it are handled before the awaiting round resumes, so the count
            # is taken here, not there.
            if self._asked and message.reply_serial == self._asked:
                self._covered = self.received
            return False
        if message.message_type != MessageType.SIGNAL:
            return False
        if message.member == "ProblemChanged" and message.interface == INTERFACE and len(message.body) == 2:
            self.received += 1
            transition = Transition(str(message.body[0]), str(message.body[1]), time.time(), self.received)
            self.pending.append(transition)
            self.unshown.append(transition)
            self.signalled = time.monotonic()
            self.wake.set()
        elif message.member == "NameOwnerChanged":
            self.wake.set()  # the daemon started or stopped: read it again
        return False

    async def read_daemon(self) -> int:
        """Read Details(): the number of signals the view covers. Without an answer the view
        is the last one, and so is what it covers: a signal waits for a read that knows it."""
        bus = self.bus
        # A bus already gone would never answer (dbus-next fails only the calls it has when
        # it goes); follow_daemon is about to replace it.
        if bus is None or not bus.connected:
            return self._covered
        ask = Message(destination=BUS_NAME, path=OBJECT_PATH, interface=INTERFACE, member="Details",
                      serial=bus.next_serial())
        self._asked = ask.serial
        try:
            reply = await bus.call(ask)
        except (OSError, EOFError) as err:  # the bus went away on the way: follow_daemon reconnects
            self._bus_gone(err)
            return self._covered
        finally:
            self._asked = 0
        if reply.message_type == MessageType.ERROR:
            # Not running (or too old for Details): keep the last view and stop the heartbeat,
            # so the conditions' lastHeartbeatTime shows they are no longer looked after.
            self.daemon_present = False
            return self._covered
        data = json.loads(reply.body[0])
        self.problems = [ProblemView.from_details(item) for item in data.get("problems", [])]
        self.daemon_present = True
        return self._covered

    # -- the API server ----------------------------------------------------------------------

    def _client(self) -> Api:
        if self.api is None:
            self.api = Api(load_kubeconfig(self.settings.kubeconfig))
        return self.api

    async def _node(self, api: Api) -> bool:
        if self.node_uid is not None and self.node_conditions is not None:
            return True
        try:
            node = await api.node(self.settings.node_name)
        except ApiStatus as err:
            if err.status == 404:
                self.outage.trouble(f"Node {self.settings.node_name} is not registered yet; waiting for it")
                return False
            raise
        self._seen(node)
        return True

    def _seen(self, node: dict[str, Any]) -> None:
        self.node_uid = node.get("metadata", {}).get("uid")
        self.node_conditions = list(node.get("status", {}).get("conditions") or [])

    async def sync(self) -> bool:
        """One round: the daemon's view to the Node. True when everything is in step."""
        api = self._client()
        started = time.monotonic()
        seen = await self.read_daemon()
        read = time.monotonic()
        # Details() describes every transition whose signal came before its answer (the daemon
        # sends both on one connection, in order). One that came after it (the ladder's step
        # starting just after the confirmation, even in the same read from the socket) waits
        # for the next round and its fresh read; its signal has set `wake`, so that round
        # comes at once.
        if not await self._node(api):
            return False
        # Every transition shows on the Node, in order, even one Details() is already past: the
        # daemon, busy with the step, may answer only after a placeholder healed in 30 ms, and
        # a problem confirmed and healed must still be seen (a watch, `kubectl get -w`).
        while self.unshown and self.unshown[0].seq <= seen:
            await self._send(api, self._as_of(self.unshown[0]), False, started, read)
            self.unshown.popleft()
        now = time.time()
        heartbeat = self.daemon_present and now - self.last_sent >= HEARTBEAT
        await self._send(api, self.problems, heartbeat, started, read)
        await self.send_events(api, seen)
        return True

    def _as_of(self, t: Transition) -> list[ProblemView]:
        """The daemon's problems as they were at transition `t`: Details() with t's phase."""
        views = [p for p in self.problems if p.problem != t.problem]
        mine = next((p for p in self.problems if p.problem == t.problem), None)
        views.append(replace(mine, phase=t.state) if mine is not None
                     else ProblemView(t.problem, problem_class(t.problem), t.state))
        return views

    async def _send(self, api: Api, problems: list[ProblemView], heartbeat: bool, started: float,
                    read: float) -> None:
        assert self.node_conditions is not None
        now = time.time()
        want = conditions.wanted(problems, self.settings.handoff)
        body = conditions.patch(self.node_conditions, want, events.rfc3339(now), heartbeat)
        if body is None:
            if heartbeat:
                self.last_sent = now
            return
        try:
            self._seen(await api.patch_node_status(self.settings.node_name, body))
        except ApiStatus as err:
            if err.status == 404:  # the Node was deleted: wait for it to come back
                self.node_uid = self.node_conditions = None
            raise
        self.last_sent = now
        done = time.monotonic()
        log(Kind.KUBE_SENT, f"cluster side: Node conditions sent ({len(body['status']['conditions'])} changed)",
            DEBUG, details_ms=f"{(read - started) * 1000:.1f}", patch_ms=f"{(done - read) * 1000:.1f}",
            since_signal_ms=f"{(done - self.signalled) * 1000:.1f}" if self.signalled else None)

    async def send_events(self, api: Api, seen: int) -> None:
        by_problem = {p.problem: p for p in self.problems}
        while self.pending and self.pending[0].seq <= seen:
            t = self.pending[0]
            reason_type = events.REASONS.get(t.state)
            if reason_type is None or self.node_uid is None:
                self.pending.popleft()
                continue
            reason, type_ = reason_type
            view = by_problem.get(t.problem)
            if t.state == "healed" or view is None:
                state = f"{t.problem} {t.state}"
            else:
                # Details() is read after the signal and may be a step further (a placeholder
                # heals within a second); the record keeps the step being or last run, which
                # is the one this transition started.
                state = replace(view, phase=t.state).state()
            message = events.message_for(t.problem, state)
            action = self.recorder.record(reason, type_, message, t.at)
            if action is None:
                self.pending.popleft()
                if self.recorder.dropped > self._dropped_said:
                    log(Kind.KUBE_TROUBLE, f"cluster side: Event rate limit reached; dropped {reason} for "
                        f"{t.problem} ({self.recorder.dropped} so far)", WARNING)
                    self._dropped_said = self.recorder.dropped * 2  # say it again at twice as many
                continue
            try:
                if action.kind == "create":
                    await api.create_event(events.event_body(action, self.settings.node_name, self.node_uid,
                                                             reason, type_, message, self.host))
                else:
                    await api.patch_event("default", action.name, events.event_patch(action))
            except ApiStatus as err:
                if err.status in (404, 409):  # lost on the server, or the name taken: start over
                    self.recorder.forget(action.name)
                    continue  # the same transition again, as a new Event (the bucket paid once more)
                raise
            self.pending.popleft()

    async def run(self) -> None:
        follower = asyncio.ensure_future(self.follow_daemon())
        delay = RETRY_MIN
        try:
            while True:
                self.wake.clear()
                try:
                    in_step = await self.sync()
                except (ApiUnreachable, ApiStatus, KubeconfigError) as err:
                    if isinstance(err, KubeconfigError):
                        self.api = None  # read it again next time: it may have been fixed
                    # After an outage the Node gets the daemon's state as it is then, not a
                    # replay of every step in between (the Events still tell them).
                    self.unshown.clear()
                    self.outage.trouble(str(err))
                    in_step = False
                if in_step:
                    self.outage.over()
                    delay = RETRY_MIN
                    timeout = HEARTBEAT if self.daemon_present else None
                else:
                    timeout, delay = delay, min(delay * 2, RETRY_MAX)
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            follower.cancel()


async def purge(settings: KubeSettings) -> str:
    """Remove nodemedic's own conditions from the Node (purge, or kubernetes.enabled off)."""
    api = Api(load_kubeconfig(settings.kubeconfig))
    try:
        node = await api.node(settings.node_name)
    except ApiStatus as err:
        if err.status == 404:
            return f"Node {settings.node_name} does not exist: nothing to remove"
        raise
    body = conditions.removal(node.get("status", {}).get("conditions") or [])
    if body is None:
        return f"Node {settings.node_name} carries no condition of nodemedic's"
    await api.patch_node_status(settings.node_name, body)
    removed = ", ".join(item["type"] for item in body["status"]["conditions"])
    return f"removed from Node {settings.node_name}: {removed}"
