"""The CNI fault, inside the node: the last CNI config is removed while real containerd watches
/etc/cni/net.d, so containerd itself reports NetworkReady=false over CRI.

  cni.py cycle --runs N        remove the real config N (+1 warm-up) times with nodemedic running;
                               one JSON line per run: fault time, CRI not-ready/ready times (polled
                               every 5 ms on one channel), nodemedic's journal entries
  cni.py break                 remove it once, print the fault time (nodemedic stopped)
  cni.py restore               put the real config back, wait for NetworkReady=true
  cni.py restart-check         what a restart-only poll loop would do: restart containerd with the
                               directory empty, report NetworkReady right after and --after s later
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import time
from pathlib import Path

from benchlib import CONFIRMED, HEALED, STEP_STARTED, SUSPECTED, Cri, at, emit, find_entry, fsync_cost, poll_until

PROBLEM = "cni-config-missing"
CONTAINERD_LINE = "failed to reload cni configuration"


def write_real(conf: Path, text: str) -> None:
    # temp + rename inside the directory: containerd's watch ignores configs moved in from elsewhere
    tmp = conf.with_name(f".{conf.name}.bench-tmp")
    tmp.write_text(text)
    os.replace(tmp, conf)


def restore(cri: Cri, conf: Path, text: str, placeholder: Path | None) -> None:
    write_real(conf, text)
    if poll_until(lambda: cri.network_ready() is True, timeout=30, interval=0.01) is None:
        raise SystemExit("containerd did not load the real CNI config within 30 s")
    if placeholder is not None and poll_until(lambda: not placeholder.exists(), timeout=10, interval=0.01) is None:
        raise SystemExit("nodemedic did not remove its placeholder within 10 s of the real config")


def break_config(conf: Path) -> float:
    fault = time.time()
    conf.unlink()
    return fault


def one_run(cri: Cri, conf: Path, text: str, placeholder: Path, run: int) -> dict[str, object]:
    restore(cri, conf, text, placeholder)
    time.sleep(random.uniform(0.3, 0.7))  # let containerd's and nodemedic's reactions to the restore settle
    fault = break_config(conf)
    not_ready = poll_until(lambda: cri.network_ready() is False, timeout=10)
    ready = poll_until(lambda: cri.network_ready() is True, timeout=30) if not_ready else None
    healed = find_entry({"MESSAGE_ID": HEALED, "NODEMEDIC_PROBLEM": PROBLEM}, fault, timeout=30)
    if healed is None:  # no number is better than a wrong one
        raise SystemExit(f"run {run}: nodemedic did not heal the CNI fault within 30 s; see the node's journal")
    step = find_entry({"MESSAGE_ID": STEP_STARTED, "NODEMEDIC_PROBLEM": PROBLEM}, fault, timeout=2)
    suspected = find_entry({"MESSAGE_ID": SUSPECTED, "NODEMEDIC_PROBLEM": PROBLEM}, fault, timeout=1)
    confirmed = find_entry({"MESSAGE_ID": CONFIRMED, "NODEMEDIC_PROBLEM": PROBLEM}, fault, timeout=1)
    containerd = find_entry({"_SYSTEMD_UNIT": "containerd.service"}, fault, timeout=2,
                            accept=lambda e: CONTAINERD_LINE in e.message)
    return {"run": run, "fault": fault, "cri_not_ready": not_ready, "cri_ready": ready,
            "suspected": at(suspected), "confirmed": at(confirmed), "step": at(step), "healed": at(healed),
            "containerd_line": at(containerd), "step_name": step.fields["NODEMEDIC_STEP"] if step else "",
            "trigger": suspected.fields["NODEMEDIC_SIGNATURE"] if suspected else "",
            "ready_after_heal": cri.network_ready(), "fsync": fsync_cost()}


def restart_check(cri: Cri, after: float) -> dict[str, object]:
    started = time.time()
    subprocess.run(["systemctl", "restart", "containerd"], check=True)
    up = poll_until(cri.runtime_ready, timeout=30, interval=0.05)
    right_after = cri.network_ready()
    time.sleep(after)
    return {"restarted": started, "runtime_ready": up, "network_ready_after_restart": right_after,
            "after": after, "network_ready_later": cri.network_ready()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["cycle", "break", "restore", "restart-check"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--after", type=float, default=5.0, help="restart-check: look again this much later")
    parser.add_argument("--conf", type=Path, default=Path("/etc/cni/net.d/10-nmtest.conflist"))
    parser.add_argument("--text", type=Path, help="the real config's content")
    parser.add_argument("--placeholder", type=Path,
                        default=Path("/etc/cni/net.d/zz-nodemedic-placeholder.conflist"))
    args = parser.parse_args()
    cri = Cri()
    text = args.text.read_text() if args.text else ""
    if args.action == "cycle":
        for run in range(args.runs + 1):  # run 0 is a warm-up
            emit(one_run(cri, args.conf, text, args.placeholder, run))
        restore(cri, args.conf, text, args.placeholder)
    elif args.action == "break":
        emit({"fault": break_config(args.conf)})
    elif args.action == "restore":
        restore(cri, args.conf, text, None)
        emit({"restored": time.time()})
    else:
        emit(restart_check(cri, args.after))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
