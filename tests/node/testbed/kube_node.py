"""The real kubelet 1.20.2 in a booted node (any stack whose containerd still serves CRI v1alpha2:
containerd 1.6 and 1.7; containerd 2.x keeps the stand-in, tests/node/kubelet_standin.py).

`install_kubelet(node, cp)` links the node to the control plane (kube_cp.ControlPlane.attach),
replaces the stand-in's kubelet.service with the real kubelet's and changes only what kubelet
needs from the node, inside the node, each step undone by `Kubelet.remove()`:

- containerd as for pod sandboxes (pods.enable_pod_sandboxes): the sandbox image is the test
  bed's own pause stand-in (imported, never pulled), runc without a session keyring, no
  lowered oom_score_adj, the v1 cgroup controllers remounted writable in the node;
- /dev/kmsg, which kubelet's OOM watcher opens: a link to /dev/console, as kind makes it;
- the kernel tunables kubelet's ContainerManager insists on (vm.overcommit_memory=1,
  kernel.panic=10, kernel.panic_on_oops=1, ...): /proc/sys is read-only in the node, so a
  regular file that already holds the wanted value is bind-mounted over each one that differs,
  in the node's mount namespace only. The host's sysctls are never written;
- a cgroupRoot of its own (`/<node>-kubelet`) in every controller kubelet checks, made before
  it starts (cpuset.cpus/mems copied from the parent, as kind's entrypoint does) and removed,
  with everything kubelet made below it, at the end.

The kubelet authenticates with a client certificate CN=system:node:<node name>, O=system:nodes,
so the API server's Node authorizer and NodeRestriction apply to it as on a real cluster.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable

from . import kube, pods
from .kube_cp import API_IP, API_PORT, ControlPlane, Identity, kubeconfig_text
from .node import FILES, Node, wait_for
from .proc_sys import bind_proc_sys

KUBELET_BIN = "/usr/bin/kubelet"
UNIT = "/etc/systemd/system/kubelet.service"
CONFIG = "/var/lib/kubelet/config.yaml"
KUBECONFIG = "/etc/kubernetes/kubelet.conf"
CA = "/etc/kubernetes/pki/ca.crt"
DEFAULTS = "/etc/default/kubelet"
SYSCTL_DIR = "/run/nodemedic-testbed/kubelet-sysctl"
# What pkg/kubelet/cm/container_manager_linux.go setupKernelTunables wants (v1.20.2).
KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
# The v1 controllers kubelet's cgroup manager checks for the cgroupRoot (cgroup_manager_linux.go
# Exists + container_manager_linux.go validateSystemRequirements), plus the others it joins.
_WRITE_PLAIN = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "systemd", "devices", "freezer", "blkio")


def cgroup_root(node: Node) -> str:
    return f"/{node.name}-kubelet"


def kubelet_config(node: Node, **overrides: object) -> dict[str, object]:
    """The KubeletConfiguration: kubeadm's defaults where they matter, plus what a test node
    needs (no swap check, no eviction on a small shared disk, its own cgroupRoot)."""
    config: dict[str, object] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": CA},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",  # Debian's containerd config: SystemdCgroup = false
        "cgroupRoot": cgroup_root(node),
        "failSwapOn": False,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "port": 10250,
        "address": "0.0.0.0",
        "resolvConf": "",
        "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
        "imageGCHighThresholdPercent": 100,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }
    config.update(overrides)
    return config


@dataclasses.dataclass
class Kubelet:
    """A real kubelet installed in `node`, registered as `node_name` with `cp`."""

    node: Node
    cp: ControlPlane
    ip: str
    identity: Identity
    _undo: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    @property
    def node_name(self) -> str:
        return self.node.name

    def ready(self) -> dict[str, object] | None:
        """The Node's Ready condition as the API server has it (None before registration)."""
        return self.cp.admin().node_condition(self.node_name)

    def wait_ready(self, status: str = "True", timeout: float = 180.0) -> dict[str, object]:
        return wait_for(
            lambda: (c := self.ready()) is not None and c.get("status") == status and c,
            timeout=timeout, interval=1.0, what=f"node {self.node_name} Ready={status}",
        )

    def remove(self) -> None:
        """Undo install_kubelet, newest step first; every step is tried."""
        errors = []
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except Exception as e:  # noqa: BLE001 - undo the rest, then report
                errors.append(f"{getattr(step, '__name__', step)}: {e}")
        if errors:
            raise RuntimeError("removing the kubelet left: " + "; ".join(errors))


