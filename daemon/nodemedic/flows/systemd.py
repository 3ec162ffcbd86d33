"""The few manager calls the flows need beyond SystemdBus: reload, enable and disable unit files,
and jobs whose failure is an exception here, never a string to forget.

Kept beside the flows (a subclass, same connection) so the daemon's bus module stays as small as
the daemon needs.
"""

from __future__ import annotations

from nodemedic.sources.systemd_bus import MANAGER, MANAGER_PATH, JobFailed, SystemdBus, run_job

__all__ = ["FlowBus", "JobFailed"]


class FlowBus(SystemdBus):
    async def job(self, verb: str, unit: str, timeout: float) -> None:
        await run_job(self, verb, unit, timeout)

    async def reload(self) -> None:
        """daemon-reload; the D-Bus call returns once the manager has re-read its units."""
        await self._call(MANAGER_PATH, MANAGER, "Reload")

    async def enable(self, unit_file: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "EnableUnitFiles", "asbb", [[unit_file], False, False])

    async def disable(self, unit_file: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "DisableUnitFiles", "asb", [[unit_file], False])
