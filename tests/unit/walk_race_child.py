"""Child side of the safety module's race tests: runs inside a private mount namespace
(`unshare --mount --propagation private`, see mountns.py), so the bind mounts it makes vanish
with it and never reach the host.

It reads JSON plans on stdin, one a line. For each it removes a tree (or one file, or writes one
file, or makes a directory) with nodemedic's real code while a racer (inside the hook,
deterministically, and/or in a thread, concurrently) mounts and renames, answers one JSON line
(the outcome and what the racer managed to do) and detaches the mounts it made. The parent
judges the property on the real files from the host's namespace, where none of these mounts
exist. One process serves many plans: a hypothesis run does not pay an interpreter start per
example.

Plan: {"scenario": "walk" | "ingest" | "file" | "write" | "mkdir", "top": path, "guard": [protected paths],
       "trigger": n,      # the n-th hooked call fires the racer; 0 = before the walk
       "on": "remove" | "create" | "opendir",  # which calls are hooked and counted: unlink/rmdir
                          # (the default), os.open with O_CREAT or mkdir, os.open with O_DIRECTORY
       "data": text,      # what "write" writes
       "sync": [action],  # done inside the hook, before that call runs
       "racer": [action], # done by a thread started at the trigger, `pause` seconds apart
       "pause": seconds, "mounts": [[source, target]] (made before the walk), "root": node root}
Action: ["mount", source, target] | ["move", source, target] | ["swap-link", path, away, link_to]
      | ["move-here", target]: rename the directory the walk is removing from to `target`
      | ["mount-unvisited", source, [candidate dirs]]: bind-mount onto the first candidate that is
        not the directory the walk is in (nor one of its ancestors), as the reported attack did.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import sys
import threading
import time
import traceback

MS_BIND = 4096
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def bind_mount(source: str, target: str) -> None:
    if _libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def mountinfo() -> list[tuple[int, str]]:
    with open("/proc/self/mountinfo") as f:
        return [(int(line.split()[0]), line.split()[4]) for line in f]


BASE_MOUNTS = {mount for mount, _point in mountinfo()}


def detach_all() -> None:
    """Detach every mount a plan made, wherever a rename has taken its mount point since."""
    for mount, point in reversed(mountinfo()):
        if mount not in BASE_MOUNTS:
            _libc.umount2(point.encode(), MNT_DETACH)


class Racer:
    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.done: list[list] = []  # the actions that took effect
        self.failed: list[str] = []  # the ones the walk's progress made impossible (gone, …)
        self.calls = 0
        self.here: str | None = None  # where the walk last removed something
        self.before: list[str] = []  # what the walk removed before the racer fired (real paths)
        self.thread: threading.Thread | None = None

    def act(self, action: list, here: str | None) -> None:
        kind = action[0]
        try:
            if kind == "mount":
                bind_mount(action[1], action[2])
            elif kind == "mount-unvisited":
                target = next(c for c in action[2] if here is None or not (here + "/").startswith(c + "/"))
                bind_mount(action[1], target)
                action = ["mount", action[1], target]
            elif kind == "move":
                os.rename(action[1], action[2])
            elif kind == "move-here":  # the directory the walk is removing from right now
                source = here if here is not None else self.here
                if source is None or not source.startswith(self.plan["top"] + "/"):
                    raise OSError(f"the walk is not inside {self.plan['top']} but at {source}")
                os.rename(source, action[1])
                action = ["move", source, action[1]]
            elif kind == "swap-link":
                os.rename(action[1], action[2])
                os.symlink(action[3], action[1])
            else:
                raise ValueError(kind)
        except (OSError, StopIteration) as err:
            self.failed.append(f"{action}: {err!r}")
            return
        self.done.append(action)

    def run_thread(self) -> None:
        for action in self.plan.get("racer", []):
            self.act(action, None)
            time.sleep(self.plan.get("pause", 0))

    def fire(self, here: str | None) -> None:
        for action in self.plan.get("sync", []):
            self.act(action, here)
        if self.plan.get("racer"):
            self.thread = threading.Thread(target=self.run_thread)
            self.thread.start()

    def hook(self, real, counts=None):
        def wrapped(path, *args, dir_fd=None, **kwargs):
            if counts is not None and not counts(*args):
                return real(path, *args, dir_fd=dir_fd, **kwargs)
            self.calls += 1
            here = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.path.dirname(path)
            self.here = here
            if self.calls == self.plan.get("trigger", 1):
                self.fire(here)
            elif self.calls < self.plan.get("trigger", 1):  # nothing has moved yet: the path is true
                self.before.append(os.path.join(here, os.path.basename(path)))
            return real(path, *args, dir_fd=dir_fd, **kwargs)
        return wrapped


def walk(plan: dict, racer: Racer) -> list[str]:
    from nodemedic.safety import Guard, remove_tree

    return remove_tree(Guard.from_paths(plan["guard"]), plan["top"])


def ingest(plan: dict, racer: Racer) -> list[str]:
    from nodemedic.config import load_config
    from nodemedic.hostroot import HostRoot
    from nodemedic.repairs.context import RepairContext
    from nodemedic.repairs.ingest import RemoveStaleIngests
    from nodemedic.safety import Guard
    from nodemedic.state import EngineState

    root = HostRoot(plan["root"])
    guard = Guard.from_paths(plan["guard"])
    ctx = RepairContext(load_config(root).settings, root, guard, None, None, EngineState())  # type: ignore[arg-type]
    return [asyncio.run(RemoveStaleIngests().apply(ctx))]


def remove_one(plan: dict, racer: Racer) -> list[str]:
    from nodemedic.safety import Guard, remove_file

    return [str(remove_file(Guard.from_paths(plan["guard"]), plan["top"]))]


def write(plan: dict, racer: Racer) -> list[str]:
    from nodemedic.safety import Guard, atomic_write

    atomic_write(Guard.from_paths(plan["guard"]), plan["top"], plan["data"].encode())
    return [plan["top"]]


def make_dir(plan: dict, racer: Racer) -> list[str]:
    from nodemedic.safety import Guard, ensure_dir

    ensure_dir(Guard.from_paths(plan["guard"]), plan["top"])
    return [plan["top"]]


SCENARIOS = {"walk": walk, "ingest": ingest, "file": remove_one, "write": write, "mkdir": make_dir}


def hooked(racer: Racer, on: str) -> dict[str, object]:
    """The os functions to replace for plan["on"], each by the racer's hook."""
    if on == "remove":
        return {"unlink": racer.hook(os.unlink), "rmdir": racer.hook(os.rmdir)}
    if on == "create":
        return {"open": racer.hook(os.open, lambda flags, *_: bool(flags & os.O_CREAT)),
                "mkdir": racer.hook(os.mkdir)}
    if on == "opendir":
        return {"open": racer.hook(os.open, lambda flags, *_: bool(flags & os.O_DIRECTORY))}
    raise ValueError(on)


def run(plan: dict) -> dict:
    racer = Racer(plan)
    for source, target in plan.get("mounts", []):
        bind_mount(source, target)
    hooks = hooked(racer, plan.get("on", "remove"))
    real = {name: getattr(os, name) for name in hooks}
    for name, hook in hooks.items():
        setattr(os, name, hook)
    result: dict = {}
    try:
        if plan.get("trigger", 1) == 0:
            racer.fire(None)
        result["returned"] = SCENARIOS[plan["scenario"]](plan, racer)
        result["outcome"] = "completed"
    except Exception as err:  # the property: UnsafeOperation, or a crash the parent reports
        result["outcome"] = "refused" if type(err).__name__ == "UnsafeOperation" else "crashed"
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()
    finally:
        if racer.thread is not None:
            racer.thread.join()
        for name, function in real.items():
            setattr(os, name, function)
        detach_all()
    result["done"], result["failed"], result["calls"] = racer.done, racer.failed, racer.calls
    result["before"] = racer.before
    return result


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
