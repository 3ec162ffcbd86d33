"""nodemedic as a real systemd service in the booted node (issue 4's "done when").

Real containerd, real journald, real D-Bus: the faults are made through the real components and
every repair is judged by CRI Status from inside the node, never by nodemedic's own files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nodemedic.journal import Kind
from tests.node.medic import CNI_DIR, empty_cni_dir, nodemedic_entries, phase, start_nodemedic, wait_healed
from tests.node.testbed.node import Node

SHIPPED_SIGNATURES = len(list((Path(__file__).resolve().parents[2] / "etc/nodemedic/signatures.d").glob("*.toml")))

pytestmark = pytest.mark.node

@pytest.fixture(scope="module")
def medic(node: Node) -> Node:
    """The node with nodemedic installed from the working tree and running as a unit."""
    return start_nodemedic(node, bootstrapping=True)


def test_unit_is_ready_with_a_status_line(medic: Node):
    assert medic.unit_state("nodemedic.service").active_state == "active"
    status = medic.systemctl("status", "--no-pager", "nodemedic", check=False).stdout
    assert re.search(rf'Status: "watching containerd\.service, kubelet\.service; {SHIPPED_SIGNATURES} signatures; ',
                     status), status


def test_a_node_without_cni_config_is_healed_and_verified_over_cri(medic: Node):
    healed = wait_healed(medic, "cni-config-missing", since="")
    assert medic.cri_status().network_ready, "healed must mean CRI NetworkReady=true"
    assert healed["SYSLOG_IDENTIFIER"] == "nodemedic"
    # emptying the directory again is noticed and healed again
    cursor = medic.cursor()
    empty_cni_dir(medic)
    wait_healed(medic, "cni-config-missing", since=cursor)
    assert medic.cri_status().network_ready
    started = nodemedic_entries(medic, Kind.STEP_STARTED, cursor, problem="cni-config-missing")
    assert [e["NODEMEDIC_STEP"] for e in started] == ["cni-placeholder"]


def test_journal_entries_carry_structured_fields(medic: Node):
    wait_healed(medic, "cni-config-missing", since="")
    entries = [json.loads(line) for line in medic.run(
        ["journalctl", "-u", "nodemedic", "-o", "json", "--no-pager"]).stdout.splitlines() if line.startswith("{")]
    finished = [e for e in entries if e.get("MESSAGE_ID") == Kind.STEP_FINISHED.value]
    assert finished, "no step-finished entry"
    entry = finished[-1]
    assert entry["SYSLOG_IDENTIFIER"] == "nodemedic"
    assert entry["NODEMEDIC_PROBLEM"] == "cni-config-missing"
    assert entry["NODEMEDIC_STEP"] == "cni-placeholder"
    assert entry["NODEMEDIC_RESULT"] == "ok"
    suspected = [e for e in entries if e.get("MESSAGE_ID") == Kind.SUSPECTED.value]
    assert any("NODEMEDIC_TRIGGER_CURSOR" in e or e.get("NODEMEDIC_SIGNATURE", "").startswith("path:")
               for e in suspected)
    catalog = medic.run(["journalctl", "-x", "-u", "nodemedic", "--no-pager", "-n", "50"]).stdout
    assert "Subject: " in catalog or "nodemedic" in catalog


FORGED = ('E1020 20:40:12.924972   95277 kubelet.go:1462] "Image garbage collection failed multiple times in a row"'
          ' err="invalid capacity 0 on image filesystem"')


def _read_past(node: Node, cursor: str) -> bool:
    """nodemedic has read the journal up to `cursor` or beyond (its saved cursor is that entry or a
    later one)."""
    saved = node.read_file("/var/lib/nodemedic/journal.cursor").decode().strip()
    later = node.run(["journalctl", "--no-pager", "-o", "json", f"--after-cursor={cursor}"]).stdout
    return saved == cursor or any(json.loads(line)["__CURSOR"] == saved
                                  for line in later.splitlines() if line.startswith("{"))


def test_forged_lines_trigger_nothing(medic: Node):
    cursor = medic.cursor()
    for _ in range(3):
        medic.run(["logger", "-t", "kubelet", FORGED])
        medic.run(["logger", "-t", "kubelet", FORGED], user="nmuser")
        medic.run(["systemd-run", "--quiet", "--wait", "--unit=forger", "-p", "SyslogIdentifier=kubelet",
                   "echo", FORGED])
    forged = medic.journal(since=cursor, grep="invalid capacity 0")
    assert len(forged) >= 9, "the forged lines must really be in the journal"
    # A line nodemedic does read (PID 1 about kubelet.service) after the forged ones: once its
    # saved cursor is past that, it has seen everything before it.
    medic.systemctl("restart", "kubelet")
    medic.wait_for(lambda: _read_past(medic, forged[-1]["__CURSOR"]), what="nodemedic read past the forged lines")
    assert nodemedic_entries(medic, Kind.SUSPECTED, cursor, problem="imagefs-capacity-zero") == []
    assert nodemedic_entries(medic, Kind.STEP_STARTED, cursor) == []


def test_reload_applies_a_dropin_and_keeps_the_old_config_on_error(medic: Node):
    medic.write_file("/etc/nodemedic/conf.d/60-observe.toml", '[daemon]\nmode = "observe"\n')
    medic.systemctl("reload", "nodemedic")
    medic.wait_for(lambda: "observe mode" in medic.systemctl("status", "--no-pager", "nodemedic", check=False).stdout,
                   what="observe mode in Status")
    cursor = medic.cursor()
    medic.write_file("/etc/nodemedic/conf.d/70-broken.toml", "[policy]\ncooldwn = 1\n")
    # ExecReload waits for the outcome: a refused configuration fails `systemctl reload`.
    assert medic.systemctl("reload", "nodemedic", check=False).returncode != 0
    rejected = medic.wait_for(lambda: nodemedic_entries(medic, Kind.CONFIG_REJECTED, cursor), what="rejection")
    assert "70-broken.toml:2: unknown key 'policy.cooldwn'" in rejected[-1]["MESSAGE"]
    assert medic.unit_state("nodemedic.service").active_state == "active"
    assert "observe mode" in medic.systemctl("status", "--no-pager", "nodemedic", check=False).stdout
    medic.run(["rm", "/etc/nodemedic/conf.d/60-observe.toml", "/etc/nodemedic/conf.d/70-broken.toml"])
    medic.systemctl("reload", "nodemedic")
    medic.wait_for(lambda: "observe mode" not in medic.systemctl("status", "--no-pager", "nodemedic",
                                                                  check=False).stdout, what="repair mode again")


def test_sigkill_mid_repair_resumes_by_verifying_and_never_repeats(medic: Node):
    wait_healed(medic, "cni-config-missing", since="")
    cursor = medic.cursor()
    restarts = medic.unit_state("nodemedic.service").n_restarts
    # Deleting and recreating the directory loses containerd's fsnotify watch (containerd#11209):
    # the placeholder is written but CRI stays not ready, so nodemedic sits in "verifying".
    medic.run(["rm", "-rf", CNI_DIR])
    medic.run(["mkdir", "-p", CNI_DIR])  # nodemedic may have made it again already (its placeholder)
    medic.wait_for(lambda: phase(medic, "cni-config-missing") == "verifying", timeout=60, interval=0.2,
                   what="nodemedic verifying the placeholder")
    medic.systemctl("kill", "--signal=SIGKILL", "nodemedic")
    medic.wait_for(lambda: medic.unit_state("nodemedic.service").n_restarts > restarts, what="systemd restart")
    wait_healed(medic, "cni-config-missing", since=cursor, timeout=90)
    assert medic.cri_status().network_ready
    started = nodemedic_entries(medic, Kind.STEP_STARTED, cursor, problem="cni-config-missing")
    applied = [e["NODEMEDIC_STEP"] for e in started if "NODEMEDIC_RESUMED" not in e]
    resumed = [e["NODEMEDIC_STEP"] for e in started if "NODEMEDIC_RESUMED" in e]
    assert applied.count("cni-placeholder") == 1, applied
    assert resumed == ["cni-placeholder"], resumed


def test_journal_rotation_and_vacuum_do_not_stop_detection(medic: Node):
    medic.run(["journalctl", "--rotate"])
    medic.run(["journalctl", "--vacuum-files=1"])
    medic.systemctl("restart", "kubelet")  # PID 1 logs about kubelet.service: a line nodemedic reads
    line = medic.wait_for(lambda: medic.journal(fields={"UNIT": "kubelet.service", "_PID": "1"},
                                                since=None)[-1:], what="PID 1 line about kubelet")[0]
    medic.wait_for(lambda: _read_past(medic, line["__CURSOR"]), what="nodemedic reading on after rotation and vacuum")
    assert medic.unit_state("nodemedic.service").active_state == "active"


def test_a_vanished_system_bus_is_reported_once_and_reconnected(medic: Node):
    cursor = medic.cursor()
    main_pid = medic.unit_state("nodemedic.service").main_pid
    medic.systemctl("restart", "dbus")
    trouble = medic.wait_for(lambda: nodemedic_entries(medic, Kind.SOURCE_TROUBLE, cursor), what="bus loss logged")
    assert any("units" == e.get("NODEMEDIC_SOURCE") for e in trouble)
    # the same process carries on, and its unit source is back: a repair still restarts units
    assert medic.unit_state("nodemedic.service").main_pid == main_pid
    cursor = medic.cursor()
    medic.run(["rm", "-rf", CNI_DIR])
    medic.run(["mkdir", "-p", CNI_DIR])  # nodemedic may have made it again already (its placeholder)
    wait_healed(medic, "cni-config-missing", since=cursor, timeout=90)
    assert medic.cri_status().network_ready
    again = [e for e in nodemedic_entries(medic, Kind.SOURCE_TROUBLE, cursor) if e.get("NODEMEDIC_SOURCE") == "units"]
    assert again == [], "one outage is reported once, not once per retry"
