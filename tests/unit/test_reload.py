"""Reload (issue 18, items 3 and 10): all of the new configuration or none of it, and
`nodemedic reload` (ExecReload=) reports the outcome. The daemon's reload is driven here on a
daemon object whose sources are stand-ins (no journal, bus or inotify needed to judge a swap);
tests/node/test_config_live.py does the same with the real unit."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from nodemedic.hostroot import HostRoot
from nodemedic.safety import Guard, UnsafeOperation, remove_file
from tests.unit.helpers import run_cli, write


class EngineStandIn:
    def __init__(self) -> None:
        self.retried = 0

    def retry_after_reload(self) -> None:
        self.retried += 1


def daemon_on(root: Path):
    """A Daemon with the state reload() touches, built from the tree's configuration."""
    from nodemedic.daemon import Daemon, load

    loaded = load(HostRoot(root))
    guard = Guard.from_paths(HostRoot(root).path(p) for p in loaded.settings.policy.protected_paths)
    daemon = Daemon.__new__(Daemon)  # no sources: nothing here reads the journal or the bus
    daemon.root = HostRoot(root)
    daemon.loaded = loaded
    daemon.guard = guard
    daemon.ctx = SimpleNamespace(settings=loaded.settings, guard=guard)
    daemon.store = SimpleNamespace(guard=guard)
    daemon.metrics = SimpleNamespace(guard=guard, update=lambda *a: None)
    daemon.journal = SimpleNamespace(guard=guard, batch_size=loaded.settings.journal.batch_size, prefilter=None,
                                     entries_read=0)
    daemon.engine = EngineStandIn()
    daemon._reload_lock = asyncio.Lock()
    daemon.status = SimpleNamespace(forget_sent=lambda: None)
    daemon.update_status = lambda: None
    return daemon


def test_a_reload_protects_a_new_path_for_every_holder_of_the_guard(tmp_path):
    victim = write(tmp_path, "/data/keep.bin", "precious")
    daemon = daemon_on(tmp_path)
    write(tmp_path, "/etc/nodemedic/conf.d/60-protect.toml", '[policy]\nprotected_paths = ["/data"]\n')
    ok, lines = asyncio.run(daemon.reload())
    assert ok, lines
    assert daemon.ctx.settings.policy.protected_paths == ("/data",)
    for holder in (daemon, daemon.ctx, daemon.store, daemon.metrics, daemon.journal):
        with pytest.raises(UnsafeOperation):
            remove_file(holder.guard, victim)
    assert victim.read_text() == "precious"
    assert daemon.engine.retried == 1


def test_a_reload_applies_the_journal_batch_size(tmp_path):
    daemon = daemon_on(tmp_path)
    write(tmp_path, "/etc/nodemedic/conf.d/60-batch.toml", "[journal]\nbatch_size = 64\n")
    assert asyncio.run(daemon.reload())[0]
    assert daemon.journal.batch_size == 64


def test_a_refused_reload_keeps_everything_and_says_why(tmp_path):
    daemon = daemon_on(tmp_path)
    old = (daemon.loaded, daemon.ctx.settings, daemon.guard)
    path = write(tmp_path, "/etc/nodemedic/conf.d/60-bad.toml",
                 '[policy]\nprotected_paths = ["/data"]\n[journal]\nbatch_size = 0\n')
    ok, lines = asyncio.run(daemon.reload())
    assert not ok and lines == [f"{path}:4: journal.batch_size: must be at least 1, got 0"]
    assert (daemon.loaded, daemon.ctx.settings, daemon.guard) == old
    assert daemon.engine.retried == 0


@pytest.mark.parametrize(
    ("text", "key"),
    [('[daemon]\nunits = ["containerd.service"]\n', "daemon.units"),
     ('[daemon]\nstate_dir = "/var/lib/elsewhere"\n', "daemon.state_dir"),
     ('[paths]\ncni_conf_dir = "/etc/cni/other"\n', "paths.cni_conf_dir"),
     ('[metrics]\ntextfile = ""\n', "metrics.textfile"),
     ('[journal]\nreplay_window = "1h"\n', "journal.replay_window")],
)
def test_a_key_bound_at_start_refuses_the_reload_with_the_reason(tmp_path, text, key):
    daemon = daemon_on(tmp_path)
    old = daemon.loaded
    write(tmp_path, "/etc/nodemedic/conf.d/50-observe.toml", '[daemon]\nmode = "observe"\n')
    path = write(tmp_path, "/etc/nodemedic/conf.d/60-x.toml", text)
    ok, [line] = asyncio.run(daemon.reload())
    assert not ok
    assert line.startswith(f"{path}:2: {key} changed: ") and line.endswith("restart nodemedic to apply it"), line
    assert daemon.loaded is old and daemon.ctx.settings.daemon.mode == "repair", "nothing of it applied"


def test_an_unexpected_error_never_leaves_the_daemon_reloading(tmp_path, monkeypatch):
    import nodemedic.daemon

    sent: list[tuple[str, ...]] = []
    monkeypatch.setattr(nodemedic.daemon, "notify", lambda *a: sent.append(a))
    daemon = daemon_on(tmp_path)

    def boom(*_a, **_kw):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(nodemedic.daemon, "load", boom)
    ok, [line] = asyncio.run(daemon.reload())
    assert not ok and "keeping the old configuration" in line
    assert sent[0][0] == "RELOADING=1" and sent[0][1].startswith("MONOTONIC_USEC=")
    assert sent[-1] == ("READY=1",)


# ---- `nodemedic reload`, what ExecReload= runs ----------------------------------------------------

def test_reload_command_reports_the_outcome(capsys, monkeypatch):
    from nodemedic.report import dbus_api

    async def refused(member, *_a):
        assert member == "Reload"
        return [False, ["/etc/nodemedic/conf.d/x.toml:2: journal.batch_size: must be at least 1, got 0"]]

    monkeypatch.setattr(dbus_api, "call", refused)
    code, out, err = run_cli(capsys, "reload", "1234")
    assert code == 1 and "x.toml:2: journal.batch_size" in err

    async def applied(member, *_a):
        return [True, ["configuration reloaded: 21 signatures, mode repair"]]

    monkeypatch.setattr(dbus_api, "call", applied)
    code, out, _ = run_cli(capsys, "reload")
    assert code == 0 and "configuration reloaded" in out


def test_reload_command_falls_back_to_sighup_without_the_api(capsys, monkeypatch):
    import os

    from nodemedic.report import dbus_api

    async def gone(*_a):
        raise dbus_api.NotRunning("nodemedic is not running")

    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(dbus_api, "call", gone)
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    code, _, err = run_cli(capsys, "reload", "4321")
    assert code == 0 and killed == [(4321, signal.SIGHUP)] and "journal" in err
    code, _, _ = run_cli(capsys, "reload")
    assert code == 3 and killed == [(4321, signal.SIGHUP)]
