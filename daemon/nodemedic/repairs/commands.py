"""Run a helper command: argv list, never a shell; a timeout; no NOTIFY_SOCKET inherited."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

# A child that inherited these could tell systemd "READY" or feed our watchdog in our name.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}


async def run(argv: list[str] | tuple[str, ...], timeout: float) -> Completed:
    if isinstance(argv, str) or not argv:
        raise TypeError("argv must be a non-empty list, never a shell string")
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=child_environment())
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Completed(tuple(argv), process.returncode or 0, out.decode(errors="replace"),
                     err.decode(errors="replace"))
