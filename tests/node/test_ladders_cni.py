"""The cni-config-missing ladder beyond its first heal (test_daemon.py): the placeholder gives way
to a real config, and once a real config was seen no placeholder is ever written again.

Real containerd watches /etc/cni/net.d; every verdict is CRI Status (verbose info for which
network containerd loaded), never a look at nodemedic's own file.
"""

from __future__ import annotations

import pytest

from nodemedic.journal import Kind
from tests.node.medic import (
    CNI_DIR,
    cri_info,
    empty_cni_dir,
    media_checksums,
    nodemedic_entries,
    phase,
    start_nodemedic,
    steps_started,
    wait_for_kind,
    wait_healed,
)
from tests.node.testbed import faults
from tests.node.testbed.node import Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2")]

PLACEHOLDER = f"{CNI_DIR}/zz-nodemedic-placeholder.conflist"


def loaded_networks(node: Node) -> list[str]:
    """The CNI networks containerd has loaded, by name (CRI Status verbose: cniconfig), without
    the loopback network it always adds."""
    networks = cri_info(node).get("cniconfig", {}).get("Networks") or []
    return [n["Config"]["Name"] for n in networks if n["Config"]["Name"] != "cni-loopback"]


@pytest.fixture(scope="module")
def medic(node: Node) -> Node:
    """A node that never had a CNI config: containerd started without one, then nodemedic."""
    node.run(["mkdir", "-p", CNI_DIR])
    empty_cni_dir(node)
    node.systemctl("restart", "containerd")
    node.wait_for(lambda: not node.cri_status().network_ready, what="containerd without CNI config")
    start_nodemedic(node)
    return node


def test_placeholder_heals_a_fresh_node_and_gives_way_to_a_real_config(medic: Node):
    before = media_checksums(medic)
    wait_healed(medic, "cni-config-missing", since="")
    assert medic.cri_status().network_ready
    assert "nodemedic-placeholder" in loaded_networks(medic)
    assert nodemedic_entries(medic, Kind.PLACEHOLDER_ACTIVE), "an active placeholder must be reported"
    cursor = medic.cursor()
    # The CNI daemonset arrives: its config sorts first, so containerd switches to it at once,
    # and nodemedic removes its placeholder.
    faults.write_cni_config(medic)
    removed = wait_for_kind(medic, Kind.PLACEHOLDER_REMOVED, None, cursor)
    assert removed["NODEMEDIC_PATH"] == PLACEHOLDER
    assert not medic.exists(PLACEHOLDER)
    medic.wait_for(lambda: loaded_networks(medic) == ["nmtest"], what="containerd on the real network only")
    assert medic.cri_status().network_ready
    assert media_checksums(medic) == before


def test_after_a_real_config_no_placeholder_restart_containerd_then_exhausted(medic: Node):
    """Policy `until-first-real`: the real config goes away, nodemedic must not paper over it.
    It climbs to restarting containerd, which cannot conjure a network either, and stops."""
    before = media_checksums(medic)
    medic.wait_for(lambda: loaded_networks(medic) == ["nmtest"], what="the real network loaded")
    cursor = medic.cursor()
    empty_cni_dir(medic)
    exhausted = wait_for_kind(medic, Kind.EXHAUSTED, "cni-config-missing", cursor, timeout=90)
    assert "every step of the ladder was tried" in exhausted["MESSAGE"]
    assert steps_started(medic, "cni-config-missing", cursor) == ["restart-containerd"]
    assert nodemedic_entries(medic, Kind.PLACEHOLDER_ACTIVE, cursor) == []
    assert not medic.exists(PLACEHOLDER)
    assert not medic.cri_status().network_ready
    assert phase(medic, "cni-config-missing") == "exhausted"
    # Once a real config is back (containerd's restarted watch sees it), the problem clears.
    faults.write_cni_config(medic)
    medic.wait_for(lambda: medic.cri_status().network_ready, what="NetworkReady with the real config")
    medic.wait_for(lambda: phase(medic, "cni-config-missing") == "idle", timeout=30, what="problem cleared")
    assert steps_started(medic, "cni-config-missing", cursor) == ["restart-containerd"]
    assert media_checksums(medic) == before
