"""Shared by the node tests that run the daemon (test_daemon, test_operator, test_ladders_*):
nodemedic running as its unit in a node, with short waits, its bus policy installed so the CLI
can steer it, and ways to read what it did (journal entries by MESSAGE_ID, state.json) and what
the node really is (CRI, /proc/sys)."""

from __future__ import annotations

import json
import time
from typing import Any

from nodemedic.journal import Kind
from tests.node.testbed.node import NODE_PYTHON, REPO_ROOT, Node

POLICY = "/etc/dbus-1/system.d/org.nodemedic1.conf"
MEDIA = ("/srv/media", "/mnt/media")
CNI_DIR = "/etc/cni/net.d"
STATE = "/var/lib/nodemedic/state.json"
# Short waits so a module runs in a few minutes; the shipped defaults are for real nodes.
# verify_attempts x verify_interval is also the window in which test_daemon kills a repair.
TEST_CONFIG = """\
[policy]
cooldown = "1s"
cooldown_max = "2s"
verify_attempts = 8
verify_interval = "1s"

[imagefs]
warmup_attempts = 2
warmup_interval = "1s"
"""


def nodemedic_entries(node: Node, kind: Kind, since: str = "", **fields: str) -> list[dict]:
    matches = {f"NODEMEDIC_{k.upper()}": v for k, v in fields.items()}
    return node.journal(message_id=kind.value, fields=matches, since=since or None)


def wait_healed(node: Node, problem: str, since: str, timeout: float = 60.0) -> dict:
    return node.wait_for(lambda: nodemedic_entries(node, Kind.HEALED, since, problem=problem),
                         timeout=timeout, what=f"{problem} healed")[-1]


def empty_cni_dir(node: Node) -> None:
    node.run(["find", CNI_DIR, "-mindepth", "1", "-delete"])


def start_nodemedic(node: Node, extra: str = "", *, bootstrapping: bool = False) -> Node:
    """Start nodemedic.service (installed, not started, by the node fixture) with TEST_CONFIG
    plus `extra`, and wait until it answers on D-Bus. `bootstrapping`: first take the node back
    to one that never had a CNI config (the placeholder policy's default case), with containerd
    reporting NetworkReady=false; otherwise nodemedic sees the node's real config at start."""
    node.write_file(POLICY, (REPO_ROOT / "units/org.nodemedic1.conf").read_text())
    node.systemctl("reload", "dbus")
    node.write_file("/etc/nodemedic/conf.d/50-test.toml", TEST_CONFIG + extra)
    # The test bed installs the wheel, whose entry point lives in /usr/local/bin.
    node.drop_in("nodemedic.service", "10-testbed", "[Service]\nExecStart=\nExecStart=/usr/local/bin/nodemedic run\n"
                 "ExecReload=\nExecReload=/usr/local/bin/nodemedic reload $MAINPID\n")
    node.drop_in("nodemedic-step@.service", "10-testbed",
                 "[Service]\nExecStart=\nExecStart=/usr/local/bin/nodemedic step %i\n")
    if bootstrapping:
        node.run(["mkdir", "-p", CNI_DIR])
        empty_cni_dir(node)
        node.systemctl("restart", "containerd")
        node.wait_for(lambda: not node.cri_status().network_ready, what="containerd without CNI config")
    node.systemctl("start", "nodemedic")
    node.wait_for(lambda: cli(node, "status").returncode in (0, 1), what="nodemedic answering on D-Bus")
    return node


def cli(node: Node, *args: str) -> Any:
    return node.run(["nodemedic", *args], check=False)


def signature_override(node: Node, signature: str, old: str, new: str) -> None:
    """/etc/nodemedic/signatures.d/NAME.toml replaces the shipped signature (a shorter threshold
    for a test); takes effect at the next reload."""
    text = (REPO_ROOT / "etc/nodemedic/signatures.d" / f"{signature}.toml").read_text()
    assert old in text, f"{signature}: {old!r} not in the shipped signature"
    node.write_file(f"/etc/nodemedic/signatures.d/{signature}.toml", text.replace(old, new))


def reload_medic(node: Node) -> None:
    cursor = node.cursor()
    node.systemctl("reload", "nodemedic")
    node.wait_for(lambda: nodemedic_entries(node, Kind.CONFIG_RELOADED, cursor), what="configuration reloaded")


def forget(node: Node, problem: str, step_timeout: float = 120.0) -> None:
    """`nodemedic forget`, and the record is gone. It is refused as busy only while a step is
    applied or verified (an exhausted problem's re-check does not count: tests/unit/test_engine.py);
    a teardown that restores the fault may catch a rival's ladder mid-step, which then finishes
    within its own verification time."""
    deadline = time.monotonic() + step_timeout
    while (result := cli(node, "forget", problem)).returncode != 0:
        assert "already being handled" in result.stderr and time.monotonic() < deadline, result.stderr
        time.sleep(0.5)
    # A late line about the fault just repaired may open a new record at once; the live probe
    # finds nothing and it idles, without attempts or cooldown.
    node.wait_for(lambda: phase(node, problem) in ("", "idle"), timeout=30, what=f"{problem} forgotten")


def phase(node: Node, problem: str) -> str:
    return json.loads(node.read_file(STATE))["problems"].get(problem, {}).get("phase", "")


def wait_for_kind(node: Node, kind: Kind, problem: str | None, since: str, timeout: float = 60.0) -> dict:
    """The newest entry of `kind` (for `problem`, if given) after `since`, once there is one."""
    fields = {"problem": problem} if problem else {}
    return node.wait_for(lambda: nodemedic_entries(node, kind, since, **fields), timeout=timeout,
                         what=f"{problem or 'nodemedic'}: {kind.name}")[-1]


def steps_started(node: Node, problem: str, since: str) -> list[str]:
    return [e["NODEMEDIC_STEP"] for e in nodemedic_entries(node, Kind.STEP_STARTED, since, problem=problem)]


def media_checksums(node: Node) -> dict[str, str]:
    return {path: node.checksum_tree(path) for path in MEDIA}


_CRI_INFO = """
import asyncio, json, sys
from nodemedic.probes.cri import CriClient
async def main():
    async with CriClient() as cri:
        json.dump(await cri.status_info(), sys.stdout)
asyncio.run(main())
"""


def cri_info(node: Node) -> dict[str, Any]:
    """CRI Status(verbose=true)'s info map, from inside the node; JSON values decoded."""
    raw = json.loads(node.run([NODE_PYTHON, "-c", _CRI_INFO]).stdout)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
