"""`nodemedic kube run | check | purge`: the cluster side's commands. `run` serves the conditions
side (kube/run.py) and the fleet guard (kube/fleet.py) on one event loop, each when enabled."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodemedic.hostroot import HostRoot

if TYPE_CHECKING:  # run.py imports dbus-next: only for the commands that need it
    from nodemedic.config.model import Settings
    from nodemedic.kube.run import KubeSettings

EXIT_OK, EXIT_FAILED = 0, 1


def _load(args: argparse.Namespace) -> tuple[HostRoot, Settings]:
    from nodemedic.config import load_config

    root = HostRoot(Path(args.root)) if args.root else HostRoot()
    return root, load_config(root, lambda msg: print(f"nodemedic: warning: {msg}", file=sys.stderr)).settings


def _settings(args: argparse.Namespace, loaded: tuple[HostRoot, Settings] | None = None) -> tuple[bool, KubeSettings]:
    from nodemedic.kube.run import KubeSettings, default_node_name

    root, settings = loaded or _load(args)
    k = settings.kubernetes
    kubeconfig = args.kubeconfig or k.kubeconfig
    node = args.node_name or k.node_name or default_node_name()
    return k.enabled, KubeSettings(str(root.path(kubeconfig)), node, k.handoff)


def guard_kubeconfig(root: HostRoot, settings: Settings) -> str:
    """The fleet guard's credentials: fleet.kubeconfig, else kubernetes.kubeconfig."""
    return str(root.path(settings.fleet.kubeconfig or settings.kubernetes.kubeconfig))


def _guard_client(path: str) -> Any:
    """kube/api.py's Api on the guard's kubeconfig, or None (said in the journal) when it cannot
    be used: serve_fleet then holds every request, saying there is no identity."""
    from nodemedic.journal import WARNING, Kind, log
    from nodemedic.kube.api import Api, KubeconfigError, load_kubeconfig

    try:
        return Api(load_kubeconfig(path))
    except KubeconfigError as err:
        log(Kind.FLEET_TROUBLE, f"fleet guard: {err}; every disruptive step is held", WARNING)
        return None


async def _run(kube: KubeSettings, conditions: bool, settings: Settings, guard_config: str) -> None:
    """The conditions side and the fleet guard, each when enabled, on this one loop."""
    from dbus_next import BusType
    from dbus_next.aio import MessageBus

    from nodemedic.kube.fleet import serve_fleet
    from nodemedic.kube.run import KubeSide

    tasks = []
    if conditions:
        tasks.append(asyncio.ensure_future(KubeSide(kube).run()))
    if settings.fleet.enabled:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        tasks.append(asyncio.ensure_future(serve_fleet(bus, _guard_client(guard_config), settings,
                                                       me=kube.node_name)))
    try:
        # Either ending (the guard losing the bus) ends the process: systemd restarts the unit.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()


def cmd_kube_run(args: argparse.Namespace) -> int:
    from nodemedic.kube.api import ApiStatus, ApiUnreachable, KubeconfigError
    from nodemedic.kube.run import purge

    loaded = _load(args)
    enabled, settings = _settings(args, loaded)
    fleet = loaded[1].fleet.enabled
    if not enabled:
        # Turned off: take nodemedic's conditions off the Node (no one else's); then stop,
        # unless the fleet guard is on.
        try:
            print(f"nodemedic: kubernetes.enabled is false: {asyncio.run(purge(settings))}")
        except (ApiStatus, ApiUnreachable, KubeconfigError) as err:
            print(f"nodemedic: kubernetes.enabled is false; could not remove nodemedic's conditions: {err}",
                  file=sys.stderr)
        if not fleet:
            return EXIT_OK
    guard = args.kubeconfig or guard_kubeconfig(*loaded)
    asyncio.run(_run(settings, enabled, loaded[1], guard))
    return EXIT_OK


def cmd_kube_check(args: argparse.Namespace) -> int:
    from nodemedic.kube.api import Api, ApiStatus, ApiUnreachable, KubeconfigError, load_kubeconfig
    from nodemedic.kube.check import check

    loaded = _load(args)
    _enabled, settings = _settings(args, loaded)
    guard_config = args.kubeconfig or guard_kubeconfig(*loaded)
    try:
        api = Api(load_kubeconfig(settings.kubeconfig))
        print(f"node {settings.node_name}, credentials {settings.kubeconfig}")
        guard = None
        if guard_config != settings.kubeconfig:
            print(f"fleet guard credentials {guard_config}")
            guard = Api(load_kubeconfig(guard_config))
        lines, essentials = asyncio.run(check(api, settings.node_name, guard, loaded[1].fleet.namespace))
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
    kube = sub.add_parser("kube", help="the cluster side: Node conditions, Events and the fleet guard "
                                       "(nodemedic-kube.service)")
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
