"""Fault injectors: break a booted node the way real nodes break, through the real components.

Each injector changes the node and returns a `Fault` whose `restore()` undoes it (also usable as a
context manager; the `inject` fixture restores automatically at the end of a test). Where the
real component can produce the symptom, the injector only creates the cause: containerd itself
logs "failed to load cni during init" and reports NetworkReady=false, the kubelet stand-in itself
finds statvfs failing. Only the forged-log injectors write log lines directly — forging is their
point.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .node import KUBELET_SCRIPT, NODE_PYTHON, Node, wait_for

CNI_CONF_DIR = "/etc/cni/net.d"
CNI_CONF_NAME = "10-nmtest.conflist"
# Private names: should a pod ever be started, its bridge and addresses stay recognisably ours
# (and inside the node's own network namespace).
CNI_BRIDGE = "nmtest0"
CNI_SUBNET = "10.244.0.0/16"

CONTAINERD_ROOT = "/var/lib/containerd"
CONTENT_ROOT = f"{CONTAINERD_ROOT}/io.containerd.content.v1.content"
INGEST_DIR = f"{CONTENT_ROOT}/ingest"
SNAPSHOTTER = f"{CONTAINERD_ROOT}/io.containerd.snapshotter.v1.overlayfs"
INTROSPECTION_UUID = "io.containerd.grpc.v1.introspection/uuid"
BACKUP_DIR = "/var/lib/nmtest"  # where injectors park what they move aside, inside the node

_seq = itertools.count(1)


@dataclass
class Fault:
    """An injected fault. `restore()` is idempotent; `info` says what was done (paths, refs)."""

    name: str
    _restore: Callable[[], None]
    info: dict[str, Any] = field(default_factory=dict)
    restored: bool = False

    def restore(self) -> None:
        if not self.restored:
            self.restored = True
            self._restore()

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


# ---- CNI ------------------------------------------------------------------------------------------


def cni_conflist(name: str = "nmtest", bridge: str = CNI_BRIDGE, subnet: str = CNI_SUBNET) -> str:
    """A valid conflist (bridge + host-local IPAM + portmap), the shape a CNI daemonset installs.
    No default route is configured beyond the bridge's own subnet gateway inside the node."""
    conf = {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": subnet}]},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def write_cni_config(node: Node, name: str = CNI_CONF_NAME, text: str | None = None) -> Fault:
    """Write a CNI config (by default the valid test conflist). Restore removes it again."""
    path = f"{CNI_CONF_DIR}/{name}"
    existed = node.exists(path)
    old = node.read_file(path) if existed else None
    node.write_file(path, text if text is not None else cni_conflist())

    def restore() -> None:
        if old is not None:
            node.write_file(path, old)
        else:
            node.run(["rm", "-f", "--", path])

    return Fault("write-cni-config", restore, {"path": path})


def _network_ready(node: Node) -> bool:
    try:
        return node.cri_status().network_ready
    except Exception:  # noqa: BLE001 - containerd down counts as "not ready"
        return False


def _park(node: Node, what: str) -> str:
    dest = f"{BACKUP_DIR}/{what}-{next(_seq)}-{secrets.token_hex(3)}"
    node.run(["mkdir", "-p", BACKUP_DIR])
    return dest


def empty_cni_dir(node: Node, restart_containerd: bool = False) -> Fault:
    """Move every file out of /etc/cni/net.d (the directory stays). containerd's fsnotify watch
    sees it at once; with `restart_containerd` it also starts up with no config, and logs
    "failed to load cni during init". Restore moves the files back."""
    was_ready = _network_ready(node)
    backup = _park(node, "cni-net.d")
    node.run(["mkdir", "-p", backup, CNI_CONF_DIR])
    names = node.run(["ls", "-A", CNI_CONF_DIR]).stdout.split()
    for n in names:
        node.run(["mv", "--", f"{CNI_CONF_DIR}/{n}", f"{backup}/{n}"])
    if restart_containerd:
        node.systemctl("restart", "containerd.service")

    def restore() -> None:
        node.run(["mkdir", "-p", CNI_CONF_DIR])
        for n in names:
            # Written in place (temp file + rename inside the directory), not moved in from the
            # backup: containerd 1.6 ignores fsnotify CREATE events, and a file renamed in from
            # another directory is only a CREATE, so it would never reload it.
            node.write_file(f"{CNI_CONF_DIR}/{n}", node.read_file(f"{backup}/{n}"))
        node.run(["rm", "-rf", "--", backup])
        if was_ready:
            wait_for(
                lambda: _network_ready(node), timeout=30, what="NetworkReady=true after restoring CNI config"
            )

    return Fault("empty-cni-dir", restore, {"moved": names, "backup": backup})


def remove_cni_dir(node: Node, restart_containerd: bool = False) -> Fault:
    """Remove /etc/cni/net.d entirely (moved aside). containerd's watch on it is gone for good:
    a config written into a re-created directory is only seen after containerd restarts.
    Restore puts the directory back and restarts containerd so its watch is re-armed."""
    backup = _park(node, "cni-dir")
    existed = node.exists(CNI_CONF_DIR)
    if existed:
        node.run(["mv", "--", CNI_CONF_DIR, backup])
    if restart_containerd:
        node.systemctl("restart", "containerd.service")

    def restore() -> None:
        node.run(["rm", "-rf", "--", CNI_CONF_DIR])
        if existed:
            node.run(["mv", "--", backup, CNI_CONF_DIR])
        node.systemctl("restart", "containerd.service")

    return Fault("remove-cni-dir", restore, {"backup": backup})


# ---- containerd content store ---------------------------------------------------------------------


def _go_time(t: dt.datetime) -> str:
    # Go's time.MarshalText (RFC 3339 with nanoseconds, trailing zeros trimmed, Z for UTC).
    t = t.astimezone(dt.UTC)
    frac = f"{t.microsecond:06d}000".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"



def snapshotter_moved(node: Node) -> Fault:
    """The overlayfs snapshotter's directory renamed away while containerd runs (a cleanup script,
    a half-done move to another disk): ImageFsInfo still names it, stat of it fails, and kubelet's
    stats provider cannot size it. containerd only creates it at start. Restore: containerd
    stopped, its fresh (empty) one dropped, the original renamed back."""
    aside = f"{BACKUP_DIR}/overlayfs-{secrets.token_hex(3)}"
    node.run(["mkdir", "-p", BACKUP_DIR])
    node.run(["mv", "--", SNAPSHOTTER, aside])

    def restore() -> None:
        node.systemctl("stop", "containerd.service")
        try:
            node.run(["rm", "-rf", "--", SNAPSHOTTER])
            node.run(["mv", "--", aside, SNAPSHOTTER])
        finally:
            node.systemctl("start", "containerd.service")

    return Fault("snapshotter-moved", restore, {"aside": aside})


def stale_ingest(
    node: Node,
    age: dt.timedelta = dt.timedelta(days=3),
    written: int = 1 << 20,
    total: int = 8 << 20,
    ref: str | None = None,
    namespace: str = "k8s.io",
) -> Fault:
    """A half-written, long-abandoned ingest, laid out exactly as containerd's local content store
    writes one (content/local/store.go): ingest/<sha256(ref)>/ with `ref`, `startedat`,
    `updatedat` (Go MarshalText timestamps), `total` and a partial `data`; timestamps and mtimes
    `age` in the past. The ref is what the metadata layer passes down: "<ns>/<id>/<ref>"."""
    if ref is None:
        ref = f"{namespace}/{next(_seq)}/layer-sha256:{secrets.token_hex(32)}"
    key = hashlib.sha256(ref.encode()).hexdigest()
    d = f"{INGEST_DIR}/{key}"
    when = dt.datetime.now(dt.UTC) - age
    node.run(["mkdir", "-p", "-m", "0755", d])
    node.write_file(f"{d}/ref", ref, 0o644)
    node.write_file(f"{d}/startedat", _go_time(when), 0o644)
    node.write_file(f"{d}/updatedat", _go_time(when + dt.timedelta(seconds=7)), 0o644)
    node.write_file(f"{d}/total", str(total), 0o644)
    node.run(
        [
            "dd",
            "if=/dev/urandom",
            f"of={d}/data",
            "bs=64K",
            f"count={max(1, written // 65536)}",
            "status=none",
        ]
    )
    stamp = (when + dt.timedelta(seconds=7)).strftime("%Y-%m-%d %H:%M:%S UTC")
    for name in ("ref", "startedat", "updatedat", "total", "data", ""):
        node.run(["touch", "-h", "-d", stamp, f"{d}/{name}".rstrip("/")])

    def restore() -> None:
        node.run(["rm", "-rf", "--", d])

    return Fault("stale-ingest", restore, {"path": d, "ref": ref, "written": written, "total": total})


def interrupted_ingest(
    node: Node, written: int = 256 << 10, total: int = 1 << 20, age: dt.timedelta | None = None
) -> Fault:
    """An ingest left behind by containerd itself: `ctr content ingest` is fed fewer bytes than it
    announced, so the commit fails and the partial ingest stays (as after an interrupted pull).
    With `age`, its timestamps and mtimes are then moved into the past."""
    ref = f"nmtest-{next(_seq)}-layer-sha256:{secrets.token_hex(32)}"
    cp = node.run(
        ["ctr", "-n", "k8s.io", "content", "ingest", "--expected-size", str(total), ref],
        input=secrets.token_bytes(written),
        check=False,
        timeout=60,
    )
    if cp.returncode == 0:
        raise AssertionError(f"ctr content ingest unexpectedly committed a short blob: {cp.stderr!r}")
    found = node.run(
        ["grep", "-rlF", "--include=ref", "--", ref, INGEST_DIR], check=False
    ).stdout.splitlines()
    paths = [p.rsplit("/", 1)[0] for p in found if p]
    if not paths:
        raise AssertionError(f"containerd left no ingest for {ref}: {cp.stderr!r}")
    d = paths[0]
    if age is not None:
        when = dt.datetime.now(dt.UTC) - age
        node.write_file(f"{d}/startedat", _go_time(when))
        node.write_file(f"{d}/updatedat", _go_time(when))
        stamp = when.strftime("%Y-%m-%d %H:%M:%S UTC")
        for name in ("ref", "startedat", "updatedat", "total", "data", ""):
            node.run(["touch", "-h", "-d", stamp, f"{d}/{name}".rstrip("/")], check=False)

    def restore() -> None:
        node.run(["ctr", "-n", "k8s.io", "content", "rm", ref], check=False)  # no-op for an ingest
        node.run(["rm", "-rf", "--", d])

    return Fault("interrupted-ingest", restore, {"path": d, "ref": ref, "ctr_stderr": cp.stderr})


# ---- containerd root ------------------------------------------------------------------------------


def _stop_start_containerd(node: Node, between: Callable[[], None]) -> None:
    node.systemctl("stop", "containerd.service")
    try:
        between()
    finally:
        node.systemctl("start", "containerd.service")


def containerd_root_symlink(node: Node, fstype: str = "tmpfs", size: str = "512m") -> Fault:
    """Move containerd's root onto another filesystem (a tmpfs mounted at /mnt/nmtest-ctrroot)
    and leave /var/lib/containerd as a symlink to it, as operators do to put images on a data
    disk. The image filesystem stays usable. `detach(fault)` then unmounts that filesystem
    (lazily, containerd keeps its open files), leaving the symlink dangling."""
    mnt = f"/mnt/nmtest-ctrroot-{next(_seq)}"
    orig = f"{CONTAINERD_ROOT}.nmtest-orig"

    def move() -> None:
        node.run(["mkdir", "-p", mnt])
        node.run(["mount", "-t", fstype, "-o", f"size={size},mode=0755", "nmtest-ctrroot", mnt])
        node.run(["cp", "-a", CONTAINERD_ROOT, f"{mnt}/containerd"], timeout=300)
        node.run(["mv", "--", CONTAINERD_ROOT, orig])
        node.run(["ln", "-s", f"{mnt}/containerd", CONTAINERD_ROOT])

    _stop_start_containerd(node, move)

    def restore() -> None:
        def back() -> None:
            node.run(["rm", "-f", "--", CONTAINERD_ROOT])  # the symlink (rm without -r never follows it)
            node.run(["mv", "--", orig, CONTAINERD_ROOT])
            node.run(["umount", "-l", mnt], check=False)
            node.run(["rmdir", mnt], check=False)

        _stop_start_containerd(node, back)

    return Fault(
        "containerd-root-symlink", restore, {"mount": mnt, "target": f"{mnt}/containerd", "orig": orig}
    )


def detach(node: Node, fault: Fault) -> None:
    """For a containerd_root_symlink fault: unmount the target filesystem under containerd's feet."""
    node.run(["umount", "-l", fault.info["mount"]])


def containerd_root_moved(node: Node) -> Fault:
    """Rename /var/lib/containerd while containerd runs (it keeps working on its open files):
    the image filesystem path it reports over CRI no longer exists, so statvfs of it fails with
    ENOENT. Restore renames it back."""
    moved = f"{CONTAINERD_ROOT}.nmtest-moved-{next(_seq)}"
    node.run(["mv", "--", CONTAINERD_ROOT, moved])

    def restore() -> None:
        # containerd may have re-created a root meanwhile: empty directories, and (1.7 and later)
        # the instance uuid its introspection service writes on first use when it finds none.
        # Only such a root is removed; anything else stops the restore.
        node.run(["rm", "-f", "--", f"{CONTAINERD_ROOT}/{INTROSPECTION_UUID}"], check=False)
        node.run(["find", CONTAINERD_ROOT, "-depth", "-type", "d", "-empty", "-delete"], check=False)
        if node.exists(CONTAINERD_ROOT):
            raise AssertionError(
                f"{CONTAINERD_ROOT} re-created with content while moved; left {moved} in place"
            )
        node.run(["mv", "--", moved, CONTAINERD_ROOT])

    return Fault("containerd-root-moved", restore, {"moved_to": moved})


# ---- units ----------------------------------------------------------------------------------------


def crash_loop(node: Node, unit: str = "kubelet.service", restart_sec: float = 1.0) -> Fault:
    """Make `unit` exit 1 right after every start, restarted forever (Restart=always, no start
    limit). For kubelet the stand-in really fails the way an un-joined node's kubelet does
    (--config pointing at a missing /var/lib/kubelet/config.yaml); other units run /bin/false."""
    if unit == "kubelet.service":
        exec_start = f"{NODE_PYTHON} {KUBELET_SCRIPT} --config=/var/lib/kubelet/config.yaml"
    else:
        exec_start = "/bin/false"
    text = (
        "[Unit]\nStartLimitIntervalSec=0\n\n"
        f"[Service]\nExecStart=\nExecStart={exec_start}\nRestart=always\nRestartSec={restart_sec}\n"
    )
    node.drop_in(unit, "90-nmtest-crash-loop", text)
    node.systemctl("restart", "--no-block", unit)

    def restore() -> None:
        node.remove_drop_in(unit, "90-nmtest-crash-loop")
        node.systemctl("reset-failed", unit, check=False)
        node.systemctl("restart", unit)

    return Fault("crash-loop", restore, {"unit": unit})


def stop_containerd(node: Node) -> Fault:
    node.systemctl("stop", "containerd.service")
    return Fault("stop-containerd", lambda: node.systemctl("start", "containerd.service"), {})


def kill_containerd(node: Node, signal: str = "SIGKILL") -> Fault:
    """Kill containerd's main process (as the OOM killer would). Debian's unit has Restart=always
    (RestartSec=5), so systemd brings it back; restore waits until it is active again."""
    before = node.unit_state("containerd.service")
    node.systemctl("kill", f"--signal={signal}", "--kill-who=main", "containerd.service")

    def restore() -> None:
        wait_for(
            lambda: node.unit_state("containerd.service").active_state == "active",
            timeout=30,
            what="containerd to come back",
        )

    return Fault("kill-containerd", restore, {"main_pid_before": before.main_pid})


META_DB = f"{CONTAINERD_ROOT}/io.containerd.metadata.v1.bolt/meta.db"
# Tears the pages bbolt must read at every open: the root bucket and the freelist named by both
# meta pages (page header 16 bytes, then magic, version, page size, flags, root pgid at 32,
# freelist pgid at 48). containerd opens with NoFreelistSync (freelist pgid all ones), so bbolt
# walks the whole tree from the root at every open and panics on the torn root. Fixed page
# numbers are not enough: bbolt writes copy-on-write to new pages at every commit, so after a
# few of containerd's starts the reachable pages had moved past a fixed tear of pages 2-5 and
# containerd came up clean (a CI run waited in vain for the panic).
_TEAR_META = """
import os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
size = os.fstat(fd).st_size
page_size = struct.unpack_from("<I", os.pread(fd, 64, 0), 24)[0]
torn = set()
for meta in (0, 1):
    head = os.pread(fd, 64, meta * page_size)
    magic, root, freelist = struct.unpack_from("<I", head, 16)[0], *struct.unpack_from("<Q8xQ", head, 32)
    assert magic == 0xED0CDAED, f"meta page {meta}: not a bolt file"
    torn |= {p for p in (root, freelist) if 2 <= p and (p + 1) * page_size <= size}
assert torn, "no page to tear"
for p in sorted(torn):
    os.pwrite(fd, b"\\x4e" * page_size, p * page_size)
os.fsync(fd)
os.close(fd)
"""


def moved_aside_roots(node: Node) -> list[str]:
    """containerd roots nodemedic renamed aside (containerd.nodemedic-<time>)."""
    return node.run(["find", "/var/lib", "-maxdepth", "1", "-name", "containerd.nodemedic-*"]).stdout.split()


def corrupt_containerd_metadata(node: Node) -> Fault:
    """Tear meta.db's root page while containerd is stopped (a copy of the original kept), then
    start it: containerd panics inside bbolt at every start, restarted every 5 s by Debian's unit.
    info["sha256"] is the corrupt file's. Restore puts the original root back, whatever root a
    repair left (a root moved aside is moved back, the fresh one dropped)."""
    backup = f"{BACKUP_DIR}/meta.db.orig"
    node.systemctl("stop", "containerd")
    node.run(["mkdir", "-p", BACKUP_DIR])
    node.run(["cp", "-a", "--", META_DB, backup])
    node.run([NODE_PYTHON, "-c", _TEAR_META, META_DB])
    corrupt = node.run(["sha256sum", "--", META_DB]).stdout.split()[0]
    node.systemctl("start", "--no-block", "containerd")

    def restore() -> None:
        node.systemctl("stop", "containerd")
        for aside in moved_aside_roots(node):
            node.run(["rm", "-rf", "--", CONTAINERD_ROOT])
            node.run(["mv", "--", aside, CONTAINERD_ROOT])
        node.run(["cp", "-a", "--", backup, META_DB])
        node.systemctl("reset-failed", "containerd", check=False)
        node.systemctl("start", "containerd")
        wait_for(lambda: node.cri_status().runtime_ready, timeout=60, what="containerd on its original root")

    return Fault("corrupt-containerd-metadata", restore, {"sha256": corrupt, "path": META_DB})


# ---- journal --------------------------------------------------------------------------------------


def journal_noise(
    node: Node, lines: int = 5000, identifier: str = "nmnoise", messages: Iterable[str] | None = None
) -> Fault:
    """Flood the journal with `lines` harmless lines (or the given `messages`) via systemd-cat."""
    msgs = (
        list(messages)
        if messages is not None
        else [f"noise line {i} {secrets.token_hex(8)}" for i in range(lines)]
    )
    node.run(["systemd-cat", "-t", identifier, "-p", "info"], input="\n".join(msgs) + "\n", timeout=120)
    return Fault("journal-noise", lambda: None, {"identifier": identifier, "lines": len(msgs)})


def forge_log_line(
    node: Node,
    message: str,
    identifier: str = "kubelet",
    user: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> Fault:
    """Write a forged log line claiming to be `identifier` with logger(1): as root, or as an
    unprivileged `user` (e.g. image.NODE_USER). With `fields`, sends them as native journal
    fields too (logger --journald). The trusted fields (_SYSTEMD_UNIT, _UID, _COMM, …) stay
    the forger's own: that is what a detector must check."""
    if fields:
        payload = "".join(
            f"{k}={v}\n"
            for k, v in {
                "MESSAGE": message,
                "SYSLOG_IDENTIFIER": identifier,
                "PRIORITY": "3",
                **fields,
            }.items()
        )
        node.run(["logger", "--journald"], input=payload, user=user)
    else:
        node.run(["logger", "-t", identifier, "-p", "daemon.err", "--", message], user=user)
    return Fault("forged-log-line", lambda: None, {"identifier": identifier, "user": user or "root"})