def _dev_kmsg(node: Node) -> Callable[[], None]:
    if node.exists("/dev/kmsg"):
        return lambda: None
    node.run(["ln", "-s", "/dev/console", "/dev/kmsg"])

    def remove_dev_kmsg() -> None:
        node.run(["rm", "-f", "/dev/kmsg"])

    return remove_dev_kmsg


def _make_cgroup_root(node: Node) -> Callable[[], None]:
    made = []
    root = cgroup_root(node)
    for controller in CGROUP_CONTROLLERS:
        base = f"/sys/fs/cgroup/{controller}"
        if not node.exists(f"{base}/cgroup.procs"):
            continue
        node.run(["mkdir", "-p", f"{base}{root}"])
        made.append(f"{base}{root}")
        if controller == "cpuset":
            # cgroupfs files take a plain write; write_file's temp file + rename cannot work here.
            for f in ("cpuset.cpus", "cpuset.mems"):
                value = node.read_file(f"{base}/{f}").decode().strip()
                node.run(["python3", "-c", _WRITE_PLAIN, f"{base}{root}/{f}", value])

    def remove_cgroup_root() -> None:
        for d in made:
            # Bottom-up: kubelet's kubepods/{burstable,besteffort}/... below it, then the root.
            node.run(["find", d, "-depth", "-type", "d", "-exec", "rmdir", "{}", "+"], check=False)
        left = [d for d in made if node.exists(d)]
        if left:
            raise RuntimeError(f"cgroups left behind: {left}")

    return remove_cgroup_root


def install_kubelet(node: Node, cp: ControlPlane, *, start: bool = True, v: int = 1,
                    config_overrides: dict[str, object] | None = None) -> Kubelet:
    """Install and (by default) start the real kubelet in `node`, registered with `cp`."""
    kube.ensure_kube()
    ip = cp.attach(node)
    identity = cp.node_identity(node.name)
    kubelet = Kubelet(node, cp, ip, identity)
    try:
        # The binary straight into the (our own, freshly unpacked) root: 110 MB through nsenter's
        # stdin would be slow. Removed again at the end.
        target = node.root / KUBELET_BIN.lstrip("/")
        shutil.copy2(kube.binary("kubelet"), target)
        kubelet._undo.append(lambda: node.run(["rm", "-f", KUBELET_BIN]))
        old_unit = node.read_file(UNIT)

        def restore_standin() -> None:
            node.systemctl("stop", "kubelet.service", check=False)
            node.write_file(UNIT, old_unit)
            node.run(["rm", "-rf", "/var/lib/kubelet", "/etc/kubernetes", DEFAULTS])
            node.daemon_reload()
            node.systemctl("start", "kubelet.service")

        node.systemctl("stop", "kubelet.service")
        kubelet._undo.append(restore_standin)
        kubelet._undo.append(pods.enable_pod_sandboxes(node))
        kubelet._undo.append(_dev_kmsg(node))
        kubelet._undo.append(bind_proc_sys(node, KERNEL_TUNABLES, SYSCTL_DIR))
        kubelet._undo.append(_make_cgroup_root(node))

        ca = cp.pki.ca_cert.read_text()
        node.write_file(CA, ca)
        node.write_file(KUBECONFIG, kubeconfig_text(ca, identity.cert.read_text(), identity.key.read_text(),
                                                    identity.name, f"https://{API_IP}:{API_PORT}"), 0o600)
        node.write_file(CONFIG, json.dumps(kubelet_config(node, **(config_overrides or {})), indent=1) + "\n")
        args = [
            "--container-runtime=remote",
            "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
            f"--hostname-override={node.name}",
            f"--node-ip={ip}",
            f"--v={v}",
        ]
        node.write_file(DEFAULTS, f"KUBELET_ARGS={' '.join(args)}\n")
        node.write_file(UNIT, (FILES / "kubelet-real.service").read_bytes())
        node.daemon_reload()
        # Undone first: nothing below may go while kubelet still runs.
        kubelet._undo.append(lambda: node.systemctl("stop", "kubelet.service"))
        if start:
            node.systemctl("start", "kubelet.service")
        return kubelet
    except BaseException:
        kubelet.remove()
        raise
