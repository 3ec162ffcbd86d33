"""Kernel tunables as a node should see them, without writing the host's: /proc/sys is the host
kernel's (read-only in the node), so a regular file holding the wanted value is bind-mounted over
each path that differs, in the node's mount namespace only."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .node import Node


def bind_proc_sys(node: Node, values: Mapping[str, int], holder_dir: str) -> Callable[[], None]:
    """Bind `values` ({"vm/overcommit_memory": 1}, paths under /proc/sys) inside `node`, holder
    files in `holder_dir`; returns what undoes it (unmounts, then removes `holder_dir`)."""
    bound = []
    node.run(["mkdir", "-p", holder_dir])
    try:
        for key, want in values.items():
            path = f"/proc/sys/{key}"
            if int(node.read_file(path).decode().split()[0]) == want:
                continue
            holder = f"{holder_dir}/{key.replace('/', '.')}"
            node.write_file(holder, f"{want}\n")
            node.run(["mount", "--bind", holder, path])
            bound.append(path)
    except BaseException:
        _undo(node, bound, holder_dir)
        raise

    def unbind() -> None:
        _undo(node, bound, holder_dir)

    return unbind


def _undo(node: Node, bound: list[str], holder_dir: str) -> None:
    for path in reversed(bound):
        node.run(["umount", path])
    node.run(["rm", "-rf", holder_dir])
