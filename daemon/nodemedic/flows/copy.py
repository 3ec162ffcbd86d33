"""Copy containerd's root with GNU cp, reporting progress while it runs.

`cp --archive` keeps hard links, ownership, modes, timestamps and device nodes; the explicit
`--preserve=xattr` makes a lost xattr an error instead of a silent skip (-a alone forgives it);
`--sparse=always` keeps holes. coreutils is on every Debian node, rsync is not. Progress is the
growth of the target filesystem's used space against the source's size: cp prints nothing, and
statvfs costs nothing.

cp is started like repairs.commands.run starts a helper (argv, no shell, no NOTIFY_SOCKET), but
here, so that an interrupted repoint kills it before the rollback removes its half-done copy.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from nodemedic.flows.repoint_checks import existing_ancestor, size_text
from nodemedic.repairs.commands import child_environment


class CopyFailed(Exception):
    pass


def copy_argv(source: Path, target: Path) -> list[str]:
    # -T: copy the contents of source into target (created if missing), never source *inside* it
    return ["cp", "--archive", "--preserve=xattr", "--sparse=always", "--no-target-directory", "--",
            str(source), str(target)]


def _used(path: Path) -> int:
    st = os.statvfs(existing_ancestor(path))
    return (st.f_blocks - st.f_bfree) * st.f_frsize


async def copy_tree(source: Path, target: Path, total: int, timeout: float, interval: float,
                    progress: Callable[[str], None]) -> None:
    start = _used(target)
    process = await asyncio.create_subprocess_exec(
        *copy_argv(source, target), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=child_environment())
    task = asyncio.create_task(process.communicate())
    deadline = asyncio.get_running_loop().time() + timeout
    last = ""
    try:
        while not task.done():
            if asyncio.get_running_loop().time() > deadline:
                raise CopyFailed(f"copy did not finish within {timeout:.0f}s (repoint.copy_timeout)")
            await asyncio.wait({task}, timeout=interval)
            copied = max(0, _used(target) - start)
            percent = min(99, copied * 100 // total) if total else 99
            line = f"copying {source} to {target}: {size_text(copied)} of {size_text(total)} ({percent}%)"
            if not task.done() and line != last:
                progress(line)
                last = line
    except BaseException:
        if process.returncode is None:
            process.kill()
        await asyncio.shield(process.wait())
        task.cancel()
        raise
    _out, err = task.result()
    if process.returncode != 0:
        raise CopyFailed(f"cp exited {process.returncode}: {err.decode(errors='replace').strip()[-2000:]}")
    progress(f"copied {source} to {target}: {size_text(max(0, _used(target) - start))} (100%)")
