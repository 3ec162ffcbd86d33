"""Probe cost inside the node: one CRI Status the way the daemon does it (grpc.aio CriClient, in
process) against one process spawned per probe (`ctr version`, and the poll loop's probe).

Wall time per probe; memory as the peak RSS a probe needs: for a spawned process its own
ru_maxrss (wait4, spawned from a small process, see SPAWNER), in process the growth of this
process's VmHWM over all calls (the daemon already holds the interpreter and grpc). One JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from benchlib import emit

from nodemedic.probes.cri import CriClient

CTR = ["ctr", "version"]
PY_PROBE = [sys.executable, "-m", "nodemedic.probes", "cri-status"]


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


async def reused(n: int) -> list[float]:
    async with CriClient() as cri:
        for _ in range(5):  # connect and warm up first: "reused" means the channel is already there
            await cri.status()
        out = []
        for _ in range(n):
            start = time.perf_counter()
            await cri.status()
            out.append(time.perf_counter() - start)
    return out


async def fresh(n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        cri = CriClient()
        await cri.status()
        await cri.close()
        out.append(time.perf_counter() - start)
    return out


# Runs in a bare `python3 -S`: a child's ru_maxrss also counts the memory of the process it was
# forked from (the kernel records the old mm's high-water mark at exec), so the spawner must be
# small; `/bin/true` through it shows that floor.
SPAWNER = """
import json, os, sys, time
argv, n = json.loads(sys.argv[1]), int(sys.argv[2])
null = os.open(os.devnull, os.O_WRONLY)
out = []
for _ in range(n):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(null, 1); os.dup2(null, 2)
        os.execvp(argv[0], argv)
    _, status, usage = os.wait4(pid, 0)
    out.append([time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status)])
print(json.dumps(out))
"""


def spawned(argv: list[str], n: int) -> tuple[list[float], list[int]]:
    """Wall time of fork → exit of `argv`, and each child's peak RSS (KiB) from wait4."""
    res = subprocess.run(["/usr/bin/python3", "-S", "-c", SPAWNER, json.dumps(argv), str(n)], check=True,
                         capture_output=True, text=True)
    runs = json.loads(res.stdout)
    if any(code != 0 for _, _, code in runs):
        raise SystemExit(f"{argv} failed")
    return [r[0] for r in runs], [r[1] for r in runs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    hwm_before = status_kib("VmHWM")
    fresh_s = asyncio.run(fresh(args.n))
    reused_s = asyncio.run(reused(args.n * 4))
    hwm_after = status_kib("VmHWM")
    ctr_s, ctr_kib = spawned(CTR, args.n)
    py_s, py_kib = spawned(PY_PROBE, max(5, args.n // 5))
    _, floor_kib = spawned(["true"], 3)
    emit({"fresh": fresh_s, "reused": reused_s, "inprocess_hwm_growth_kib": hwm_after - hwm_before,
          "rss_kib": status_kib("VmRSS"), "ctr": ctr_s, "ctr_maxrss_kib": ctr_kib,
          "py_probe": py_s, "py_probe_maxrss_kib": py_kib, "spawn_floor_kib": min(floor_kib)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
