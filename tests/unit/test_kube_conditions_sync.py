"""KubeSide.sync (nodemedic/kube/run.py) against an API stand-in: the Node not registered yet is
waited for (one journal entry), then the conditions are written; an outage is said once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from dbus_next import Message, MessageType

from nodemedic.kube import run as kube_run
from nodemedic.kube.api import ApiStatus, ApiUnreachable
from nodemedic.kube.conditions import ProblemView
from nodemedic.kube.run import KubeSettings, KubeSide
from nodemedic.problems import ProblemClass
from nodemedic.report.dbus_api import INTERFACE, OBJECT_PATH


class ApiStandin:
    """Stands in for the API server: a Node that may not exist yet, and a switch for outages."""

    def __init__(self) -> None:
        self.node_obj: dict[str, Any] | None = None
        self.down = False
        self.patches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def _check(self) -> None:
        if self.down:
            raise ApiUnreachable("connection refused")

    async def node(self, name: str) -> dict[str, Any]:
        self._check()
        if self.node_obj is None:
            raise ApiStatus(404, {"message": f'nodes "{name}" not found'})
        return self.node_obj

    async def patch_node_status(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.node_obj is not None
        self.patches.append(body)
        conds = {c["type"]: c for c in self.node_obj["status"]["conditions"]}
        for item in body["status"]["conditions"]:
            conds.setdefault(item["type"], {}).update(item)
        self.node_obj["status"]["conditions"] = list(conds.values())
        return self.node_obj

    async def create_event(self, event: dict[str, Any]) -> None:
        self._check()
        self.events.append(event)

    async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self._check()


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(kube_run, "log", lambda kind, message, priority=6, **_: lines.append(f"{kind.name}: {message}"))
    return lines


def side(api: ApiStandin) -> KubeSide:
    s = KubeSide(KubeSettings("/nonexistent", "node-a", handoff=False))
    s.api = api  # type: ignore[assignment]
    return s


def arrive(s: KubeSide, state: str) -> None:
    """The daemon's ProblemChanged signal for cni-config-missing, taken in by KubeSide itself."""
    s._on_message(Message(message_type=MessageType.SIGNAL, path=OBJECT_PATH, interface=INTERFACE,
                          member="ProblemChanged", signature="ss", body=["cni-config-missing", state]))


class BusStandin:
    """Stands in for dbus-next's bus as its reader works: every message read from the socket in
    one go goes through the handlers (KubeSide._on_message) before the awaiting call resumes.
    Each call answers Details() with the next of `answers` (the last one again when they run
    out); `before` and `after` are the daemon's signals sent just before and just after the
    first answer, read in the same go."""

    def __init__(self, s: KubeSide, answers: list[list[dict[str, Any]]], before: tuple[str, ...] = (),
                 after: tuple[str, ...] = ()) -> None:
        self.s, self.answers, self.before, self.after, self.serial = s, answers, before, after, 100
        self.connected = True
        self.gone: Exception | None = None  # what the reader hit when the bus went away mid-call

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    async def call(self, ask: Message) -> Message:
        assert self.connected, "a call on a bus that is gone never returns"
        ask.serial = ask.serial or self.next_serial()  # as MessageBus.call does
        if self.gone is not None:
            raise self.gone
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        reply = Message(message_type=MessageType.METHOD_RETURN, reply_serial=ask.serial, signature="s",
                        body=[json.dumps({"problems": answer})])
        for state in self.before:
            arrive(self.s, state)
        self.s._on_message(reply)
        for state in self.after:
            arrive(self.s, state)
        self.before = self.after = ()
        return reply


CONFIRMED = {"problem": "cni-config-missing", "class": "network", "phase": "confirmed", "attempts": 0, "budget": 3}
RUNNING = dict(CONFIRMED, phase="repairing", step="cni-placeholder", step_index=1, steps=2, attempts=1)
HEALED = dict(RUNNING, phase="healed")


def test_waits_for_the_node_then_writes_conditions(said: list[str]) -> None:
    api = ApiStandin()
    s = side(api)
    assert asyncio.run(s.sync()) is False
    assert asyncio.run(s.sync()) is False
    assert [line for line in said if "not registered yet" in line] and len(said) == 1
    api.node_obj = {"metadata": {"uid": "u1"}, "status": {"conditions": []}}
    assert asyncio.run(s.sync()) is True
    s.outage.over()
    types = {c["type"] for c in api.node_obj["status"]["conditions"]}
    assert types == {"ContainerRuntimeProblem", "ContainerNetworkProblem", "ImageFilesystemProblem", "KubeletProblem"}
    assert said[-1].startswith("KUBE_RECOVERED")


def test_transitions_during_an_outage_are_sent_after_it(said: list[str]) -> None:
    api = ApiStandin()
    api.node_obj = {"metadata": {"uid": "u1"}, "status": {"conditions": []}}
    s = side(api)
    assert asyncio.run(s.sync())
    api.down = True
    s.problems = [ProblemView("cni-config-missing", ProblemClass.NETWORK, "exhausted", attempts=2, budget=2)]
    s.pending.append(kube_run.Transition("cni-config-missing", "exhausted", 100.0))
    for _ in range(3):
        with pytest.raises(ApiUnreachable):
            asyncio.run(s.sync())
        s.outage.trouble("connection refused")
    assert sum(1 for line in said if line.startswith("KUBE_TROUBLE")) == 1
    api.down = False
    assert asyncio.run(s.sync())
    net = next(c for c in api.node_obj["status"]["conditions"] if c["type"] == "ContainerNetworkProblem")
    assert net["status"] == "True" and net["reason"] == "CniConfigMissing"
    assert [e["reason"] for e in api.events] == ["ProblemExhausted"]
    assert api.events[0]["involvedObject"]["uid"] == "u1"


