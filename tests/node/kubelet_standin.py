#!/usr/bin/env python3
"""A STAND-IN for kubelet on the nodemedic test node. It is not kubelet.

kubelet is not packaged for these machines, but nodemedic watches kubelet's journal. This program
does the few things kubelet does that produce the log lines nodemedic cares about, from the same
real conditions, and writes them in kubelet's klog format to stderr (journald, as
SYSLOG_IDENTIFIER=kubelet, comm "kubelet"):

* every RUNTIME_SYNC_PERIOD (5 s, as kubelet's updateRuntimeUp) it calls CRI RuntimeService.Status
  on containerd's socket:
  - the call fails            -> "Container runtime sanity check failed" err="rpc error: ..."
  - NetworkReady is false     -> "Container runtime network not ready" networkReady="NetworkReady=false
                                 reason:<reason> message:<message>" (reason/message are containerd's)
  - RuntimeReady is false     -> "Container runtime not ready" runtimeReady="..."
* a sync loop (1 s, backing off 100 ms..5 s while erroring, as kubelet's syncLoop) logs
  "Skipping pod synchronization" err="container runtime is down" once no Status has succeeded for
  RUNTIME_DOWN_AFTER (30 s, kubelet's maxWaitForContainerRuntime), plus the PLEG health error
  when its relist (CRI ListPodSandbox, every 1 s) has not succeeded within PLEG_THRESHOLD (3 min);
* every IMAGE_GC_PERIOD (5 s here; 5 min in kubelet) the image GC check calls CRI
  ImageService.ImageFsInfo, then sizes the reported mountpoint the way cAdvisor does: stat it, map
  its device to a mount in /proc/self/mountinfo, statvfs it. A path it cannot stat, map or statvfs
  has capacity 0 — and only then: "Image garbage collection failed once. Stats initialization may
  not have completed yet" err="invalid capacity 0 on image filesystem" the first time,
  "Image garbage collection failed multiple times in a row" after that;
* `--config PATH` that does not exist: logs kubelet's "command failed" ... "failed to load kubelet
  config file" and exits 1 (what a node that was never joined does, in a crash loop).

What it does NOT do: no pods, no containers, no API server, no node status, no eviction, no
cAdvisor (only the statvfs/mount lookup above), no certificates, no real garbage collection.
Tunables come from the environment: KUBELET_STANDIN_{SOCKET, RUNTIME_SYNC_PERIOD,
IMAGE_GC_PERIOD, RUNTIME_DOWN_AFTER, PLEG_THRESHOLD, CRI_TIMEOUT, V}; V is kubelet's -v (default 2):
at V>=1 a GC success right after a failure logs "Image garbage collection succeeded", at V>=4
every success does, as in kubelet.

It runs on the node's /opt/venvs/nodemedic python (for grpc and the CRI stubs) but deliberately
does not import nodemedic: the stand-in must not share bugs with the code it is used to test.

Where it is still used: the real kubelet 1.20.2 (tests/node/testbed/kube_node.py) speaks CRI
v1alpha2 only, which containerd 2.x no longer serves. So the ladder tests drive the real kubelet
on bookworm and trixie (containerd 1.6/1.7) and this stand-in on trixie-containerd2 and forky
(testbed/kubelet_bed.py), and every node boots with the stand-in until a test installs the real
one. The PLEG ladder and the image GC "invalid capacity 0" lines are tested against it only: the
real kubelet 1.20 cannot be made to show those within a test's time (the modules say why).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import signal
import sys
import threading
import time

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

VERSION = "v1.28.15-nodemedic-standin"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(f"KUBELET_STANDIN_{name}", default))
    except ValueError:
        return default


SOCKET = os.environ.get("KUBELET_STANDIN_SOCKET", "/run/containerd/containerd.sock")
RUNTIME_SYNC_PERIOD = _env_float("RUNTIME_SYNC_PERIOD", 5.0)
IMAGE_GC_PERIOD = _env_float("IMAGE_GC_PERIOD", 5.0)
RUNTIME_DOWN_AFTER = _env_float("RUNTIME_DOWN_AFTER", 30.0)
PLEG_THRESHOLD = _env_float("PLEG_THRESHOLD", 180.0)
CRI_TIMEOUT = _env_float("CRI_TIMEOUT", 2.0)
VERBOSITY = int(_env_float("V", 2))  # kubelet's -v; distro units commonly run --v=2
PLEG_PERIOD = 1.0
SYNC_PERIOD = 1.0


# ---- klog ------------------------------------------------------------------------------------------


def go_quote(s: str) -> str:
    """Go's strconv.Quote, which klog uses for string values."""
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_write_lock = threading.Lock()


