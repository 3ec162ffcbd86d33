"""The cost of a Kubernetes client in nodemedic-kube: anonymous memory after import, and threads.

Each candidate is imported in a fresh interpreter, which then prints its RssAnon and thread
count (/proc/self/status). Candidates: nodemedic's own (nodemedic.kube.run: the stdlib asyncio
HTTPS client plus dbus-next, everything `nodemedic kube run` imports), lightkube (AsyncClient,
Node, Event, Lease) and kubernetes_asyncio (client, config), and the bare interpreter.

The third-party ones are not nodemedic's dependencies: give an interpreter that has them with
--other-python (a throw-away venv: `python3 -m venv /tmp/kv && /tmp/kv/bin/pip install
lightkube kubernetes_asyncio`). Both interpreters should be the same CPython version.

    .venv/bin/python bench/kube_client.py --other-python /tmp/kv/bin/python
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys
{imports}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["RssAnon"].split()[0]), int(status["Threads"]), sys.version.split()[0])
"""

CANDIDATES = {
    "bare interpreter": (None, "pass"),
    "nodemedic's client alone (stdlib asyncio + ssl)": ("own", "import nodemedic.kube.api"),
    "all of `nodemedic kube run` (client + dbus-next + config)": ("own", "import nodemedic.kube.cli, "
                                                                        "nodemedic.kube.run, nodemedic.kube.check, "
                                                                        "nodemedic.config"),
    "lightkube": ("other", "from lightkube import AsyncClient\nfrom lightkube.resources.core_v1 import Node, Event\n"
                           "from lightkube.resources.coordination_v1 import Lease"),
    "kubernetes_asyncio": ("other", "from kubernetes_asyncio import client, config"),
}


def measure(python: str, imports: str, runs: int) -> tuple[float, int, str]:
    samples = []
    threads, version = 0, ""
    for _ in range(runs):
        out = subprocess.run([python, "-c", PROBE.format(imports=imports)], capture_output=True, text=True,
                             check=True, cwd=REPO / "daemon").stdout.split()
        samples.append(int(out[0]))
        threads, version = int(out[1]), out[2]
    samples.sort()
    return samples[len(samples) // 2] / 1024, threads, version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other-python", help="an interpreter with lightkube and kubernetes_asyncio installed")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print("| candidate | RssAnon after import (MiB, median) | threads | python |")
    print("|---|---|---|---|")
    for name, (which, imports) in CANDIDATES.items():
        python = sys.executable if which in (None, "own") else args.other_python
        if python is None:
            print(f"| {name} | not measured (no --other-python) | | |")
            continue
        try:
            mib, threads, version = measure(python, imports, args.runs)
        except subprocess.CalledProcessError as err:
            print(f"| {name} | import failed: {err.stderr.strip().splitlines()[-1]} | | |")
            continue
        print(f"| {name} | {mib:.1f} | {threads} | {version} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
