"""What the safety module costs per file change, by how many mounts the node has.

Every change (atomic_write, remove_file, ensure_dir, remove_tree) judges the path against the
mount table (/proc/self/mountinfo, parsed again only when it changed: nodemedic.mounts.MountTable)
and walks the directory's ancestors by "..". A kubelet node
has a few mounts per pod (projected volumes, secrets, the container rootfs, shm), so hundreds to a
couple of thousand. This runs in a private mount namespace (`unshare --mount --propagation
private`, re-executed by itself) and adds N tmpfs mounts shaped like kubelet's pod volumes, so it
measures the real kernel table at that size; nothing reaches the host's namespace.

    .venv/bin/python bench/safety_cost.py [--mounts 0 500 1500] [--n 300]   # as root

Not a test: nothing is asserted. The figures and the date go into bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "daemon"), str(REPO)]

from bench.common import median, p99  # noqa: E402
from nodemedic.mounts import read_mountinfo  # noqa: E402
from nodemedic.safety import Guard, atomic_write, remove_file  # noqa: E402

INSIDE = "NODEMEDIC_BENCH_PRIVATE_MOUNTS"


def timed(fn, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return samples


def add_pod_mounts(base: Path, count: int, made: int) -> None:
    for i in range(made, count):
        pod = base / "pods" / f"{i:08x}-9a7b-4c1d-8e2f-3c9a7b4c1d8e"
        point = pod / "volumes" / "kubernetes.io~projected" / "kube-api-access"
        point.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)], check=True)


def measure(base: Path, mounts: list[int], n: int) -> None:
    conf = base / "etc" / "cni" / "net.d"
    conf.mkdir(parents=True)
    guard = Guard.from_paths([base / "srv" / "media", base / "mnt" / "media"])
    target = conf / "zz-nodemedic-placeholder.conflist"
    doomed = conf / "stale"

    def remove() -> None:
        doomed.write_bytes(b"x")  # not timed apart: a plain write is a few µs beside the removal
        remove_file(guard, doomed)

    made = 0
    print(f"{'mounts':>7} {'read_mountinfo':>16} {'Guard.check':>13} {'remove_file':>13} {'atomic_write':>14}")
    for count in mounts:
        add_pod_mounts(base, count, made)
        made = max(made, count)
        total = len(read_mountinfo())
        rows = {
            "read": timed(read_mountinfo, n),
            "check": timed(lambda: guard.check(target), n),
            "remove": timed(remove, n),
            "write": timed(lambda: atomic_write(guard, target, b"{}"), n),
        }
        print(f"{total:>7} " + " ".join(f"{median(v) * 1e3:>7.2f}/{p99(v) * 1e3:<5.2f}" for v in rows.values())
              + "   (ms, median/p99)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mounts", type=int, nargs="+", default=[0, 500, 1500],
                        help="pod-volume mounts to add, cumulatively (default: 0 500 1500)")
    parser.add_argument("--n", type=int, default=300, help="samples per figure")
    args = parser.parse_args()
    inside = os.environ.get(INSIDE)
    if inside:
        measure(Path(inside), sorted(args.mounts), args.n)
        return
    if os.geteuid() != 0:
        sys.exit("run as root: it makes tmpfs mounts in a private mount namespace")
    # Made and removed out here: the mounts end with the child's namespace, the directories not.
    base = tempfile.mkdtemp(prefix="nm-safety-cost-", dir="/var/tmp")
    try:
        rc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, __file__,
                             *sys.argv[1:]], env=dict(os.environ, **{INSIDE: base})).returncode
    finally:
        shutil.rmtree(base)
    sys.exit(rc)


if __name__ == "__main__":
    main()
