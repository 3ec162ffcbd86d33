"""Real pod sandboxes in a node: CRI RunPodSandbox through containerd, runc and the CNI plugins.

Three things of the test bed (not of containerd) stand in the way, and `enable_pod_sandboxes`
changes exactly those, restoring them afterwards:

- the sandbox image: the node is offline, so containerd's `sandbox_image` points at a local
  stand-in for pause (images.pause_standin);
- runc's session keyring: systemd-nspawn's seccomp filter answers keyctl with EPERM, which runc
  only tolerates as ENOSYS, so the runc runtime gets `NoNewKeyring = true`;
- the sandbox's oom_score_adj of -998: the host does not let the node lower a score, so
  `restrict_oom_score_adj = true` (containerd then keeps its own score, as for rootless);
- cgroups: on a hybrid node nspawn mounts the v1 controllers read-only; they are remounted
  writable (bind remount, the node's mount namespace only). On a cgroup2-only node (forky) the
  node's cgroup2 subtree is its own already, but has no controllers (the host's are all bound to
  v1), so only sandboxes without resource settings run there — which is all this module asks
  for. Every sandbox gets a cgroup parent named after the node, removed again at the end.

containerd's config is edited in the shape of the file Debian ships: version 2 (containerd 1.6,
1.7) under `plugins."io.containerd.grpc.v1.cri"`, version 3 (containerd 2.x) under the split CRI
plugins `io.containerd.cri.v1.images` / `io.containerd.cri.v1.runtime`.

CRI is driven with the cri_api grpc stubs inside the node (as the kubelet stand-in does).
"""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import images
from .node import NODE_PYTHON, Node, wait_for

CGROUP_V1 = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")
CRI_TABLE = images.CRI_TABLE
RUNC_OPTIONS = """
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      NoNewKeyring = true
"""
# The same settings in a version 3 file (containerd 2.x): the sandbox image is a pinned image of
# the images plugin, the rest belongs to the runtime plugin.
V3_SETTINGS = """
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{sandbox_image}"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  NoNewKeyring = true
"""


def pod_config(stock: str, sandbox_image: str) -> str:
    """Debian's stock config.toml with the sandbox settings above, in the file's own version.
    Refuses a config that is not the stock one any more (a test left it changed)."""
    version = tomllib.loads(stock).get("version", 1)
    if version >= 3:
        assert "io.containerd.cri.v1.images'.pinned_images" not in stock and "runtimes.runc" not in stock, \
            "containerd's config is not Debian's stock one any more"
        return stock.rstrip("\n") + "\n" + V3_SETTINGS.format(sandbox_image=sandbox_image)
    assert stock.count(CRI_TABLE) == 1 and "sandbox_image" not in stock and "runtimes.runc" not in stock, \
        "containerd's config is not Debian's stock one any more"
    cri = f'{CRI_TABLE}\n    sandbox_image = "{sandbox_image}"\n    restrict_oom_score_adj = true'
    return stock.replace(CRI_TABLE, cri, 1) + RUNC_OPTIONS
SANDBOX_READY = 0  # runtime.v1 PodSandboxState

_CRI = r"""
import json, sys, uuid
import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

rt = api_pb2_grpc.RuntimeServiceStub(grpc.insecure_channel(
    "unix:///run/containerd/containerd.sock", options=[("grpc.enable_http_proxy", 0)]))
cmd, args = sys.argv[1], sys.argv[2:]
try:
    if cmd == "run":
        name, uid, cgroup_parent = args
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace="nmtest", attempt=0),
            hostname=name, log_directory=f"/var/log/pods/nmtest_{name}_{uid}",
            linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent))
        out = {"id": rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id}
    elif cmd == "list":
        items = rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
        out = {"items": [{"id": s.id, "name": s.metadata.name, "state": s.state} for s in items]}
    elif cmd == "remove":
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=args[0]), timeout=120)
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=args[0]), timeout=120)
        out = {}
    else:
        raise SystemExit(f"unknown command {cmd}")
except grpc.RpcError as e:
    out = {"error": e.details(), "code": e.code().name}
json.dump(out, sys.stdout)
"""


@dataclass(frozen=True)
class RunResult:
    sandbox_id: str  # "" when RunPodSandbox failed
    error: str  # containerd's error text, "" on success


def cgroup_parent(node: Node) -> str:
    return f"/{node.name}-pods"


def _cri(node: Node, *args: str) -> dict:
    return json.loads(node.run([NODE_PYTHON, "-c", _CRI, *args], timeout=180).stdout)


def run_pod_sandbox(node: Node, name: str) -> RunResult:
    out = _cri(node, "run", name, str(uuid.uuid4()), cgroup_parent(node))
    return RunResult(out.get("id", ""), out.get("error", ""))


def ready_sandboxes(node: Node) -> list[str]:
    out = _cri(node, "list")
    if "error" in out:
        raise RuntimeError(f"ListPodSandbox: {out['error']}")
    return [s["id"] for s in out["items"] if s["state"] == SANDBOX_READY]


def remove_pod_sandbox(node: Node, sandbox_id: str) -> None:
    out = _cri(node, "remove", sandbox_id)
    if "error" in out:
        raise RuntimeError(f"Stop/RemovePodSandbox {sandbox_id}: {out['error']}")


def _remount_cgroups(node: Node, mode: str) -> None:
    if node.stack.unified:
        return  # cgroup2 only: nothing of v1 to lift
    for controller in CGROUP_V1:
        node.run(["mount", "-o", f"remount,bind,{mode}", f"/sys/fs/cgroup/{controller}"])


def _parent_dirs(node: Node) -> list[str]:
    if node.stack.unified:
        return [f"/sys/fs/cgroup{cgroup_parent(node)}"]
    return [f"/sys/fs/cgroup/{controller}{cgroup_parent(node)}" for controller in CGROUP_V1]


def enable_pod_sandboxes(node: Node) -> Callable[[], None]:
    """Make RunPodSandbox possible in the node (see the module docstring); returns the undo,
    which removes every sandbox still there, restores containerd's config and restarts it."""
    sandbox_image = images.pause_standin(node)
    old = node.read_file(images.CONTAINERD_CONFIG)
    node.write_file(images.CONTAINERD_CONFIG, pod_config(old.decode(), sandbox_image))
    _remount_cgroups(node, "rw")
    node.systemctl("restart", "containerd")
    wait_for(lambda: node.cri_status().runtime_ready, timeout=60, what="containerd with the pod settings")

    def undo() -> None:
        for sandbox in _cri(node, "list").get("items", []):
            remove_pod_sandbox(node, sandbox["id"])
        for parent in _parent_dirs(node):
            node.run(["rmdir", parent], check=False)
        _remount_cgroups(node, "ro")
        node.write_file(images.CONTAINERD_CONFIG, old)
        node.systemctl("restart", "containerd")
        wait_for(lambda: node.cri_status().runtime_ready, timeout=60, what="containerd with its own config")

    return undo
