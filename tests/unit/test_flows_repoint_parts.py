"""The repoint's building blocks: the mount unit, the undo stack, the CLI's dry run and refusals."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from nodemedic.flows import EXIT_REFUSED, mountunit
from nodemedic.flows.transaction import Transaction
from tests.unit.helpers import run_cli, write


def test_the_mount_unit_is_a_bind_mount_named_by_systemd_escape():
    assert shutil.which("systemd-escape"), "systemd-escape (package systemd) is needed"
    assert asyncio.run(mountunit.unit_name("/var/lib/containerd")) == "var-lib-containerd.mount"
    assert asyncio.run(mountunit.unit_name("/srv/data-1/containerd")) == "srv-data\\x2d1-containerd.mount"
    text = mountunit.unit_text("/mnt/disk/containerd", "/var/lib/containerd")
    lines = text.splitlines()
    for line in ("What=/mnt/disk/containerd", "Where=/var/lib/containerd", "Type=none", "Options=bind",
                 "Before=containerd.service", "RequiredBy=containerd.service",
                 "RequiresMountsFor=/mnt/disk/containerd"):
        assert line in lines
    assert mountunit.is_ours(text) and mountunit.what_of(text) == "/mnt/disk/containerd"
    assert not mountunit.is_ours("[Mount]\nWhat=/x\n")


def test_rollback_undoes_newest_first_and_keeps_going_after_a_failed_undo():
    order: list[str] = []

    def undo(name: str, fail: bool = False):
        async def run() -> None:
            if fail:
                raise OSError(f"{name} refused")
            order.append(name)
        return run

    reported: list[str] = []
    tx = Transaction(reported.append)
    tx.did("stop kubelet", undo("start kubelet"))
    tx.did("stop containerd", undo("start containerd"))
    tx.did("verified")  # nothing to undo
    tx.did("rename root", undo("rename back", fail=True))
    tx.did("write unit", undo("remove unit"))
    failed = asyncio.run(tx.rollback())
    assert order == ["remove unit", "start containerd", "start kubelet"]
    assert failed == ["could not undo 'rename root': rename back refused"]
    assert asyncio.run(tx.rollback()) == []  # nothing left to undo


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, capsys):
    root = tmp_path / "node"
    write(root, "/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/aa", "x" * 1000)
    write(root, "/etc/nodemedic/conf.d/50-test.toml", '[repoint]\nfilesystems = ["tmpfs"]\n')
    # the node's /mnt/disk is on other storage (a tmpfs here)
    disk = Path("/dev/shm") / f"nm-dry-{os.getpid()}"
    disk.mkdir()
    (root / "mnt").mkdir()
    (root / "mnt/disk").symlink_to(disk)
    try:
        before = sorted(p.relative_to(root) for p in root.rglob("*"))
        code, out, err = run_cli(capsys, "--root", str(root), "repoint", "--dry-run", "/mnt/disk/containerd")
        assert code == 0, err + out
        assert "bind mount What=" in out and "never a symlink" in out and "cp --archive" in out
        assert "undo every step" in out
        assert list(disk.iterdir()) == []
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    finally:
        disk.rmdir()


def test_refusal_is_a_clear_message_and_its_own_exit_code(tmp_path, capsys):
    root = tmp_path / "node"
    write(root, "/var/lib/containerd/meta", "x")
    code, out, err = run_cli(capsys, "--root", str(root), "repoint", "--dry-run", "/var/lib/containerd/inner")
    assert code == EXIT_REFUSED
    assert "refused:" in out and "inside the current root" in out


def test_a_real_run_with_root_is_refused(tmp_path, capsys):
    root = tmp_path / "node"
    write(root, "/var/lib/containerd/meta", "x")
    write(root, "/etc/nodemedic/conf.d/50-test.toml", '[repoint]\nfilesystems = ["tmpfs"]\n')
    code, out, _ = run_cli(capsys, "--root", str(root), "repoint", f"/dev/shm/nm-real-{os.getpid()}")
    assert code == EXIT_REFUSED and "--dry-run only" in out


@pytest.mark.parametrize("argv, code, text", [
    (["join"], 2, "give the join command"),
    (["join", "--", "kubeadm", "reset", "-f", "--token", "abcdef.0123456789abcdef"], EXIT_REFUSED,
     "not a join command"),
])
def test_join_command_line_errors_never_show_the_token(capsys, argv, code, text):
    got, out, err = run_cli(capsys, *argv)
    assert got == code and text in err
    assert "abcdef.0123456789abcdef" not in out + err


def test_a_job_that_ends_before_its_reply_is_not_waited_for_until_the_timeout():
    """systemd can send JobRemoved before the reply to StopUnit reaches the caller (a unit that
    waits to auto-restart stops at once): the flows' bus must not miss it."""
    from dbus_next import Message, MessageType

    from nodemedic.flows.systemd import FlowBus, JobFailed
    from nodemedic.sources.systemd_bus import MANAGER, MANAGER_PATH

    bus = FlowBus()
    results = iter(["done", "failed"])
    numbers = iter(range(100, 200))

    async def call(path, interface, member, signature="", body=None, destination=""):
        job = f"/org/freedesktop/systemd1/job/{next(numbers)}"
        bus._on_message(Message(message_type=MessageType.SIGNAL, path=MANAGER_PATH, interface=MANAGER,
                                member="JobRemoved", signature="uoss", body=[1, job, body[0], next(results)]))
        return [job]

    bus._call = call  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(bus.job("StopUnit", "containerd.service", 30), 2))
    with pytest.raises(JobFailed, match="job failed"):
        asyncio.run(asyncio.wait_for(bus.job("StartUnit", "containerd.service", 30), 2))
