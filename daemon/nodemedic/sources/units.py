"""Unit source: the state of the watched systemd units, re-read on every hint from D-Bus."""

from __future__ import annotations

import asyncio

from nodemedic.sources.events import Event, SourceTrouble, UnitChanged
from nodemedic.sources.systemd_bus import BusError, SystemdBus

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0


class UnitSource:
    def __init__(self, units: tuple[str, ...], queue: asyncio.Queue[Event], bus: SystemdBus) -> None:
        self.units = units
        self.queue = queue
        self.bus = bus
        self.ready = asyncio.Event()
        self._last: dict[str, UnitChanged] = {}
        self._pending: set[str] = set()

    async def run(self) -> None:
        delay = RECONNECT_MIN_S
        reported = False
        while True:
            try:
                await self.bus.connect(self.units, self._hint)
                for unit in self.units:
                    await self._reread(unit)
                self.ready.set()
                delay, reported = RECONNECT_MIN_S, False
                await self.bus.wait_disconnected()
                detail = "system bus disconnected"
            except BusError as err:
                detail = str(err)
            self.bus.close()
            if not reported:  # say it once per outage, not once per retry
                await self.queue.put(SourceTrouble("units", detail))
                reported = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _hint(self, unit: str) -> None:
        if unit not in self._pending:
            self._pending.add(unit)
            asyncio.get_running_loop().create_task(self._reread(unit))

    async def _reread(self, unit: str) -> None:
        self._pending.discard(unit)
        try:
            state = await self.bus.unit_state(unit)
        except BusError:
            return  # the run loop notices the disconnect and reconnects
        if self._last.get(unit) != state:
            self._last[unit] = state
            await self.queue.put(state)
