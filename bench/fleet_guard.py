"""The fleet guard inside nodemedic-kube (`nodemedic kube run`, fleet.enabled) in a test node
against the test bed's real API server: what the running process costs once it has served a
slot and gone idle.

- a slot taken and given back through org.nodemedic.Kube1 (busctl, as the repair daemon asks):
  the D-Bus round trips, which include the Lease GET/PUT against the API server;
- then idle: RssAnon, threads, and wake-ups (context switches) over an idle minute. Goal (issue
  15): no wake-up beyond the watchdog and the heartbeat; with kubernetes.enabled off there is
  no heartbeat, so 0.

The guard's identity is its own client certificate (CN=nodemedic:fleet:NAME, O=nodemedic:fleet,
packaging/kubernetes/rbac.yaml) as fleet.kubeconfig. No kubelet runs.

    .venv/bin/python -m bench.fleet_guard --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.kube_latency import idle_cost
from bench.nodebench import REPO, BenchNode
from nodemedic.journal import Kind
from tests.node.testbed.kube_cp import ControlPlane, kubeconfig_text

KUBE_UNIT = "nodemedic-kube.service"
KUBECONFIG = "/etc/nodemedic/fleet.kubeconfig"
KUBE1 = ["org.nodemedic.Kube1", "/org/nodemedic/Kube1", "org.nodemedic.Kube1"]


def setup(bench: BenchNode, cp: ControlPlane) -> None:
    node = bench.node
    cp.attach(node)
    cp.kubectl("apply", "-f", str(REPO / "packaging/kubernetes/rbac.yaml"))
    user = f"nodemedic:fleet:{node.name}"
    cert, key = cp.pki.client(f"fleet-{node.name}", user, ["nodemedic:fleet"])
    node.write_file(KUBECONFIG, kubeconfig_text(cp.pki.ca_cert.read_text(), cert.read_text(), key.read_text(),
                                                user), 0o600)
    node.write_file("/etc/dbus-1/system.d/org.nodemedic.Kube1.conf",
                    (REPO / "units/org.nodemedic.Kube1.conf").read_bytes())
    node.systemctl("reload", "dbus")
    node.write_file("/etc/nodemedic/conf.d/60-fleet.toml",
                    f'[fleet]\nenabled = true\nkubeconfig = "{KUBECONFIG}"\n'
                    f'[kubernetes]\nnode_name = "{node.name}"\n')
    node.drop_in(KUBE_UNIT, "10-testbed", "[Service]\nExecStart=\nExecStart=/usr/local/bin/nodemedic kube run\n")
    since = node.cursor()
    node.systemctl("start", KUBE_UNIT)
    node.wait_for(lambda: node.journal(message_id=Kind.FLEET_SERVING.value, since=since), timeout=60,
                  what="the fleet guard serving")


def slot_rounds(bench: BenchNode, n: int) -> tuple[list[float], list[float]]:
    acquire, release = [], []
    for _ in range(n):
        t0 = time.monotonic()
        out = bench.node.run(["busctl", "call", *KUBE1, "AcquireSlot", "ss", "bench", "bench-step"]).stdout
        t1 = time.monotonic()
        assert out.startswith("bass true"), out
        bench.node.run(["busctl", "call", *KUBE1, "ReleaseSlot", "s", "bench"])
        t2 = time.monotonic()
        acquire.append((t1 - t0) * 1000)
        release.append((t2 - t1) * 1000)
    return acquire, release


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    cp = ControlPlane().start()
    try:
        with BenchNode.booted() as bench:
            setup(bench, cp)
            acquire, release = slot_rounds(bench, args.rounds)
            time.sleep(3)
            anon, threads, wakeups = idle_cost(bench, args.idle)
    finally:
        cp.stop()
    for name, values in (("AcquireSlot (busctl, incl. Lease GET+PUT)", acquire),
                         ("ReleaseSlot (busctl, incl. Lease PUT)", release)):
        print(f"{name}: n={len(values)} p50 {statistics.median(values):.1f} ms, max {max(values):.1f} ms")
    print(f"nodemedic-kube with the fleet guard, idle: RssAnon {anon:.1f} MiB, {threads} thread(s), "
          f"{wakeups} wake-ups in {args.idle:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