def test_a_problem_healed_before_details_is_read_still_shows_true_first(said: list[str]) -> None:
    api = ApiStandin()
    api.node_obj = {"metadata": {"uid": "u1"}, "status": {"conditions": []}}
    s = side(api)
    assert asyncio.run(s.sync())
    api.patches.clear()
    # All three signals arrived; Details() (read now) already says healed.
    s.bus = BusStandin(s, [[HEALED]])  # type: ignore[assignment]
    for state in ("confirmed", "repairing", "healed"):
        arrive(s, state)
    assert asyncio.run(s.sync())
    shown = [next(c for c in p["status"]["conditions"] if c["type"] == "ContainerNetworkProblem")
             for p in api.patches]
    assert [(c["status"], c["reason"]) for c in shown] == [
        ("True", "CniConfigMissing"), ("True", "CniConfigMissing"), ("False", "ContainerNetworkIsHealthy")]
    assert "step 1 of 2 (cni-placeholder)" in shown[1]["message"]


def test_a_transition_that_arrives_during_a_round_waits_for_a_fresh_read(said: list[str]) -> None:
    """The step starts while the round that read "confirmed" awaits the API server: its Event
    must name the step, so it is sent by the next round, after Details() is read again."""
    api = ApiStandin()
    api.node_obj = {"metadata": {"uid": "u1"}, "status": {"conditions": []}}
    s = side(api)
    assert asyncio.run(s.sync())
    create_event = api.create_event

    async def create_event_while_the_step_starts(event: dict[str, Any]) -> None:
        await create_event(event)
        if event["reason"] == "ProblemConfirmed":
            arrive(s, "repairing")

    s.bus = BusStandin(s, [[CONFIRMED], [RUNNING]])  # type: ignore[assignment]
    api.create_event = create_event_while_the_step_starts  # type: ignore[method-assign]
    arrive(s, "confirmed")
    assert asyncio.run(s.sync())
    assert [e["reason"] for e in api.events] == ["ProblemConfirmed"]
    assert [t.state for t in s.pending] == ["repairing"]
    assert asyncio.run(s.sync())
    assert [e["reason"] for e in api.events] == ["ProblemConfirmed", "RepairStepStarted"]
    assert "step 1 of 2 (cni-placeholder)" in api.events[1]["message"], api.events[1]


def test_transitions_whose_signals_came_before_details_answered_show_in_one_round_without_a_flap(
        said: list[str]) -> None:
    """confirmed, repairing and healed all signalled before Details() answered (a placeholder
    heals in 30 ms): one round shows them in order, and the Node never goes back to True."""
    api = ApiStandin()
    api.node_obj = {"metadata": {"uid": "u1"}, "status": {"conditions": []}}
    s = side(api)
    assert asyncio.run(s.sync())
    api.patches.clear()

    s.bus = BusStandin(s, [[HEALED]], before=("repairing", "healed"))  # type: ignore[assignment]
    arrive(s, "confirmed")
    assert asyncio.run(s.sync())
    assert asyncio.run(s.sync())
    shown = [next(c for c in p["status"]["conditions"] if c["type"] == "ContainerNetworkProblem")["status"]
             for p in api.patches]
    assert shown == ["True", "True", "False"], shown
    assert [e["reason"] for e in api.events] == ["ProblemConfirmed", "RepairStepStarted", "ProblemHealed"]


def test_a_signal_read_together_with_the_details_answer_waits_for_the_next_read(said: list[str]) -> None:
    """The step's signal came right after Details() answered "confirmed", in the same read from
    the socket: the answer does not describe it, so the next round shows the step."""
    api = ApiStandin()
    api.node_obj = {"metadata": {"uid": "u1"}, "status": {"conditions": []}}
    s = side(api)
    assert asyncio.run(s.sync())
    api.patches.clear()
    s.bus = BusStandin(s, [[CONFIRMED], [RUNNING]], after=("repairing",))  # type: ignore[assignment]
    arrive(s, "confirmed")
    assert asyncio.run(s.sync())
    assert [t.state for t in s.unshown] == ["repairing"] and [t.state for t in s.pending] == ["repairing"]
    assert asyncio.run(s.sync())
    shown = [next(c for c in p["status"]["conditions"] if c["type"] == "ContainerNetworkProblem")["message"]
             for p in api.patches]
    assert len(shown) == 2 and "confirmed, attempts 0 of 3" in shown[0], shown
    assert "running step 1 of 2 (cni-placeholder), attempts 1 of 3" in shown[1], shown
    assert [e["reason"] for e in api.events] == ["ProblemConfirmed", "RepairStepStarted"]
    assert "step 1 of 2 (cni-placeholder)" in api.events[1]["message"], api.events[1]


def test_a_bus_that_goes_away_during_a_round_is_waited_out_not_a_crash(said: list[str]) -> None:
    """The system bus restarts while Details() is on its way (the call fails with what the
    reader hit), or just before (a bus that is gone is not called): the round goes on with the
    last view, says the bus trouble once, and keeps the signals for the next read."""
    api = ApiStandin()
    api.node_obj = {"metadata": {"uid": "u1"}, "status": {"conditions": []}}
    s = side(api)
    bus = BusStandin(s, [[]])
    bus.gone = EOFError("the bus closed the connection")
    s.bus = bus  # type: ignore[assignment]
    arrive(s, "confirmed")
    assert asyncio.run(s.sync())
    assert [t.state for t in s.unshown] == ["confirmed"]  # not shown from a view that was never read
    bus.connected = False
    assert asyncio.run(s.sync())
    assert [line for line in said if line.startswith("KUBE_TROUBLE")] == [
        "KUBE_TROUBLE: cluster side: system bus unavailable: the bus closed the connection; retrying, "
        "local repairs are not affected"]
