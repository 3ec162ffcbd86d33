"""CLI sub-commands of the one-shot flows; cli.py calls add_parsers()."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from nodemedic.config import load_config
from nodemedic.flows import EXIT_REFUSED
from nodemedic.flows.masking import Masker, secret_values
from nodemedic.flows.report import FlowReport
from nodemedic.hostroot import HostRoot

EXIT_USAGE = 2

EXIT_CODES = """exit status: 0 done (or plan printed), 1 failed (a repoint is rolled back; a join used its budget),
2 usage, 5 refused before changing anything, 6 failed and the rollback is incomplete (operator needed)"""


def _warn(message: str) -> None:
    print(f"nodemedic: warning: {message}", file=sys.stderr)


def _root(args: argparse.Namespace) -> HostRoot:
    return HostRoot(Path(args.root)) if args.root else HostRoot()


def _run(flow: Coroutine[Any, Any, int]) -> int:
    """Run a flow so that SIGINT and SIGTERM cancel it: the flow then rolls back or kills its
    child before exiting, instead of dying half-way."""

    async def main() -> int:
        task = asyncio.ensure_future(flow)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        print("nodemedic: interrupted", file=sys.stderr)
        return 130


def cmd_repoint(args: argparse.Namespace) -> int:
    from nodemedic.flows.repoint import repoint

    root = _root(args)
    settings = load_config(root, _warn).settings
    return _run(repoint(settings, root, args.target, args.dry_run, FlowReport("repoint")))


# The join command travels to the re-executed process through this inherited pipe.
ARGV_FD = "--argv-fd"
ARGV_MAX = 60_000  # below a pipe's buffer: written in full before exec, read after


def reexec_argv(args: argparse.Namespace, fd: int) -> list[str]:
    argv = [sys.executable, "-m", "nodemedic"] + (["--root", args.root] if args.root else [])
    return argv + ["join"] + (["--dry-run"] if args.dry_run else []) + [ARGV_FD, str(fd)]


def _hide_secrets_from_own_cmdline(args: argparse.Namespace, argv: list[str]) -> None:
    """journald stamps every entry with the logging process's command line (_CMDLINE), which
    would carry the token: re-execute with the join command in a pipe instead of in argv."""
    if args.argv_fd is not None or not secret_values(argv):
        return
    data = json.dumps(argv).encode()
    if len(data) > ARGV_MAX:
        raise SystemExit("nodemedic join: the join command is too long")
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    sys.stdout.flush()
    os.execv(sys.executable, reexec_argv(args, read_end))


def _argv_from_fd(fd: int) -> list[str]:
    with os.fdopen(fd, "rb") as pipe:
        argv = json.loads(pipe.read())
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise SystemExit("nodemedic join: bad command on --argv-fd")
    return argv


def cmd_join(args: argparse.Namespace) -> int:
    from nodemedic.flows.join import join

    argv = _argv_from_fd(args.argv_fd) if args.argv_fd is not None else list(args.join_command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    masker = Masker(argv)
    if not argv:
        print("nodemedic join: give the join command after --, e.g. nodemedic join -- kubeadm join ...",
              file=sys.stderr)
        return EXIT_USAGE
    if "join" not in argv[1:]:
        # A wrapper that retries with a destructive cleanup must not run `kubeadm reset` or `init`.
        print(f"nodemedic join: not a join command: {masker.command(argv)}", file=sys.stderr)
        return EXIT_REFUSED
    _hide_secrets_from_own_cmdline(args, argv)
    root = _root(args)
    settings = load_config(root, _warn).settings
    return _run(join(settings, root, argv, args.dry_run, FlowReport("join", masker)))


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `repoint` and `join`."""
    p = sub.add_parser(
        "repoint", help="move containerd's root to other storage (bind mount), verified, with rollback",
        description="Stop kubelet and containerd, copy containerd's root to TARGET (hard links, xattrs, owners, "
        "modes, sparse files), verify the copy, move the old root aside (never deleted), bind-mount TARGET at the "
        "configured root with a systemd mount unit, start containerd, warm up and check the image filesystem over "
        "CRI, start kubelet. Any failure after the stop rolls back to the old root. A symlinked root repointed to "
        "its own link target is converted to a bind mount without copying.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="TARGET", help="new location: an empty or new directory on another filesystem")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; change nothing")
    p.set_defaults(func=cmd_repoint)

    p = sub.add_parser(
        "join", help="kubeadm join with preflight, recognised failures, cleanup and retries",
        description="Preflight (CNI placeholder policy, containerd running with a warm image filesystem, cgroup "
        "driver, swap), then run the join command unchanged with its output streamed and matched against the "
        "catalogue; after a failure clean up (gentle first, aggressive only with policy.allow_destructive) and "
        "retry within join.attempts. --token, --discovery-token-ca-cert-hash and --certificate-key values are "
        "masked in everything nodemedic prints or journals.",
        usage="nodemedic join [-h] [--dry-run] -- COMMAND ...",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="run the preflight read-only and print the plan")
    p.add_argument(ARGV_FD, dest="argv_fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("join_command", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="the join command, after --, e.g. -- kubeadm join 10.0.0.1:6443 --token ...")
    p.set_defaults(func=cmd_join)
