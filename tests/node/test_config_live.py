"""Configuration on a live node (issue 18, items 3 and 10): a reload applies everything it
reports, or is refused with the reason; `systemctl reload` works without procps and reports the
real outcome; an invalid configuration at start leaves the unit failed once, not restarting.

Real systemd 252, real D-Bus, real journald: the unit file is the working tree's
units/nodemedic.service (with the test bed's ExecStart/ExecReload paths), driven by systemctl.
"""

from __future__ import annotations

import json
import time

import pytest

from nodemedic.journal import Kind
from tests.node.medic import cli, media_checksums, nodemedic_entries, start_nodemedic, wait_for_kind
from tests.node.testbed import faults
from tests.node.testbed.node import Node

pytestmark = pytest.mark.node

UNIT = "nodemedic.service"
CONF_D = "/etc/nodemedic/conf.d"
PROTECT = f"{CONF_D}/60-protect-ingest.toml"
BROKEN = f"{CONF_D}/70-broken.toml"
OBSERVE = f"{CONF_D}/60-observe.toml"
UNITS = f"{CONF_D}/80-units.toml"
KILL = "/usr/bin/kill"  # /bin/kill on a merged-/usr Debian: procps


@pytest.fixture(scope="module")
def medic(node: Node) -> Node:
    # stale_age as in test_ladders_config: a stale ingest is repaired at once.
    return start_nodemedic(node, '\n[ingest]\nstale_age = "5s"\n')


def remove_conf(node: Node, *paths: str) -> None:
    node.run(["rm", "-f", "--", *paths])


def mode(node: Node) -> str:
    """The mode the daemon itself reports over its D-Bus API (not the files)."""
    return json.loads(cli(node, "status", "--json").stdout)["mode"]


def test_sighup_applies_a_new_protected_path_to_the_next_repair(medic: Node, inject):
    before = media_checksums(medic)
    protected = faults.INGEST_DIR
    medic.write_file(PROTECT, f'[policy]\nprotected_paths = ["/srv/media", "/mnt/media", "{protected}"]\n')
    try:
        cursor = medic.cursor()
        medic.systemctl("kill", "--signal=SIGHUP", UNIT)
        wait_for_kind(medic, Kind.CONFIG_RELOADED, None, cursor)
        assert protected in cli(medic, "config", "show").stdout
        cursor = medic.cursor()
        stale = inject(faults.stale_ingest)
        medic.wait_for(lambda: [e for kind in (Kind.EXHAUSTED, Kind.HEALED)
                                for e in nodemedic_entries(medic, kind, cursor, problem="ingest-stale")],
                       timeout=60, what="ingest-stale handled")
        assert medic.exists(stale.info["path"]), "the entry under the newly protected path was removed"
        finished = nodemedic_entries(medic, Kind.STEP_FINISHED, cursor, problem="ingest-stale")
        assert all(e["NODEMEDIC_RESULT"] != "ok" for e in finished), finished
        # Refused by the guard: as the step's error, or (one entry at a time) in its detail.
        said = [e["MESSAGE"] + " " + e.get("NODEMEDIC_DETAIL", "") for e in finished]
        assert any("protected path" in text for text in said), said
    finally:
        remove_conf(medic, PROTECT)
        medic.systemctl("reload", UNIT)
        cli(medic, "forget", "ingest-stale")
    assert media_checksums(medic) == before


def test_systemctl_reload_needs_no_procps_and_reports_the_outcome(medic: Node):
    medic.run(["mv", KILL, f"{KILL}.nmtest-hidden"])  # a minimal Debian 12 has no procps
    try:
        assert not medic.exists(KILL) and not medic.exists("/bin/kill")
        medic.write_file(OBSERVE, '[daemon]\nmode = "observe"\n')
        done = medic.systemctl("reload", UNIT, check=False)
        assert done.returncode == 0, done.stderr
        assert mode(medic) == "observe", "systemctl reload returns once the new configuration is in force"

        cursor = medic.cursor()
        medic.write_file(BROKEN, "[journal]\nbatch_size = 0\n")
        refused = medic.systemctl("reload", UNIT, check=False)
        assert refused.returncode != 0, "a refused configuration must fail the reload"
        rejected = nodemedic_entries(medic, Kind.CONFIG_REJECTED, cursor)
        assert any(f"{BROKEN}:2: journal.batch_size: must be at least 1" in e["MESSAGE"] for e in rejected), rejected
        assert medic.unit_state(UNIT).active_state == "active"
        assert mode(medic) == "observe", "the old configuration stays in force"
        by_hand = cli(medic, "reload")
        assert by_hand.returncode == 1 and f"{BROKEN}:2: journal.batch_size" in by_hand.stderr, by_hand
        remove_conf(medic, BROKEN)

        # A key bound at start is refused as a whole, with the reason, not half-applied.
        medic.write_file(UNITS, '[daemon]\nmode = "repair"\nunits = ["containerd.service"]\n')
        held = cli(medic, "reload")
        assert held.returncode == 1 and f"{UNITS}:3: daemon.units changed" in held.stderr, held
        assert mode(medic) == "observe"
    finally:
        medic.run(["mv", f"{KILL}.nmtest-hidden", KILL])
        remove_conf(medic, OBSERVE, BROKEN, UNITS)
    medic.systemctl("reload", UNIT)
    assert mode(medic) == "repair"


def _seconds(span: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "min": 60.0}
    for suffix, factor in units.items():
        if span.endswith(suffix) and span[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(span[: -len(suffix)]) * factor
    raise ValueError(f"unexpected RestartUSec {span!r}")


def test_an_invalid_configuration_at_start_fails_once_and_does_not_restart(medic: Node):
    medic.systemctl("stop", UNIT)
    medic.write_file(BROKEN, '\n[daemon]\nstate_dir = "var/lib/nodemedic"\n')
    try:
        cursor = medic.cursor()
        started = medic.systemctl("start", UNIT, check=False)
        assert started.returncode != 0
        state = medic.wait_for(lambda: (s := medic.unit_state(UNIT)).active_state == "failed" and s,
                               what="nodemedic failed")
        assert state.exec_main_status == 78 and state.result == "exit-code", state
        entries = nodemedic_entries(medic, Kind.CONFIG_REJECTED, cursor)
        assert any(f"cannot start: {BROKEN}:3: daemon.state_dir: must be an absolute path" in e["MESSAGE"]
                   for e in entries), [e["MESSAGE"] for e in entries]
        # Before RestartPreventExitStatus=78 systemd tried again every RestartSec, for ever.
        restart_sec = _seconds(medic.systemctl("show", "--property=RestartUSec", "--value", UNIT).stdout.strip())
        time.sleep(3 * restart_sec + 1)
        state = medic.unit_state(UNIT)
        assert state.active_state == "failed" and state.n_restarts == 0, state
        starts = medic.journal(fields={"UNIT": UNIT}, since=cursor, grep="^Starting ")  # PID 1's lines
        assert len(starts) == 1, [e["MESSAGE"] for e in starts]
    finally:
        remove_conf(medic, BROKEN)
        medic.systemctl("reset-failed", UNIT, check=False)
    medic.systemctl("start", UNIT)
    assert medic.unit_state(UNIT).active_state == "active"
