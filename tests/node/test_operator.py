"""The operator's interface in the node (issue 8): nodemedic's own D-Bus API and the CLI on it,
the metrics textfile, and `nodemedic doctor`."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodemedic.journal import Kind
from nodemedic.repairs import sysctl
from tests.node.medic import CNI_DIR, empty_cni_dir, nodemedic_entries, start_nodemedic, wait_healed
from tests.node.testbed.node import Node
from tests.node.testbed.proc_sys import bind_proc_sys

pytestmark = pytest.mark.node

METRICS = "/var/lib/prometheus/node-exporter/nodemedic.prom"
# doctor's inotify check against the values the repair raises them to (the host's own may be
# lower: 192905 watches on a 24 GiB VM, the kernel scales its default with memory).
INOTIFY_LIMITS = {key.replace(".", "/"): value for key, value in sysctl.TARGETS.items()}


def cli(node: Node, *args: str, user: str | None = None):
    return node.run(["nodemedic", *args], check=False, user=user)


def status(node: Node) -> dict:
    result = cli(node, "status", "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def problem(node: Node, name: str) -> dict | None:
    return next((p for p in status(node)["problems"] if p["problem"] == name), None)


@pytest.fixture(scope="module")
def medic(node: Node) -> Node:
    # A metrics path chosen by the operator: nodemedic creates its directory.
    return start_nodemedic(node, f'[metrics]\ntextfile = "{METRICS}"\n', bootstrapping=True)


def test_status_reports_the_daemon_and_not_running_is_exit_3(medic: Node):
    data = status(medic)
    assert data["mode"] == "repair" and data["state"].startswith("watching containerd.service")
    text = cli(medic, "status")
    assert text.returncode == 0 and text.stdout.startswith("nodemedic: watching")
    medic.systemctl("stop", "nodemedic")
    stopped = cli(medic, "status")
    assert stopped.returncode == 3 and "not running" in stopped.stderr
    medic.systemctl("start", "nodemedic")
    medic.wait_for(lambda: cli(medic, "status").returncode == 0, what="nodemedic back")


def test_status_reflects_an_injected_fault(medic: Node):
    cursor = medic.cursor()
    empty_cni_dir(medic)
    # seen first as suspected/confirmed/repairing, and healed at the end; the benchmark measures how fast
    medic.wait_for(lambda: problem(medic, "cni-config-missing") is not None, timeout=10, interval=0.1,
                   what="the fault in nodemedic status")
    wait_healed(medic, "cni-config-missing", since=cursor)
    assert problem(medic, "cni-config-missing")["state"] == "healed"
    assert medic.cri_status().network_ready


def test_pause_observes_only_and_resume_repairs(medic: Node):
    wait_healed(medic, "cni-config-missing", since="")
    assert cli(medic, "pause").returncode == 0
    assert status(medic)["mode"] == "paused"
    cursor = medic.cursor()
    empty_cni_dir(medic)
    medic.wait_for(lambda: nodemedic_entries(medic, Kind.HELD_BACK, cursor, problem="cni-config-missing"),
                   what="repair held back while paused")
    assert not medic.cri_status().network_ready
    assert nodemedic_entries(medic, Kind.STEP_STARTED, cursor) == []
    refused = cli(medic, "repair", "cni-config-missing")
    assert refused.returncode == 1 and "paused" in refused.stderr
    assert cli(medic, "resume").returncode == 0
    wait_healed(medic, "cni-config-missing", since=cursor)
    assert medic.cri_status().network_ready


def test_repair_on_demand_runs_a_disabled_ladder_once(medic: Node):
    medic.write_file("/etc/nodemedic/conf.d/60-disabled.toml", "[problems.cni-config-missing]\nenabled = false\n")
    medic.systemctl("reload", "nodemedic")
    try:
        cursor = medic.cursor()
        empty_cni_dir(medic)
        held = medic.wait_for(lambda: nodemedic_entries(medic, Kind.HELD_BACK, cursor, problem="cni-config-missing"),
                              what="held back: disabled")
        assert held[-1]["NODEMEDIC_REASON"] == "disabled in configuration"
        plan = cli(medic, "repair", "--dry-run", "cni-config-missing")
        assert plan.returncode == 0 and "step 1: cni-placeholder (safe)" in plan.stdout
        assert cli(medic, "repair", "cni-config-missing").returncode == 0
        wait_healed(medic, "cni-config-missing", since=cursor)
        assert medic.cri_status().network_ready
    finally:
        medic.run(["rm", "-f", "/etc/nodemedic/conf.d/60-disabled.toml"])
        medic.systemctl("reload", "nodemedic")


def test_bad_calls_are_clear_errors(medic: Node):
    unknown = cli(medic, "repair", "no-such-problem")
    assert unknown.returncode == 1 and "unknown problem 'no-such-problem'" in unknown.stderr
    assert cli(medic, "forget", "no-such-problem").returncode == 1


def test_only_root_may_steer_but_anyone_may_read(medic: Node):
    assert cli(medic, "status", user="nmuser").returncode in (0, 1)
    for command in (["pause"], ["resume"], ["repair", "cni-config-missing"], ["forget", "cni-config-missing"]):
        denied = cli(medic, *command, user="nmuser")
        assert denied.returncode == 4 and "permission denied" in denied.stderr, command
    assert status(medic)["mode"] == "repair"


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_textfile_parses_and_changes_with_a_repair(medic: Node):
    wait_healed(medic, "cni-config-missing", since="")
    before = _samples(medic.read_file(METRICS).decode())
    key = ("nodemedic_repairs_total",
           (("problem", "cni-config-missing"), ("result", "ok"), ("step", "cni-placeholder")))
    cursor = medic.cursor()
    empty_cni_dir(medic)
    wait_healed(medic, "cni-config-missing", since=cursor)
    after = medic.wait_for(lambda: (s := _samples(medic.read_file(METRICS).decode())).get(key, 0) > before.get(key, 0)
                           and s, what="metrics updated")
    assert after[("nodemedic_problem_state", (("problem", "cni-config-missing"), ("state", "healed")))] == 1
    assert after[("nodemedic_last_repair_timestamp_seconds", ())] >= before.get(
        ("nodemedic_last_repair_timestamp_seconds", ()), 0)
    assert after[("nodemedic_journal_entries_read_total", ())] > 0


def test_doctor_says_healthy_on_a_clean_node_and_names_a_broken_one(medic: Node):
    wait_healed(medic, "cni-config-missing", since="")
    bridge = {"type": "bridge", "bridge": "nmtest0", "ipam": {"type": "host-local", "subnet": "10.244.0.0/16"}}
    real = {"cniVersion": "1.0.0", "name": "nmtest", "plugins": [bridge]}
    medic.write_file(f"{CNI_DIR}/10-nmtest.conflist", json.dumps(real))
    # inotify limits are the host kernel's own, global settings (nodes share its kernel), which
    # the host's tests must never change: doctor only reads the value, so a file holding a
    # node-sized value is bound over the path inside the node alone (the test bed's
    # bind_proc_sys, which binds kubelet's tunables too).
    unbind = bind_proc_sys(medic, INOTIFY_LIMITS, "/run/nodemedic-test-inotify")
    try:
        clean = cli(medic, "doctor", "--json")
        report = json.loads(clean.stdout)
        assert clean.returncode == 0 and report["healthy"], [f for f in report["findings"] if not f["ok"]]
    finally:
        unbind()
    medic.systemctl("stop", "nodemedic")  # doctor needs no daemon, and nodemedic would heal the fault
    medic.systemctl("stop", "containerd")
    try:
        broken = cli(medic, "doctor")
        assert broken.returncode == 1
        assert "problem runtime-down:" in broken.stdout and "step 1: restart-containerd (disruptive)" in broken.stdout
    finally:
        medic.systemctl("start", "containerd")
        medic.systemctl("start", "nodemedic")
