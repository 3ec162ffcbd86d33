"""The one test node every node measure shares: booted from the test bed's cached image, with the
working tree's nodemedic running as its real unit, and the scripts of bench/inside/ copied in.

What is changed in the node for the bench, and why (RESULTS.md says it too):
  * nodemedic: the test bed's drop-in (ExecStart=/usr/local/bin/nodemedic run) and a conf.d file
    with `cooldown = "0s"`, so 30 faults in a row are not held back by the cooldown meant for
    real nodes, and `[cni] placeholder = "always"`, so a removed *real* config is healed with the
    placeholder (the default, until-first-real, only covers nodes that never had one);
  * journald: no rate limit and room for 1M entries (the memory measure writes them);
  * node-exporter's textfile directory exists, so nodemedic writes its metrics (entries read);
  * nodemedic's D-Bus policy is installed, as the package does (without it the daemon keeps
    retrying to own its bus name, which is noise in the idle measure);
  * kubelet.service runs `cat` from a FIFO instead of the stand-in: lines the bench writes into
    the FIFO come out of kubelet.service, and otherwise it is silent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO
from tests.node.testbed import faults
from tests.node.testbed.node import NODE_PYTHON, Node, boot_node

INSIDE = REPO / "bench" / "inside"
SCRIPTS = "/usr/local/lib/nodemedic-bench"
REAL_CONF = f"{SCRIPTS}/real.conflist"
CONF_D = "/etc/nodemedic/conf.d/50-bench.toml"
METRICS = "/var/lib/prometheus/node-exporter/nodemedic.prom"
FIFO = "/run/kubelet-bench.fifo"
POLICY = "/etc/dbus-1/system.d/org.nodemedic1.conf"
BENCH_CONFIG = """\
# bench/run.py: repeated faults must not wait out the cooldown meant for real nodes
[policy]
cooldown = "0s"
cooldown_max = "0s"

[cni]
placeholder = "always"
"""
JOURNALD = "[Journal]\nRateLimitIntervalSec=0\nSystemMaxUse=2G\n"
NODEMEDIC_DROPIN = ("[Service]\nExecStart=\nExecStart=/usr/local/bin/nodemedic run\n"
                    "ExecReload=\nExecReload=/usr/local/bin/nodemedic reload $MAINPID\n")
# kubelet.service's process copies whatever is written into the FIFO to its stdout, so journald
# stamps those lines with the trusted _SYSTEMD_UNIT=kubelet.service. `<>` keeps the FIFO open
# for writing too, so `cat` never sees EOF between writers.
KUBELET_EMITTER = f"""\
[Service]
ExecStartPre=-/usr/bin/mkfifo -m 0600 {FIFO}
ExecStart=
ExecStart=/bin/sh -c 'exec cat 0<>{FIFO}'
"""


@dataclass(frozen=True)
class ProcSample:
    """One look at a process from the host's /proc."""

    cpu_ticks: int  # utime + stime
    rss_kib: int  # VmRSS = RssAnon + RssFile + RssShmem
    anon_kib: int  # RssAnon: the heap, what a leak would grow
    file_kib: int  # RssFile: mapped files, here mostly the journal files libsystemd mmaps
    hwm_kib: int
    switches: dict[int, tuple[str, int, int]]  # tid -> (comm, voluntary, involuntary)


class BenchNode:
    def __init__(self, node: Node) -> None:
        self.node = node

    @classmethod
    @contextmanager
    def booted(cls) -> Iterator[BenchNode]:
        node = boot_node("nm-bench")
        try:
            bench = cls(node)
            bench.prepare()
            yield bench
        finally:
            node.stop()

    # ---- set-up -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        node = self.node
        for script in sorted(INSIDE.glob("*.py")):
            node.write_file(f"{SCRIPTS}/{script.name}", script.read_bytes())
        node.write_file(REAL_CONF, faults.cni_conflist())
        node.write_file("/etc/systemd/journald.conf.d/90-bench.conf", JOURNALD)
        node.systemctl("restart", "systemd-journald")
        node.run(["mkdir", "-p", os.path.dirname(METRICS)])
        node.write_file(POLICY, (REPO / "units" / "org.nodemedic1.conf").read_bytes())
        node.systemctl("reload", "dbus")
        self.kubelet_emitter(True)
        node.write_file(CONF_D, BENCH_CONFIG)
        node.drop_in("nodemedic.service", "10-testbed", NODEMEDIC_DROPIN)
        node.systemctl("start", "nodemedic")

    def kubelet_emitter(self, on: bool) -> None:
        """Replace the kubelet stand-in by the FIFO emitter (or bring the stand-in back)."""
        if on:
            self.node.drop_in("kubelet.service", "90-bench-emitter", KUBELET_EMITTER)
        else:
            self.node.remove_drop_in("kubelet.service", "90-bench-emitter")
        self.node.systemctl("restart", "kubelet")
        self.node.wait_for(lambda: not on or self.node.exists(FIFO), what="the kubelet FIFO")

    # ---- running the inside scripts ----------------------------------------------------------------
    def inside(self, script: str, *args: str, timeout: float = 600) -> list[dict[str, Any]]:
        """Run bench/inside/SCRIPT in the node on nodemedic's venv; its JSON lines."""
        out = self.node.run([NODE_PYTHON, f"{SCRIPTS}/{script}", *args], timeout=timeout).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    # ---- the daemon from the host's side ------------------------------------------------------------
    def main_pid(self, unit: str = "nodemedic.service") -> int:
        return int(self.node.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip())

    def host_pid(self, unit: str = "nodemedic.service") -> int:
        """The host's PID of a unit's main process: the one whose innermost NSpid is the node's
        MainPID, in the node's PID namespace."""
        inner = self.main_pid(unit)
        ns = os.readlink(f"/proc/{self.node.pid}/ns/pid")
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                nspid = next(ln for ln in status.read_text().splitlines() if ln.startswith("NSpid:")).split()[1:]
                if nspid and int(nspid[-1]) == inner and os.readlink(status.parent / "ns" / "pid") == ns:
                    return int(status.parent.name)
            except (OSError, StopIteration, ValueError):
                continue
        raise RuntimeError(f"no host process for {unit} (node pid {inner})")

    def entries_read(self) -> int:
        """nodemedic's own count of journal entries read (its metrics textfile)."""
        try:
            text = self.node.read_file(METRICS).decode()
        except Exception:  # noqa: BLE001 - not written yet
            return 0
        for line in text.splitlines():
            if line.startswith("nodemedic_journal_entries_read_total "):
                return int(float(line.split()[1]))
        return 0


def sample(pid: int) -> ProcSample:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)
    switches = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = dict(ln.split(":", 1) for ln in (task / "status").read_text().splitlines() if ":" in ln)
            switches[int(task.name)] = (fields["Name"].strip(), int(fields["voluntary_ctxt_switches"]),
                                        int(fields["nonvoluntary_ctxt_switches"]))
        except OSError:
            continue  # a thread that just ended
    # stat fields after the comm: state is [0], utime [11], stime [12]
    def kib(field: str) -> int:
        return int(status[field].split()[0])

    return ProcSample(int(stat[11]) + int(stat[12]), kib("VmRSS"), kib("RssAnon"), kib("RssFile"), kib("VmHWM"),
                      switches)


def systemd_monotonic(node: Node, unit: str, *props: str) -> dict[str, int]:
    out = node.systemctl("show", unit, *(f"-p{p}" for p in props)).stdout
    return {k: int(v) for k, v in (ln.split("=", 1) for ln in out.splitlines() if "=" in ln)}


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))
