"""What must never wedge, crash or be forgotten (issue 18, items 5, 6, 7, 11, 12), on a booted
node with nodemedic as its unit: an immutable state file, a read-only state dir, a protected
CNI dir holding the placeholder and a real config, a pause across SIGKILL, the cooldown after a
heal, and the operator's small commands.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nodemedic.journal import Kind
from tests.node.medic import (
    CNI_DIR,
    STATE,
    cli,
    empty_cni_dir,
    nodemedic_entries,
    reload_medic,
    start_nodemedic,
    steps_started,
    wait_for_kind,
    wait_healed,
)
from tests.node.testbed.node import Node

pytestmark = pytest.mark.node

PROBLEM = "cni-config-missing"
PLACEHOLDER = f"{CNI_DIR}/zz-nodemedic-placeholder.conflist"
REAL = f"{CNI_DIR}/10-nmtest.conflist"


@pytest.fixture(scope="module")
def medic(node: Node) -> Node:
    return start_nodemedic(node, bootstrapping=True)


@pytest.fixture(scope="module")
def real_config(medic: Node) -> bytes:
    """A real CNI config the test bed's containerd can load (the node's baseline one)."""
    wait_healed(medic, PROBLEM, since="")  # the bootstrap episode: the placeholder
    return medic.read_file(PLACEHOLDER).replace(b"nodemedic-placeholder", b"nmtest").replace(b"nodemedic0", b"nmtest0")


def status_line(node: Node) -> str:
    return node.systemctl("status", "--no-pager", "nodemedic", check=False).stdout


def restarts(node: Node) -> int:
    return node.unit_state("nodemedic.service").n_restarts


def sigkill(node: Node) -> None:
    before = restarts(node)
    node.systemctl("kill", "--signal=SIGKILL", "nodemedic")
    node.wait_for(lambda: restarts(node) > before and node.unit_state("nodemedic.service").active_state == "active",
                  timeout=60, what="systemd restarts nodemedic")
    node.wait_for(lambda: cli(node, "status").returncode in (0, 1), what="nodemedic answering on D-Bus")


# -- item 7: the pause outlives the daemon ---------------------------------------------------

def test_a_pause_outlives_a_sigkill_and_holds_until_resume(medic: Node, real_config: bytes):
    assert cli(medic, "pause").returncode == 0
    try:
        sigkill(medic)
        assert "mode: paused" in cli(medic, "status").stdout
        cursor = medic.cursor()
        empty_cni_dir(medic)
        medic.wait_for(lambda: nodemedic_entries(medic, Kind.HELD_BACK, cursor, problem=PROBLEM),
                       what="repair held back: still paused after the restart")
        assert steps_started(medic, PROBLEM, cursor) == []
    finally:
        assert cli(medic, "resume").returncode == 0
    wait_healed(medic, PROBLEM, since=cursor)


# -- item 5: a failed state write is reported, never a wedge ----------------------------------

@pytest.fixture
def immutable_state(medic: Node) -> Iterator[None]:
    medic.run(["chattr", "+i", STATE])
    yield
    medic.run(["chattr", "-i", STATE], check=False)


def test_an_immutable_state_file_is_reported_once_and_the_placeholder_still_heals(
        medic: Node, real_config: bytes, immutable_state: None):
    cursor = medic.cursor()
    empty_cni_dir(medic)
    medic.wait_for(lambda: medic.cri_status().network_ready, timeout=60, what="network healed without persistence")
    failed = wait_for_kind(medic, Kind.STATE_NOT_SAVED, None, cursor)
    assert "Operation not permitted" in failed["MESSAGE"]
    assert len(nodemedic_entries(medic, Kind.STATE_NOT_SAVED, cursor)) == 1  # once, not once per write
    wait_for_kind(medic, Kind.HEALED, PROBLEM, cursor)
    assert "state not saved" in status_line(medic)
    assert "repairing" not in cli(medic, "status").stdout.split("\n")[0]
    # writable again: said once, and the Status line is clean
    cursor = medic.cursor()
    medic.run(["chattr", "-i", STATE])
    empty_cni_dir(medic)
    wait_healed(medic, PROBLEM, since=cursor)
    wait_for_kind(medic, Kind.STATE_SAVED_AGAIN, None, cursor)
    assert "state not saved" not in status_line(medic)


def test_the_daemon_starts_with_a_read_only_state_dir(medic: Node, real_config: bytes):
    medic.drop_in("nodemedic.service", "60-read-only-state", "[Service]\nReadOnlyPaths=/var/lib/nodemedic\n")
    try:
        cursor = medic.cursor()
        medic.systemctl("restart", "nodemedic")
        assert medic.unit_state("nodemedic.service").active_state == "active"
        failed = wait_for_kind(medic, Kind.STATE_NOT_SAVED, None, cursor)
        assert "Read-only file system" in failed["MESSAGE"]
        assert "state not saved" in status_line(medic)
        cursor = medic.cursor()
        empty_cni_dir(medic)  # a safe, idempotent step still runs
        wait_healed(medic, PROBLEM, since=cursor)
    finally:
        medic.remove_drop_in("nodemedic.service", "60-read-only-state")
        medic.systemctl("restart", "nodemedic")


# -- item 11: the cooldown gates a flap, not a new fault -------------------------------------

COOLDOWN = "/etc/nodemedic/conf.d/60-cooldown.toml"


@pytest.fixture
def long_cooldown(medic: Node) -> Iterator[None]:
    medic.write_file(COOLDOWN, '[policy]\ncooldown = "10m"\ncooldown_max = "20m"\n')
    reload_medic(medic)
    yield
    medic.run(["rm", "-f", COOLDOWN])
    reload_medic(medic)
    assert cli(medic, "forget", PROBLEM).returncode == 0


def lost_watch_with_a_real_config(node: Node, config: bytes) -> str:
    """containerd's config watch lost (the directory deleted and made again, containerd#11209),
    with a real config in the new directory: not the placeholder's fault, a restart's. Staged
    while nodemedic is paused, so that it never sees the directory empty; returns the cursor."""
    assert cli(node, "pause").returncode == 0
    cursor = node.cursor()
    node.run(["rm", "-rf", CNI_DIR])
    node.wait_for(lambda: not node.cri_status().network_ready, what="containerd without a network")
    node.run(["mkdir", CNI_DIR])
    node.write_file(REAL, config)
    node.wait_for(lambda: nodemedic_entries(node, Kind.HELD_BACK, cursor, problem=PROBLEM), timeout=60,
                  what="the fault confirmed (and held: paused)")
    assert not node.cri_status().network_ready, "containerd must not have seen the new config by itself"
    assert cli(node, "resume").returncode == 0
    return cursor


def test_a_different_fault_after_a_heal_is_repaired_at_once_and_a_flap_backs_off(
        medic: Node, real_config: bytes, long_cooldown: None):
    # first episode: no config at all → the placeholder heals it; a 10 min cooldown starts
    cursor = medic.cursor()
    medic.run(["rm", "-f", "--", REAL])
    empty_cni_dir(medic)
    wait_healed(medic, PROBLEM, since=cursor)
    assert steps_started(medic, PROBLEM, cursor) == ["cni-placeholder"]
    # seconds later, a different fault of the same problem: repaired at once by its own step
    cursor = lost_watch_with_a_real_config(medic, real_config)
    healed = wait_healed(medic, PROBLEM, since=cursor, timeout=60)  # far below the 10 min cooldown
    assert "restart-containerd" in healed["MESSAGE"]
    assert not [e for e in nodemedic_entries(medic, Kind.HELD_BACK, cursor, problem=PROBLEM)
                if "cooling down" in e["MESSAGE"]]
    assert medic.cri_status().network_ready
    # the same fault again: a flap of the same step, held back by its cooldown
    cursor = lost_watch_with_a_real_config(medic, real_config)
    held = medic.wait_for(lambda: [e for e in nodemedic_entries(medic, Kind.HELD_BACK, cursor, problem=PROBLEM)
                                   if "cooling down" in e["MESSAGE"]], timeout=60, what="held back: cooling down")
    assert "restart-containerd healed the last episode" in held[-1]["MESSAGE"]
    assert steps_started(medic, PROBLEM, cursor) == []
    cli(medic, "repair", PROBLEM)  # the operator's repair is not bound by the cooldown
    wait_healed(medic, PROBLEM, since=cursor, timeout=60)
    medic.run(["rm", "-f", "--", REAL])


# -- item 6: a refused operation is a report, never a crash -----------------------------------

def test_a_protected_cni_dir_with_placeholder_and_real_config_is_reported_not_a_crash(
        medic: Node, real_config: bytes):
    protect = "/etc/nodemedic/conf.d/60-protect-cni.toml"
    text = medic.run(["nodemedic", "config", "show"]).stdout
    paths = next(line for line in text.splitlines() if line.startswith("protected_paths"))
    medic.write_file(protect, "[policy]\n" + paths.replace("]", f', "{CNI_DIR}"]'))
    medic.systemctl("stop", "nodemedic")  # so that the running daemon does not tidy the placeholder away
    medic.write_file(PLACEHOLDER, real_config.replace(b"nmtest", b"nodemedic-placeholder"))
    medic.write_file(REAL, real_config)
    try:
        cursor = medic.cursor()
        medic.systemctl("start", "nodemedic", check=False)
        refused = wait_for_kind(medic, Kind.OPERATION_REFUSED, None, cursor)
        assert "protected" in refused["MESSAGE"]
        medic.wait_for(lambda: nodemedic_entries(medic, Kind.STARTED, cursor), what="started")
        state = medic.unit_state("nodemedic.service")
        assert state.active_state == "active" and state.n_restarts == 0
        assert medic.exists(PLACEHOLDER) and medic.exists(REAL)  # refused: nothing removed
    finally:
        medic.run(["rm", "-f", "--", protect, REAL])
        medic.systemctl("restart", "nodemedic")


# -- item 12: the small ones --------------------------------------------------------------------

def test_forget_and_plan_take_a_problem_only_a_signature_names(medic: Node):
    path = "/etc/nodemedic/signatures.d/nmtest-only.toml"
    medic.write_file(path, 'id = "nmtest-only"\nproblem = "nmtest-only"\nsummary = "an operator\'s own problem"\n'
                     'units = ["kubelet.service"]\norigin = "unit"\nliteral = "nmtest only"\n'
                     "regex = ['^nmtest only$']\n\n[threshold]\ncount = 1\nwindow = \"10m\"\n")
    try:
        reload_medic(medic)
        forgot = cli(medic, "forget", "nmtest-only")
        assert forgot.returncode == 0, forgot.stderr
        plan = cli(medic, "repair", "--dry-run", "nmtest-only")
        assert plan.returncode == 0 and "would not repair: no remedy is known" in plan.stdout
        assert cli(medic, "forget", "no-such-problem").returncode == 1
    finally:
        medic.run(["rm", "-f", path])
        reload_medic(medic)


def test_anyone_may_ask_for_a_plan_and_only_root_may_steer(medic: Node):
    plan = medic.run(["nodemedic", "repair", "--dry-run", PROBLEM], user="nmuser", check=False)
    assert plan.returncode == 0, plan.stderr
    assert "step 1: cni-placeholder (safe)" in plan.stdout
    for command in (["pause"], ["repair", PROBLEM], ["forget", PROBLEM]):
        denied = medic.run(["nodemedic", *command], user="nmuser", check=False)
        assert denied.returncode == 4 and "permission denied" in denied.stderr, command


def test_a_symlink_at_the_placeholder_path_is_not_called_the_placeholder(medic: Node, real_config: bytes):
    elsewhere = "/etc/nmtest-net.conflist"  # another network's config, outside the conf dir
    medic.write_file(elsewhere, real_config)
    medic.run(["ln", "-sfn", elsewhere, PLACEHOLDER])
    try:
        medic.systemctl("reload", "nodemedic")  # the Status line is sent again
        medic.wait_for(lambda: "watching" in status_line(medic), what="a Status line")
        assert "placeholder CNI config active" not in status_line(medic)
        assert medic.run(["test", "-L", PLACEHOLDER], check=False).returncode == 0, "not ours: never removed"
    finally:
        medic.run(["rm", "-f", "--", PLACEHOLDER, elsewhere])
