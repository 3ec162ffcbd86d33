"""The cluster side (nodemedic-kube.service) against the test bed's real API server and the real
kubelet: Node conditions per class that clear when healed, the opt-in hand-off, Events on the
Node, an API server that goes away and comes back, a system bus restarted, and purge.

nodemedic runs as its unit, nodemedic-kube as its own, with the kubelet's own kubeconfig (a
node identity under the Node authorizer and NodeRestriction, as on a real cluster). What the
API server holds is read by the admin, and every change of the Node by a watch, so a condition
that was True for a moment is seen too.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from nodemedic.journal import Kind
from tests.node.medic import (
    CNI_DIR,
    empty_cni_dir,
    nodemedic_entries,
    phase,
    start_nodemedic,
    wait_for_kind,
    wait_healed,
)
from tests.node.testbed import faults
from tests.node.testbed.kube_cp import ApiError, ControlPlane
from tests.node.testbed.kube_node import KUBECONFIG, Kubelet
from tests.node.testbed.node import Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm")]  # where the real kubelet runs

KUBE_UNIT = "nodemedic-kube.service"
OURS = ("ContainerRuntimeProblem", "ContainerNetworkProblem", "ImageFilesystemProblem", "KubeletProblem",
        "ContainerRuntimeReady", "NetworkingReady", "StorageReady")


class NodeWatch:
    """Every version of the Node's conditions, as a watch sees them (restarted after an outage)."""

    def __init__(self, cp: ControlPlane, name: str) -> None:
        self.cp, self.name = cp, name
        self.seen: list[tuple[float, dict[str, dict[str, Any]]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="node-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        admin = self.cp.admin()
        version = ""  # a restarted watch goes on from the last version seen, so none is missed
        while not self.stop.is_set():
            try:
                for event in admin.watch(f"/api/v1/nodes?watch=1&fieldSelector=metadata.name%3D{self.name}"
                                         f"&resourceVersion={version}", timeout=5):
                    if event.get("type") == "ERROR":  # 410 Gone: too old, start from now
                        version = ""
                        break
                    conds = event.get("object", {}).get("status", {}).get("conditions") or []
                    version = event.get("object", {}).get("metadata", {}).get("resourceVersion", "")
                    self.seen.append((time.monotonic(), {c["type"]: c for c in conds}))
                    if self.stop.is_set():
                        return
            except (OSError, ApiError, ValueError):
                time.sleep(0.2)

    def history(self, kind: str, since: float = 0.0) -> list[tuple[str, str, str]]:
        """The distinct (status, reason, message) of one condition, in order."""
        out: list[tuple[str, str, str]] = []
        for at, conds in list(self.seen):
            c = conds.get(kind)
            item = (c["status"], c["reason"], c["message"]) if c else ("", "", "")
            if at >= since and (not out or out[-1] != item):
                out.append(item)
        return out

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def conditions(cp: ControlPlane, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in cp.admin().node(name)["status"].get("conditions", [])}


def node_events(cp: ControlPlane, name: str) -> list[dict[str, Any]]:
    body = cp.admin().get(f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}")
    return [e for e in body["items"] if e.get("reportingComponent") == "nodemedic"]


def wait_condition(node: Node, cp: ControlPlane, kind: str, status: str, timeout: float = 60.0) -> dict[str, Any]:
    node.wait_for(lambda: conditions(cp, node.name).get(kind, {}).get("status") == status, timeout=timeout,
                  interval=0.5, what=f"{kind}={status} on the Node")
    return conditions(cp, node.name)[kind]


@pytest.fixture(scope="module")
def kube_medic(node: Node, kubelet: Kubelet) -> Iterator[tuple[Node, ControlPlane, NodeWatch]]:
    """The kubelet's node (Ready), its CNI config taken away, then nodemedic-kube and nodemedic."""
    cp = kubelet.cp
    watch = NodeWatch(cp, node.name)
    extra = (f'\n[kubernetes]\nenabled = true\nkubeconfig = "{KUBECONFIG}"\nnode_name = "{node.name}"\n'
             "handoff = true\n")
    node.drop_in(KUBE_UNIT, "10-testbed", "[Service]\nExecStart=\nExecStart=/usr/local/bin/nodemedic kube run\n")
    # The cluster side first: it waits for the daemon and sees its very first transition.
    node.run(["mkdir", "-p", "/etc/nodemedic/conf.d"])
    node.write_file("/etc/nodemedic/conf.d/60-kube.toml", extra)
    node.systemctl("start", KUBE_UNIT)
    try:
        start_nodemedic(node, bootstrapping=True)
        yield node, cp, watch
    finally:
        watch.close()
        print(node.run(["journalctl", "-o", "short-precise", "--no-pager", "-u", KUBE_UNIT], check=False).stdout,
              file=sys.stderr)
        node.systemctl("stop", KUBE_UNIT, "nodemedic.service", check=False)
        node.run(["rm", "-f", "/etc/nodemedic/conf.d/60-kube.toml"])


def test_a_confirmed_cni_fault_shows_as_condition_and_events_and_clears(kube_medic) -> None:
    node, cp, watch = kube_medic
    wait_healed(node, "cni-config-missing", since="")
    healed = wait_condition(node, cp, "ContainerNetworkProblem", "False")
    node.wait_for(lambda: {"ProblemHealed"} <= {e["reason"] for e in node_events(cp, node.name)},
                  timeout=30, what="the ProblemHealed Event")
    assert healed["reason"] == "ContainerNetworkIsHealthy", healed
    # On the way: True with the ladder's progress, then False; the hand-off never went False
    # while the ladder climbed.
    history = watch.history("ContainerNetworkProblem")
    shown = [h for h in history if h[0] == "True"]
    assert shown and all(h[1] == "CniConfigMissing" for h in shown), history
    assert any("step 1 of 2 (cni-placeholder)" in h[2] and "attempts" in h[2] for h in shown), history
    assert history[-1][0] == "False", history
    assert all(h[0] == "True" for h in watch.history("NetworkingReady") if h[0]), watch.history("NetworkingReady")
    # The other classes are there, False with a healthy reason.
    now = conditions(cp, node.name)
    for kind in ("ContainerRuntimeProblem", "ImageFilesystemProblem", "KubeletProblem"):
        assert now[kind]["status"] == "False" and now[kind]["reason"].endswith("IsHealthy"), now[kind]
    # The kubelet's own Ready (False for a while: the CNI config was taken away) is its own.
    assert now["Ready"]["reason"].startswith("Kubelet") and not now["Ready"]["message"].startswith("nodemedic")
    # Events: on the Node (with its uid), CamelCase reasons, Warning/Normal, from nodemedic.
    uid = cp.admin().node(node.name)["metadata"]["uid"]
    events = {e["reason"]: e for e in node_events(cp, node.name)}
    assert {"ProblemConfirmed", "RepairStepStarted", "ProblemHealed"} <= set(events), list(events)
    assert events["ProblemConfirmed"]["type"] == "Warning" and events["ProblemHealed"]["type"] == "Normal"
    assert "step 1 of 2 (cni-placeholder)" in events["RepairStepStarted"]["message"]
    for e in events.values():
        assert e["involvedObject"]["kind"] == "Node" and e["involvedObject"]["uid"] == uid, e
        assert e["source"]["component"] == "nodemedic" and e["count"] >= 1


def test_handoff_goes_false_when_exhausted_and_true_after(kube_medic) -> None:
    node, cp, watch = kube_medic
    faults.write_cni_config(node)  # the real config arrives: the placeholder gives way
    node.wait_for(lambda: node.cri_status().network_ready and not node.exists(
        f"{CNI_DIR}/zz-nodemedic-placeholder.conflist"), timeout=60, what="the real network")
    cursor = node.cursor()
    start = time.monotonic()
    empty_cni_dir(node)  # after a real config: no placeholder, restart containerd, exhausted
    wait_for_kind(node, Kind.EXHAUSTED, "cni-config-missing", cursor, timeout=120)
    handoff = wait_condition(node, cp, "NetworkingReady", "False")
    assert handoff["reason"] == "NodemedicExhaustedCniConfigMissing", handoff
    problem = conditions(cp, node.name)["ContainerNetworkProblem"]
    assert problem["status"] == "True" and "exhausted after attempts" in problem["message"], problem
    # Never False while the ladder climbed: the only False is the one after EXHAUSTED.
    climbing = watch.history("NetworkingReady", since=start)
    assert [h[0] for h in climbing if h[0]] in (["True", "False"], ["False"]), climbing
    node.wait_for(lambda: "ProblemExhausted" in {e["reason"] for e in node_events(cp, node.name)},
                  timeout=30, what="the ProblemExhausted Event")
    # Healed (a real config back): True again, and the problem condition clears.
    faults.write_cni_config(node)
    node.wait_for(lambda: phase(node, "cni-config-missing") in ("idle", "healed"), timeout=60, what="cleared")
    assert wait_condition(node, cp, "NetworkingReady", "True")["reason"] == "NodemedicHealthy"
    assert wait_condition(node, cp, "ContainerNetworkProblem", "False")["reason"] == "ContainerNetworkIsHealthy"


def test_api_server_away_and_back_catches_up_without_a_crash(kube_medic) -> None:
    node, cp, _watch = kube_medic
    pid = node.unit_state(KUBE_UNIT).main_pid
    cursor = node.cursor()
    cp.stop_apiserver()
    try:
        empty_cni_dir(node)  # local repairs go on without the API server
        wait_for_kind(node, Kind.EXHAUSTED, "cni-config-missing", cursor, timeout=120)
        node.wait_for(lambda: nodemedic_entries(node, Kind.KUBE_TROUBLE, cursor), timeout=60,
                      what="the outage in the journal")
        time.sleep(5)  # several retries: still one entry for the outage
    finally:
        cp.start_apiserver()
    assert len(nodemedic_entries(node, Kind.KUBE_TROUBLE, cursor)) == 1
    assert wait_condition(node, cp, "NetworkingReady", "False", timeout=90)["reason"].startswith("NodemedicExhausted")
    assert conditions(cp, node.name)["ContainerNetworkProblem"]["status"] == "True"
    node.wait_for(lambda: nodemedic_entries(node, Kind.KUBE_RECOVERED, cursor), timeout=30, what="recovered")
    assert node.unit_state(KUBE_UNIT).main_pid == pid  # never crashed nor restarted
    faults.write_cni_config(node)
    wait_condition(node, cp, "ContainerNetworkProblem", "False")


def test_a_restarted_system_bus_is_waited_out_and_the_daemon_followed_again(kube_medic) -> None:
    node, cp, _watch = kube_medic
    pid = node.unit_state(KUBE_UNIT).main_pid
    cursor = node.cursor()
    node.systemctl("restart", "dbus")
    node.wait_for(lambda: [e for e in nodemedic_entries(node, Kind.KUBE_TROUBLE, cursor)
                           if "system bus" in e["MESSAGE"]], timeout=30, what="the bus loss in the journal")
    node.wait_for(lambda: nodemedic_entries(node, Kind.KUBE_RECOVERED, cursor), timeout=60, what="the bus back")
    # Followed again: a new fault and its healing show on the Node.
    empty_cni_dir(node)
    wait_condition(node, cp, "ContainerNetworkProblem", "True", timeout=120)
    faults.write_cni_config(node)
    wait_condition(node, cp, "ContainerNetworkProblem", "False", timeout=120)
    assert node.unit_state(KUBE_UNIT).main_pid == pid  # never crashed nor restarted
    assert len([e for e in nodemedic_entries(node, Kind.KUBE_TROUBLE, cursor) if "system bus" in e["MESSAGE"]]) == 1


def test_purge_removes_nodemedics_conditions_only(kube_medic) -> None:
    node, cp, _watch = kube_medic
    node.systemctl("stop", KUBE_UNIT)
    before = conditions(cp, node.name)
    assert set(OURS) <= set(before)
    result = node.run(["nodemedic", "kube", "purge"], check=False)
    assert result.returncode == 0, result.stderr
    after = conditions(cp, node.name)
    assert not set(OURS) & set(after), after
    assert set(after) == set(before) - set(OURS)  # the kubelet's own are all still there
    assert after["Ready"] == before["Ready"] or after["Ready"]["type"] == "Ready"


def test_turned_off_it_removes_its_conditions_and_stops(kube_medic) -> None:
    node, cp, _watch = kube_medic
    node.systemctl("start", KUBE_UNIT)  # enabled again: its conditions come back
    node.wait_for(lambda: set(OURS) <= set(conditions(cp, node.name)), timeout=60, what="conditions back")
    node.write_file("/etc/nodemedic/conf.d/70-off.toml", "[kubernetes]\nenabled = false\n")
    try:
        node.systemctl("restart", KUBE_UNIT)
        node.wait_for(lambda: not set(OURS) & set(conditions(cp, node.name)), timeout=60, what="conditions removed")
        node.wait_for(lambda: node.unit_state(KUBE_UNIT).active_state == "inactive", timeout=30,
                      what="the unit done, not failed")
        assert "Ready" in conditions(cp, node.name)
    finally:
        node.run(["rm", "-f", "/etc/nodemedic/conf.d/70-off.toml"])


def test_kube_check_with_the_kubelets_credentials(kube_medic) -> None:
    """The kubelet's kubeconfig: conditions and Events work, the fleet guard's Leases do not."""
    node, _cp, _watch = kube_medic
    result = node.run(["nodemedic", "kube", "check"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "conditions: will work" in result.stdout and "events: will work" in result.stdout
    assert "yes  patch nodes/status" in result.stdout
    assert "fleet guard: will NOT work" in result.stdout
    assert "NO   create leases.coordination.k8s.io in nodemedic" in result.stdout
