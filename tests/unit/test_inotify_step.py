"""The inotify-limits step in a throw-away root: it raises, never lowers, and persists.

The node test of the whole ladder (tests/node/test_ladders_config.py) must change the host
kernel's global fs.inotify settings, so it runs only on a dedicated VM; this covers the step's own
logic everywhere. /proc/sys of the throw-away root is a plain directory of files here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodemedic.config import load_config
from nodemedic.hostroot import HostRoot
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.sysctl import SYSCTL_FILE, RaiseInotifyLimits
from nodemedic.safety import Guard
from nodemedic.state import EngineState
from tests.unit.helpers import write


def context(root: Path, instances: int, watches: int) -> RepairContext:
    write(root, "/proc/sys/fs/inotify/max_user_instances", f"{instances}\n")
    write(root, "/proc/sys/fs/inotify/max_user_watches", f"{watches}\n")
    write(root, "/etc/sysctl.d/.keep", "")
    settings = load_config(HostRoot(root)).settings
    return RepairContext(settings, HostRoot(root), Guard.from_paths([]), None, None, EngineState())  # type: ignore[arg-type]


def read(root: Path, absolute: str) -> str:
    return (root / absolute.lstrip("/")).read_text()


def test_low_instances_are_raised_live_and_persisted_and_higher_watches_kept(tmp_path: Path):
    root = tmp_path / "node"
    ctx = context(root, instances=128, watches=1_000_000)
    step = RaiseInotifyLimits()
    assert asyncio.run(step.needed(ctx))
    asyncio.run(step.apply(ctx))
    assert read(root, "/proc/sys/fs/inotify/max_user_instances").strip() == "8192"
    # never lowered: the operator's higher value stays, live and in the persisted file
    assert read(root, "/proc/sys/fs/inotify/max_user_watches").strip() == "1000000"
    persisted = read(root, SYSCTL_FILE)
    assert "fs.inotify.max_user_instances = 8192\n" in persisted
    assert "fs.inotify.max_user_watches = 1000000\n" in persisted
    assert not asyncio.run(step.needed(ctx))


def test_limits_already_high_enough_need_nothing(tmp_path: Path):
    root = tmp_path / "node"
    ctx = context(root, instances=8192, watches=524288)
    assert not asyncio.run(RaiseInotifyLimits().needed(ctx))
    assert not (root / SYSCTL_FILE.lstrip("/")).exists()
