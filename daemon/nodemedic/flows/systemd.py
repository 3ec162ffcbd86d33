"""The few manager calls the flows need beyond SystemdBus: reload, enable and disable unit files,
and jobs whose failure is an exception here, never a string to forget.

Kept beside the flows (a subclass, same connection) so the daemon's bus module stays as small as
the daemon needs.
"""

from __future__ import annotations

from nodemedic.sources.systemd_bus import MANAGER, MANAGER_PATH, BusError, SystemdBus


class JobFailed(BusError):
    """systemd ran the job and it did not end in "done", or did not end in time."""


class FlowBus(SystemdBus):
    async def job(self, verb: str, unit: str, timeout: float) -> None:
        try:
            result = await self.unit_job(verb, unit, timeout)
        except TimeoutError:
            raise JobFailed(f"{verb} {unit}: no end of the job within {timeout:.0f}s") from None
        if result != "done":
            raise JobFailed(f"{verb} {unit}: job {result}")

    async def reload(self) -> None:
        """daemon-reload; the D-Bus call returns once the manager has re-read its units."""
        await self._call(MANAGER_PATH, MANAGER, "Reload")

    async def enable(self, unit_file: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "EnableUnitFiles", "asbb", [[unit_file], False, False])

    async def disable(self, unit_file: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "DisableUnitFiles", "asb", [[unit_file], False])
