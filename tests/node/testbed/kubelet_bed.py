"""Which kubelet drives a ladder test: the real kubelet 1.20.2 where it runs, the stand-in where it
cannot (imported by tests/node/conftest.py).

kubelet 1.20 speaks CRI v1alpha2 only. containerd 1.6 (bookworm) and 1.7 (trixie) serve it, so on
those stacks the ladder modules get a control plane of their own (one per module: etcd +
kube-apiserver, testbed/kube_cp.py) and the real kubelet in their node (testbed/kube_node.py),
registered and seen Ready before nodemedic starts. containerd 2.x (trixie-containerd2, forky)
serves only CRI v1, which kubelet 1.20 cannot talk to: there the kubelet STAND-IN
(tests/node/kubelet_standin.py) stays, as it was.

- `ladder_kubelet` (module): a `LadderKubelet` for the module's node; `.real` is the `Kubelet`
  (None on a stand-in stack), `.is_real`, `.name` ("kubelet 1.20.2" / "kubelet stand-in").
  A module's `REAL_KUBELET_CONFIG` dict, if any, goes into the real kubelet's KubeletConfiguration.
- `quick_kubelet` (function): the stand-in with short periods, as `fast_kubelet`; the real kubelet
  keeps its own (compiled-in) periods and is only seen healthy: running, its Node Ready.
- `crash_loop_kubelet(node, ladder)`: a fault that makes whichever kubelet runs exit at every start.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest

from . import faults
from .kube_node import CONFIG, KUBECONFIG, KUBELET_BIN, Kubelet, install_kubelet
from .node import NODE_PYTHON, Node
from .stacks import Stack

# Stacks whose containerd serves CRI v1alpha2, the only CRI API kubelet 1.20 knows.
REAL_KUBELET_STACKS = frozenset({"bookworm", "trixie"})
# The stand-in's short periods (conftest.KUBELET_FAST); kept in step with it by hand.
STANDIN_FAST = {"image_gc_period": 2, "runtime_sync_period": 2, "runtime_down_after": 6, "v": 4}
KUBELET = "kubelet.service"
CLIENT_DIR = "/run/nodemedic-testbed/kubelet-client"
# GET https://127.0.0.1:10250/stats/summary with the node's own client certificate (kubelet's
# x509 authn trusts the test bed's CA; its serving certificate is self-signed, so not verified).
_SUMMARY = """
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
with urllib.request.urlopen("https://127.0.0.1:10250/stats/summary", context=ctx, timeout=20) as r:
    sys.stdout.write(r.read().decode())
"""


def real_kubelet_runs(stack: Stack) -> bool:
    return stack.name in REAL_KUBELET_STACKS


@dataclasses.dataclass
class LadderKubelet:
    node: Node
    real: Kubelet | None

    @property
    def is_real(self) -> bool:
        return self.real is not None

    @property
    def name(self) -> str:
        return "kubelet 1.20.2" if self.is_real else "kubelet stand-in"

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """The real kubelet running and its Node Ready on the API server."""
        assert self.real is not None
        node = self.node
        node.wait_for(lambda: node.unit_state(KUBELET).sub_state == "running", timeout=timeout,
                      what="kubelet running")
        self.real.wait_ready(timeout=timeout)

    def stats_summary(self) -> dict:
        """The real kubelet's /stats/summary (what it knows of the node, the image fs included)."""
        assert self.real is not None
        node = self.node
        cert, key = f"{CLIENT_DIR}/client.crt", f"{CLIENT_DIR}/client.key"
        if not node.exists(key):
            node.write_file(cert, self.real.identity.cert.read_text())
            node.write_file(key, self.real.identity.key.read_text(), 0o600)
        return json.loads(node.run([NODE_PYTHON, "-c", _SUMMARY, cert, key], timeout=60).stdout)

    def imagefs_capacity(self) -> int | None:
        """The image filesystem's capacity as the real kubelet sizes it (None: it has none)."""
        return self.stats_summary()["node"].get("runtime", {}).get("imageFs", {}).get("capacityBytes")


@pytest.fixture(scope="module")
def ladder_kubelet(request: pytest.FixtureRequest, node: Node, stack: Stack) -> Iterator[LadderKubelet]:
    if not real_kubelet_runs(stack):
        yield LadderKubelet(node, None)
        return
    cp = request.getfixturevalue("control_plane")
    # A module may set KubeletConfiguration fields of its own (e.g. a shorter runtimeRequestTimeout).
    k = install_kubelet(node, cp, config_overrides=getattr(request.module, "REAL_KUBELET_CONFIG", None))
    try:
        k.wait_ready()
        yield LadderKubelet(node, k)
    finally:
        node.run(["rm", "-rf", CLIENT_DIR], check=False)
        k.remove()


@pytest.fixture
def quick_kubelet(ladder_kubelet: LadderKubelet) -> Iterator[LadderKubelet]:
    """Stand-in: image GC every 2 s, runtime down after 6 s, -v=4, seen healthy (one successful
    image GC); back to its defaults afterwards. Real kubelet: its periods are constants in 1.20
    (image GC 5 min, runtime down after 30 s), so it is only seen healthy."""
    node = ladder_kubelet.node
    if ladder_kubelet.is_real:
        ladder_kubelet.wait_healthy()
        yield ladder_kubelet
        return
    since = node.cursor()
    node.configure_kubelet(**STANDIN_FAST)
    node.wait_for_journal('"Image garbage collection succeeded"', unit=KUBELET, since=since, timeout=20)
    yield ladder_kubelet
    node.configure_kubelet()


def crash_loop_kubelet(node: Node, ladder: LadderKubelet, restart_sec: float = 1.0) -> faults.Fault:
    """kubelet exits 1 right after every start, restarted forever. The stand-in: faults.crash_loop
    (a missing --config). The real kubelet fails the same real way, an un-joined node's: the
    drop-in points --config at a file that does not exist, and kubelet 1.20 exits with
    "failed to load Kubelet config file". Restore: the drop-in removed, kubelet restarted."""
    if not ladder.is_real:
        return faults.crash_loop(node, KUBELET, restart_sec=restart_sec)
    missing = CONFIG.replace("config.yaml", "nmtest-missing-config.yaml")
    text = (
        "[Unit]\nStartLimitIntervalSec=0\n\n"
        f"[Service]\nExecStart=\nExecStart={KUBELET_BIN} --config={missing} --kubeconfig={KUBECONFIG} $KUBELET_ARGS\n"
        f"Restart=always\nRestartSec={restart_sec}\n"
    )
    node.drop_in(KUBELET, "90-nmtest-crash-loop", text)
    node.systemctl("restart", "--no-block", KUBELET)

    def restore() -> None:
        node.remove_drop_in(KUBELET, "90-nmtest-crash-loop")
        node.systemctl("reset-failed", KUBELET, check=False)
        node.systemctl("restart", KUBELET)

    return faults.Fault("crash-loop", restore, {"unit": KUBELET, "config": missing})
