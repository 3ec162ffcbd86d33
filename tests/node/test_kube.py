"""A real Kubernetes in the test bed (issue 14): kube-apiserver, kubelet and kubectl 1.20.2 built
from Debian bookworm's `kubernetes` source package (testbed/kube.py), Debian's etcd and the API
server in a network namespace of their own (testbed/kube_cp.py), and the real kubelet in a
booted bookworm node with containerd 1.6 (testbed/kube_node.py).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.node.testbed import kube
from tests.node.testbed.kube_cp import API_IP, ControlPlane
from tests.node.testbed.kube_node import Kubelet, cgroup_root
from tests.node.testbed.node import Node

pytestmark = [pytest.mark.node, pytest.mark.stacks("bookworm", "trixie")]  # containerd 1.6 and 1.7 serve CRI v1alpha2


def _version(binary: Path) -> str:
    args = ["version", "--client", "--short"] if binary.name == "kubectl" else ["--version"]
    return subprocess.run([str(binary), *args], capture_output=True, text=True, check=True).stdout


def test_binaries_are_1_20_2_from_debian_and_cached(kube_binaries: Path) -> None:
    manifest = kube.manifest()
    assert manifest["source"] == list(kube.SOURCE) and manifest["reflect2"] == list(kube.REFLECT2)
    for name in kube.TARGETS:
        assert "v1.20.2" in _version(kube_binaries / name), name
    # A second call finds the cache (same key, same directory) instead of building again.
    before = (kube_binaries / "kubelet").stat().st_mtime_ns
    assert kube.ensure_kube() / "bin" == kube_binaries
    assert (kube_binaries / "kubelet").stat().st_mtime_ns == before


def test_kubectl_survives_set_credentials(kube_binaries: Path) -> None:
    """Debian's own kubectl 1.20.2 segfaults here (reflect.mapiternext): the vendored
    modern-go/reflect2 1.0.1 breaks under Go >= 1.18; the build swaps in Debian's 1.0.2."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config"
        cp = subprocess.run(
            [str(kube_binaries / "kubectl"), f"--kubeconfig={config}", "config", "set-credentials", "u",
             "--token=t"],
            capture_output=True, text=True, check=False,
        )
        assert cp.returncode == 0, cp.stderr
        assert "token: t" in config.read_text()


def test_api_server_serves_the_admin(control_plane: ControlPlane) -> None:
    assert control_plane.admin().request("GET", "/readyz")[0] == 200
    out = control_plane.kubectl("get", "namespace", "kube-system", "-o", "json").stdout
    assert json.loads(out)["metadata"]["name"] == "kube-system"
    # The API server's network exists only in its own namespace: no host interface carries it
    # (checked locally; never by sending a packet, which would leave the machine).
    host_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert f" {API_IP}/" not in host_addrs


def _node_object(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def test_a_node_identity_patches_its_own_status_only(control_plane: ControlPlane) -> None:
    """The Node authorizer and NodeRestriction, as on a real cluster."""
    own, other = "nm-identity-a", "nm-identity-b"
    node_client = control_plane.client(control_plane.node_identity(own))
    assert node_client.request("POST", "/api/v1/nodes", _node_object(own))[0] == 201
    assert control_plane.admin().request("POST", "/api/v1/nodes", _node_object(other))[0] == 201
    patch = {"status": {"conditions": [{"type": "NodemedicTest", "status": "True", "reason": "Test",
                                        "message": "set by a node identity"}]}}
    status, _ = node_client.request("PATCH", f"/api/v1/nodes/{own}/status", patch,
                                    content_type="application/strategic-merge-patch+json")
    assert status == 200
    status, body = node_client.request("PATCH", f"/api/v1/nodes/{other}/status", patch,
                                       content_type="application/strategic-merge-patch+json")
    assert status == 403, body
    # ...and may not create a Node under another name either.
    assert node_client.request("POST", "/api/v1/nodes", _node_object("nm-identity-c"))[0] == 403


def test_leases_conflict_on_a_stale_resource_version(control_plane: ControlPlane) -> None:
    admin = control_plane.admin()
    path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "nm-guard"},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 30}}
    status, created = admin.request("POST", path, lease)
    assert status == 201, created
    created["spec"]["holderIdentity"] = "b"
    status, updated = admin.request("PUT", f"{path}/nm-guard", created)
    assert status == 200, updated
    created["spec"]["holderIdentity"] = "c"  # still carries the first resourceVersion
    assert admin.request("PUT", f"{path}/nm-guard", created)[0] == 409


def test_api_server_stops_and_restarts_with_its_data(control_plane: ControlPlane) -> None:
    admin = control_plane.admin()
    assert admin.request("POST", "/api/v1/nodes", _node_object("nm-survivor"))[0] in (201, 409)
    control_plane.stop_apiserver()
    with pytest.raises(ConnectionRefusedError):
        admin.request("GET", "/readyz", timeout=5)
    control_plane.start_apiserver()
    assert admin.node("nm-survivor")["metadata"]["name"] == "nm-survivor"


def test_node_goes_ready_through_the_real_kubelet(node: Node, kubelet: Kubelet) -> None:
    ready = kubelet.ready()
    assert ready is not None and ready["status"] == "True", ready
    info = kubelet.cp.admin().node(node.name)["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.20.2"
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    # The real binary, run by systemd as kubelet.service, and it said so in the journal.
    pid = node.unit_state("kubelet.service").main_pid
    assert node.run(["readlink", f"/proc/{pid}/exe"]).stdout.strip() == "/usr/bin/kubelet"
    registered = node.journal(unit="kubelet.service", grep=r"Successfully registered node")
    assert registered and node.name in registered[0]["MESSAGE"]
    # Its pods' cgroups live below the test bed's cgroupRoot, never the node's or the host's root.
    assert node.exists(f"/sys/fs/cgroup/memory{cgroup_root(node)}/kubepods")


def test_node_lease_is_renewed(node: Node, kubelet: Kubelet) -> None:
    admin = kubelet.cp.admin()
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.name}"
    first = admin.get(path)["spec"]["renewTime"]
    node.wait_for(lambda: admin.get(path)["spec"]["renewTime"] != first, timeout=30, interval=1,
                  what="kubelet to renew its node lease")
