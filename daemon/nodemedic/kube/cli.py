"""`nodemedic kube run | check | purge`: the cluster side's commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nodemedic.hostroot import HostRoot

if TYPE_CHECKING:  # run.py imports dbus-next: only for the commands that need it
    from nodemedic.kube.run import KubeSettings

EXIT_OK, EXIT_FAILED = 0, 1


def _settings(args: argparse.Namespace) -> tuple[bool, KubeSettings]:
    from nodemedic.config import load_config
    from nodemedic.kube.run import KubeSettings, default_node_name

    root = HostRoot(Path(args.root)) if args.root else HostRoot()
    k = load_config(root, lambda msg: print(f"nodemedic: warning: {msg}", file=sys.stderr)).settings.kubernetes
    kubeconfig = args.kubeconfig or k.kubeconfig
    node = args.node_name or k.node_name or default_node_name()
    return k.enabled, KubeSettings(str(root.path(kubeconfig)), node, k.handoff)


def cmd_kube_run(args: argparse.Namespace) -> int:
    from nodemedic.kube.api import ApiStatus, ApiUnreachable, KubeconfigError
    from nodemedic.kube.run import KubeSide, purge

    enabled, settings = _settings(args)
    if not enabled:
        # Turned off: take nodemedic's conditions off the Node (no one else's), then stop.
        try:
            print(f"nodemedic: kubernetes.enabled is false: {asyncio.run(purge(settings))}")
        except (ApiStatus, ApiUnreachable, KubeconfigError) as err:
            print(f"nodemedic: kubernetes.enabled is false; could not remove nodemedic's conditions: {err}",
                  file=sys.stderr)
        return EXIT_OK
    # The fleet guard (nodemedic/kube/fleet.py, serve_fleet) joins this loop once it is on main.
    asyncio.run(KubeSide(settings).run())
    return EXIT_OK


def cmd_kube_check(args: argparse.Namespace) -> int:
    from nodemedic.kube.api import Api, ApiStatus, ApiUnreachable, KubeconfigError, load_kubeconfig
    from nodemedic.kube.check import check

    _enabled, settings = _settings(args)
    try:
        api = Api(load_kubeconfig(settings.kubeconfig))
        print(f"node {settings.node_name}, credentials {settings.kubeconfig}")
        lines, essentials = asyncio.run(check(api, settings.node_name))
    except (ApiStatus, ApiUnreachable, KubeconfigError) as err:
        print(f"nodemedic: kube check: {err}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(lines))
    return EXIT_OK if essentials else EXIT_FAILED


def cmd_kube_purge(args: argparse.Namespace) -> int:
    from nodemedic.kube.api import ApiStatus, ApiUnreachable, KubeconfigError
    from nodemedic.kube.run import purge

    _enabled, settings = _settings(args)
    try:
        print(asyncio.run(purge(settings)))
    except (ApiStatus, ApiUnreachable, KubeconfigError) as err:
        print(f"nodemedic: kube purge: {err}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kube = sub.add_parser("kube", help="the cluster side: Node conditions and Events (nodemedic-kube.service)")
    actions = kube.add_subparsers(dest="kube_command", required=True, metavar="ACTION")
    for name, func, text in (
        ("run", cmd_kube_run, "follow the daemon over D-Bus and show its state on the Node (the unit runs this)"),
        ("check", cmd_kube_check, "say what the credentials allow (SelfSubjectAccessReview) and what will not work"),
        ("purge", cmd_kube_purge, "remove nodemedic's own conditions from the Node, no one else's"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("--kubeconfig", help="instead of kubernetes.kubeconfig")
        p.add_argument("--node-name", help="instead of kubernetes.node_name")
        p.set_defaults(func=func)
