"""The fleet guard's D-Bus service: org.nodemedic.Kube1 at /org/nodemedic/Kube1 on the system
bus, owned by nodemedic-kube.service, called by the repair daemon (engine/fleet.py) before a
disruptive or destructive step. Only root may call it (units/org.nodemedic.Kube1.conf).

No `from __future__ import annotations` here: dbus-next reads the D-Bus signatures from the
annotations at runtime.
"""

from dbus_next.service import ServiceInterface, method, signal

from nodemedic.kube.slots import Slots

BUS_NAME = "org.nodemedic.Kube1"
OBJECT_PATH = "/org/nodemedic/Kube1"
INTERFACE = "org.nodemedic.Kube1"


class KubeInterface(ServiceInterface):
    def __init__(self, slots: Slots) -> None:
        super().__init__(INTERFACE)
        self.slots = slots

    @method()
    async def AcquireSlot(self, problem: "s", step: "s") -> "bass":  # noqa: F821, N802
        # Never blocks on a free slot: a refusal is an answer (with the holders and the reason),
        # and SlotsChanged says when asking again may succeed.
        answer = await self.slots.acquire(problem)
        return [answer.granted, list(answer.holders), answer.reason]

    @method()
    async def ReleaseSlot(self, problem: "s") -> None:  # noqa: F821, N802
        await self.slots.release(problem)

    @signal()
    def SlotsChanged(self) -> None:  # noqa: N802
        return None
