"""nodemedic-kube in a test node against the test bed's real API server: how soon a transition
shows on the Node, and what the running process costs.

- latency: from the daemon's journal entry (CONFIRMED, STEP_STARTED, HEALED of
  cni-config-missing; __REALTIME_TIMESTAMP) to the moment a watch of the Node, run by this
  process, receives the changed ContainerNetworkProblem condition. The node shares the host's
  clock (nspawn), so both sides use CLOCK_REALTIME. Goal (issue 15): ≤ 100 ms.
- the kube process: RssAnon, threads, and wake-ups (context switches) over an idle minute.

The node is bench/nodebench.py's (placeholder = "always", cooldown 0, so a fault heals again and
again); its Node object is made with the node's own identity (CN=system:node:NAME), and
nodemedic-kube uses that identity, as it would the kubelet's kubeconfig. No kubelet runs.

    .venv/bin/python -m bench.kube_latency --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

from bench.nodebench import BenchNode, sample
from nodemedic.report.journal import Kind
from tests.node.testbed.kube_cp import ApiError, ControlPlane, kubeconfig_text

KUBE_UNIT = "nodemedic-kube.service"
KUBECONFIG = "/etc/nodemedic/kube.conf"


class Watch:
    def __init__(self, cp: ControlPlane, name: str) -> None:
        self.cp, self.name = cp, name
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        admin = self.cp.admin()
        while not self.stop.is_set():
            try:
                for event in admin.watch(f"/api/v1/nodes?watch=1&fieldSelector=metadata.name%3D{self.name}",
                                         timeout=5):
                    at = time.time()
                    conds = {c["type"]: c for c in event["object"]["status"].get("conditions") or []}
                    if "ContainerNetworkProblem" in conds:
                        self.seen.append((at, conds["ContainerNetworkProblem"]))
            except (OSError, ApiError, ValueError):
                time.sleep(0.1)

    def first_after(self, t: float, match: Any) -> float | None:
        for at, cond in list(self.seen):
            if at >= t and match(cond):
                return at
        return None


def setup(bench: BenchNode, cp: ControlPlane) -> None:
    node = bench.node
    cp.attach(node)
    ident = cp.node_identity(node.name)
    status, body = cp.client(ident).request("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                                                      "metadata": {"name": node.name}})
    assert status == 201, body
    node.write_file(KUBECONFIG, kubeconfig_text(cp.pki.ca_cert.read_text(), ident.cert.read_text(),
                                                ident.key.read_text(), ident.name), 0o600)
    node.write_file("/etc/nodemedic/conf.d/60-kube.toml",
                    f'[kubernetes]\nenabled = true\nkubeconfig = "{KUBECONFIG}"\nnode_name = "{node.name}"\n')
    node.drop_in(KUBE_UNIT, "10-testbed", "[Service]\nExecStart=\nExecStart=/usr/local/bin/nodemedic kube run\n")
    node.systemctl("start", KUBE_UNIT)


def rounds(bench: BenchNode, watch: Watch, n: int) -> dict[str, list[float]]:
    node = bench.node
    out: dict[str, list[float]] = {"confirmed": [], "step started": [], "healed": [],
                                   "details_ms": [], "patch_ms": [], "since_signal_ms": []}
    matchers = {
        Kind.CONFIRMED: ("confirmed", lambda c: c["status"] == "True"),
        Kind.STEP_STARTED: ("step started", lambda c: c["status"] == "True" and "step 1 of" in c["message"]),
        Kind.HEALED: ("healed", lambda c: c["status"] == "False"),
    }
    for _ in range(n):
        cursor = node.cursor()
        node.run(["find", "/etc/cni/net.d", "-mindepth", "1", "-delete"])
        node.wait_for(lambda c=cursor: node.journal(message_id=Kind.HEALED.value, since=c), timeout=60,
                      what="healed")
        time.sleep(1.0)  # the watch has seen the last change
        for kind, (name, match) in matchers.items():
            for entry in node.journal(message_id=kind.value, since=cursor):
                t = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
                seen = watch.first_after(t - 0.001, match)
                if seen is not None:
                    out[name].append((seen - t) * 1000)
        # nodemedic-kube's own account of each send (debug entries): where the time goes.
        for entry in node.journal(message_id=Kind.KUBE_SENT.value, since=cursor):
            for key in ("details_ms", "patch_ms", "since_signal_ms"):
                value = entry.get(f"NODEMEDIC_{key.upper()}")
                if value:
                    out[key].append(float(value))
        time.sleep(1.0)
    return out


def idle_cost(bench: BenchNode, seconds: float) -> tuple[float, int, int]:
    pid = bench.host_pid(KUBE_UNIT)
    before = sample(pid)
    time.sleep(seconds)
    after = sample(pid)
    wakeups = sum(v + i for v, i in ((s[1], s[2]) for s in after.switches.values())) - \
        sum(v + i for v, i in ((s[1], s[2]) for s in before.switches.values()))
    return after.anon_kib / 1024, len(after.switches), wakeups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    cp = ControlPlane().start()
    try:
        with BenchNode.booted() as bench:
            setup(bench, cp)
            watch = Watch(cp, bench.node.name)
            time.sleep(3)
            results = rounds(bench, watch, args.rounds)
            anon, threads, wakeups = idle_cost(bench, args.idle)
            watch.stop.set()
    finally:
        cp.stop()
    print("| transition | n | p50 ms | max ms | goal ≤ 100 ms |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        if name.endswith("_ms"):
            if values:
                print(f"| inside nodemedic-kube: {name} | {len(values)} | {statistics.median(values):.1f} | "
                      f"{max(values):.1f} | |")
            continue
        if values:
            p50, worst = statistics.median(values), max(values)
            print(f"| {name} → condition seen by a watch | {len(values)} | {p50:.1f} | {worst:.1f} | "
                  f"{'met' if worst <= 100 else 'MISSED'} |")
        else:
            print(f"| {name} → condition seen by a watch | 0 | – | – | not seen |")
    print(f"\nnodemedic-kube: RssAnon {anon:.1f} MiB, {threads} thread(s), "
          f"{wakeups} wake-ups in {args.idle:.0f} s idle")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
