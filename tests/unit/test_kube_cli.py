"""`nodemedic kube run` puts the fleet guard on its own loop when fleet.enabled, with the
guard's own kubeconfig (fleet.kubeconfig, else kubernetes.kubeconfig); the D-Bus connection and
the two sides are stand-ins here (the node tests run the real unit)."""

from __future__ import annotations

import argparse

from nodemedic.config import load_config
from nodemedic.hostroot import HostRoot
from nodemedic.kube import cli
from tests.unit.helpers import write


def _args(tmp_path) -> argparse.Namespace:
    return argparse.Namespace(root=str(tmp_path), kubeconfig=None, node_name=None)


def test_the_guard_uses_fleet_kubeconfig_else_the_kubernetes_one(tmp_path):
    root = HostRoot(tmp_path)
    assert cli.guard_kubeconfig(root, load_config(root).settings) == str(root.path("/etc/kubernetes/kubelet.conf"))
    write(tmp_path, "/etc/nodemedic/conf.d/60-fleet.toml", '[fleet]\nkubeconfig = "/etc/nodemedic/fleet.kubeconfig"\n')
    assert cli.guard_kubeconfig(root, load_config(root).settings) == str(root.path("/etc/nodemedic/fleet.kubeconfig"))


def test_kube_run_serves_the_guard_when_fleet_enabled_even_with_kubernetes_off(tmp_path, monkeypatch):
    write(tmp_path, "/etc/nodemedic/conf.d/60-fleet.toml",
          '[fleet]\nenabled = true\nkubeconfig = "/etc/nodemedic/missing.kubeconfig"\n'
          '[kubernetes]\nnode_name = "node-7"\n')
    served: list[tuple] = []
    logged: list[str] = []

    class BusStandin:
        async def connect(self):
            return self

    async def serve_fleet_standin(bus, client, settings, me=None):
        served.append((client, settings.fleet.enabled, me))

    import dbus_next.aio

    import nodemedic.journal
    import nodemedic.kube.fleet
    import nodemedic.kube.run

    async def purge_standin(settings):
        return "nothing"

    monkeypatch.setattr(dbus_next.aio, "MessageBus", lambda **kw: BusStandin())
    monkeypatch.setattr(nodemedic.kube.fleet, "serve_fleet", serve_fleet_standin)
    monkeypatch.setattr(nodemedic.kube.run, "purge", purge_standin)
    monkeypatch.setattr(nodemedic.journal, "log", lambda kind, message, *a, **kw: logged.append(message))
    assert cli.cmd_kube_run(_args(tmp_path)) == cli.EXIT_OK
    # The kubeconfig cannot be read: the guard still serves (and holds, saying why), without a client.
    assert served == [(None, True, "node-7")]
    assert any("missing.kubeconfig" in m for m in logged), logged


def test_kube_run_with_both_off_only_purges(tmp_path, monkeypatch):
    import nodemedic.kube.run

    purged: list[str] = []

    async def purge_standin(settings):
        purged.append(settings.node_name)
        return "nothing"

    monkeypatch.setattr(nodemedic.kube.run, "purge", purge_standin)
    monkeypatch.setattr(cli, "_run", lambda *a: (_ for _ in ()).throw(AssertionError("ran")))
    assert cli.cmd_kube_run(_args(tmp_path)) == cli.EXIT_OK
    assert len(purged) == 1