def klog(severity: str, where: str, msg: str, err: str | None = None, **kv: object) -> None:
    """One klog structured line: `E1121 13:45:01.123456    1234 kubelet.go:2855] "msg" err="..." k="v"`."""
    now = dt.datetime.now()
    header = f"{severity}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {threading.get_native_id():7d} {where}]"
    parts = [header, go_quote(msg)]
    if err is not None:
        parts.append(f"err={go_quote(err)}")
    for key, value in kv.items():
        parts.append(f"{key}={'null' if value is None else go_quote(str(value))}")
    with _write_lock:
        sys.stderr.write(" ".join(parts) + "\n")
        sys.stderr.flush()


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() for the PLEG message (e.g. 3m0.5s)."""
    if seconds < 60:
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    sec = f"{s:.9f}".rstrip("0").rstrip(".")
    return (f"{h}h" if h else "") + f"{m}m{sec}s"


# ---- CRI -------------------------------------------------------------------------------------------


class Cri:
    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.chan: grpc.Channel | None = None

    def _channel(self) -> grpc.Channel:
        if self.chan is None:
            self.chan = grpc.insecure_channel(
                f"unix://{self.socket}", options=[("grpc.enable_http_proxy", 0)]
            )
        return self.chan

    def call(self, service: str, method: str, req: object) -> object:
        stub = getattr(api_pb2_grpc, f"{service}Stub")(self._channel())
        try:
            return getattr(stub, method)(req, timeout=CRI_TIMEOUT)
        except grpc.RpcError as e:
            # A fresh channel next time: containerd may come back on a new socket.
            chan, self.chan = self.chan, None
            if chan is not None:
                chan.close()
            raise RuntimeError(rpc_error_text(e)) from None


def rpc_error_text(e: grpc.RpcError) -> str:
    # Go's status error text: "rpc error: code = Unavailable desc = ...".
    code = e.code() if hasattr(e, "code") else None
    name = "".join(w.capitalize() for w in code.name.split("_")) if code is not None else "Unknown"
    details = e.details() if hasattr(e, "details") else str(e)
    return f"rpc error: code = {name} desc = {details}"


def condition_string(cond: object | None) -> str | None:
    # kubelet's RuntimeCondition.String(): "%s=%t reason:%s message:%s".
    if cond is None:
        return None
    return f"{cond.type}={'true' if cond.status else 'false'} reason:{cond.reason} message:{cond.message}"  # type: ignore[attr-defined]


# ---- image filesystem capacity, as cAdvisor's GetDirFsInfo ------------------------------------------


def mount_devices() -> set[tuple[int, int]]:
    devs = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                major, _, minor = line.split(" ")[2].partition(":")
                devs.add((int(major), int(minor)))
    except (OSError, ValueError, IndexError):
        pass
    return devs


def dir_capacity(path: str) -> tuple[int, str | None, bool]:
    """(capacity_bytes, error_text, log_at_error_level). Capacity is 0 whenever the path cannot be
    stat'ed, mapped to a mounted device, or statvfs'ed — as cAdvisor reports it to kubelet."""
    try:
        st = os.stat(path)
    except OSError as e:
        return 0, f"stat failed on {path} with error: {e.strerror.lower() if e.strerror else e}", True
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    if dev not in mount_devices():
        # cAdvisor's ErrNoSuchDevice: kubelet logs it only at -v=2, so it stays silent here.
        return (
            0,
            f"could not find device with major: {dev[0]}, minor: {dev[1]} in cached partitions map",
            False,
        )
    try:
        vfs = os.statvfs(path)
    except OSError as e:
        return 0, f"statfs failed on {path}: {e.strerror.lower() if e.strerror else e}", True
    return vfs.f_blocks * vfs.f_frsize, None, False


# ---- the loops -------------------------------------------------------------------------------------


class Kubelet:
    def __init__(self) -> None:
        self.cri = Cri(SOCKET)
        self.started = time.monotonic()
        self.last_runtime_sync: float | None = None  # last Status with RuntimeReady=true
        self.runtime_error: str | None = None
        self.last_relist: float | None = None
        self.prev_image_gc_failed = False
        self.sync_backoff = 0.1

    def update_runtime_up(self) -> None:
        try:
            resp = self.cri.call("RuntimeService", "Status", api_pb2.StatusRequest(verbose=False))
        except RuntimeError as e:
            klog("E", "kubelet.go:2840", "Container runtime sanity check failed", err=str(e))
            return
        conds = {c.type: c for c in resp.status.conditions}  # type: ignore[attr-defined]
        net = conds.get("NetworkReady")
        if net is None or not net.status:
            klog(
                "E",
                "kubelet.go:2855",
                "Container runtime network not ready",
                networkReady=condition_string(net),
            )
        rt = conds.get("RuntimeReady")
        if rt is None or not rt.status:
            klog("E", "kubelet.go:2864", "Container runtime not ready", runtimeReady=condition_string(rt))
            self.runtime_error = f"container runtime not ready: {condition_string(rt)}"
            return
        self.runtime_error = None
        self.last_runtime_sync = time.monotonic()

    def relist(self) -> None:
        try:
            self.cri.call("RuntimeService", "ListPodSandbox", api_pb2.ListPodSandboxRequest())
            self.last_relist = time.monotonic()
        except RuntimeError:
            pass  # kubelet's PLEG logs this at V(4) only; the health check below reports it

    def runtime_errors(self) -> str | None:
        errs = []
        now = time.monotonic()
        if self.last_runtime_sync is None:
            errs.append("container runtime status check may not have completed yet")
        elif now - self.last_runtime_sync > RUNTIME_DOWN_AFTER:
            errs.append("container runtime is down")
        if self.last_relist is None:
            errs.append("PLEG is not healthy: pleg has yet to be successful")
        elif now - self.last_relist > PLEG_THRESHOLD:
            errs.append(
                f"PLEG is not healthy: pleg was last seen active {go_duration(now - self.last_relist)} ago; "
                f"threshold is {go_duration(PLEG_THRESHOLD)}"
            )
        if self.runtime_error:
            errs.append(self.runtime_error)
        if not errs:
            return None
        # utilerrors.NewAggregate: one error alone, several as "[a, b]".
        return errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]"

    def sync_loop_iteration(self) -> float:
        err = self.runtime_errors()
        if err is not None:
            klog("E", "kubelet.go:2329", "Skipping pod synchronization", err=err)
            delay, self.sync_backoff = self.sync_backoff, min(5.0, self.sync_backoff * 2)
            return delay
        self.sync_backoff = 0.1
        return SYNC_PERIOD

    def image_gc(self) -> None:
        err = self.image_gc_error()
        if err is None:
            # kubelet: V(1) right after a failure, V(4) otherwise.
            level = 1 if self.prev_image_gc_failed else 4
            self.prev_image_gc_failed = False
            if VERBOSITY >= level:
                klog("I", "kubelet.go:1434", "Image garbage collection succeeded")
            return
        if self.prev_image_gc_failed:
            klog("E", "kubelet.go:1422", "Image garbage collection failed multiple times in a row", err=err)
        else:
            klog(
                "E",
                "kubelet.go:1427",
                "Image garbage collection failed once. Stats initialization may not have completed yet",
                err=err,
            )
        self.prev_image_gc_failed = True

    def image_gc_error(self) -> str | None:
        try:
            resp = self.cri.call("ImageService", "ImageFsInfo", api_pb2.ImageFsInfoRequest())
        except RuntimeError as e:
            return str(e)
        filesystems = resp.image_filesystems  # type: ignore[attr-defined]
        if not filesystems:
            return "imageFs information is unavailable"
        mountpoint = filesystems[0].fs_id.mountpoint
        capacity, fs_err, loud = dir_capacity(mountpoint)
        msg = "Failed to get the info of the filesystem with mountpoint"
        if fs_err is not None and loud:
            klog("E", "cri_stats_provider.go:455", msg, err=fs_err, mountpoint=mountpoint)
        elif fs_err is not None and VERBOSITY >= 2:
            klog("I", "cri_stats_provider.go:453", msg, mountpoint=mountpoint, err=fs_err)
        if capacity == 0:
            return "invalid capacity 0 on image filesystem"
        return None

    def run(self) -> None:
        now = time.monotonic()
        # Each activity runs on its own schedule in one thread, like kubelet's goroutines would.
        due = {"runtime": now, "pleg": now, "gc": now, "sync": now + 0.5}
        while True:
            now = time.monotonic()
            if now >= due["runtime"]:
                self.update_runtime_up()
                due["runtime"] = time.monotonic() + RUNTIME_SYNC_PERIOD
            if now >= due["pleg"]:
                self.relist()
                due["pleg"] = time.monotonic() + PLEG_PERIOD
            if now >= due["gc"]:
                self.image_gc()
                due["gc"] = time.monotonic() + IMAGE_GC_PERIOD
            if now >= due["sync"]:
                due["sync"] = time.monotonic() + self.sync_loop_iteration()
            time.sleep(max(0.01, min(due.values()) - time.monotonic()))


def _set_comm(name: bytes) -> None:
    # journald's trusted _COMM comes from the kernel's comm; make it "kubelet", like the real one.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    _set_comm(b"kubelet")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
    klog("I", "server.go:487", "Kubelet version", kubeletVersion=VERSION)
    if config is not None and not os.path.exists(config):
        klog(
            "E",
            "run.go:74",
            "command failed",
            err=(
                f"failed to load kubelet config file, path: {config}, error: failed to load Kubelet config "
                f"file {config}, error failed to read kubelet config file {go_quote(config)}, error: "
                f"open {config}: no such file or directory"
            ),
        )
        return 1
    Kubelet().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
