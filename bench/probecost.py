"""Measure 8 in the node: one CRI Status probe in process (the daemon's grpc.aio CriClient) against
one process spawned per probe (`ctr version`; also the poll loop's `python -m nodemedic.probes`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.common import Goal, Row, median, mib, ms, p99, times
from bench.nodebench import BenchNode

NODE = "node (nspawn)"


@dataclass(frozen=True)
class ProbeCost:
    fresh: list[float]
    reused: list[float]
    inprocess_kib: int
    ctr: list[float]
    ctr_kib: list[int]
    py_probe: list[float]
    py_probe_kib: list[int]
    floor_kib: int

    @classmethod
    def measure(cls, bench: BenchNode, n: int) -> ProbeCost:
        r: dict[str, Any] = bench.inside("probe_cost.py", "--n", str(n), timeout=300)[0]
        return cls(r["fresh"], r["reused"], r["inprocess_hwm_growth_kib"], r["ctr"], r["ctr_maxrss_kib"],
                   r["py_probe"], r["py_probe_maxrss_kib"], r["spawn_floor_kib"])

    def rows(self) -> list[Row]:
        spawn = (f"`ctr version` process: median {ms(median(self.ctr))}, p99 {ms(p99(self.ctr))}, "
                 f"peak RSS {mib(median(self.ctr_kib))}")
        notes = (
            "In process: nodemedic.probes.cri.CriClient.status() (grpc.aio over containerd's socket), timed "
            "inside the node; 'reused' keeps one channel (as the daemon does), 'fresh' opens and closes a "
            f"channel per probe. Memory in process: the probe script's VmHWM grew {mib(self.inprocess_kib)} over "
            "all calls (grpc already imported, as in the daemon).",
            f"Spawned: wall time from fork to wait4, peak RSS from wait4's ru_maxrss (spawned from a bare "
            f"`python3 -S`, since ru_maxrss also counts the spawner's memory: `true` shows {mib(self.floor_kib)}, "
            f"the floor). `ctr version` makes "
            f"one gRPC call to containerd (the node has no crictl). The poll loop's probe, `python -m "
            f"nodemedic.probes cri-status`: median {ms(median(self.py_probe))}, peak RSS "
            f"{mib(median(self.py_probe_kib))}.",
        )
        goal = Goal("no goal set", None)
        return [
            Row("probe cost: one CRI Status, in process, channel reused",
                f"median {ms(median(self.reused))}, p99 {ms(p99(self.reused))}; +{mib(self.inprocess_kib)} peak RSS",
                spawn, f"{times(median(self.reused), median(self.ctr))} faster", NODE, goal, notes),
            Row("probe cost: one CRI Status, in process, fresh channel",
                f"median {ms(median(self.fresh))}, p99 {ms(p99(self.fresh))}", spawn,
                f"{times(median(self.fresh), median(self.ctr))} faster", NODE, goal),
        ]
