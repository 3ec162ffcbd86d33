"""Boot a throw-away node from the cached image and drive it from the host.

A node is a fresh copy of the image on the host's ext4 (not on overlayfs: containerd's overlayfs
snapshotter must be able to mount overlays *inside* the node root), booted with
`systemd-nspawn --boot` so real systemd, journald, dbus-daemon and containerd.service run in it.
Commands run inside with `nsenter -t <init pid> -a`, always as argv lists.

The node gets its own, empty network namespace (`--private-network`): nothing a test does to
networking (CNI bridges, iptables) can touch the host or route anywhere, and two nodes on one
machine cannot collide.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from nodemedic.probes.cri import CriCallFailed, CriStatus, CriUnavailable, ImageFsUsage

from . import image, stacks
from .stacks import Stack

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)

REPO_ROOT = Path(__file__).resolve().parents[3]
NODE_DIR = Path(__file__).resolve().parents[1]
FILES = Path(__file__).resolve().parent / "files"
# Node roots (one dir per booted node) and working-tree wheels. Not tmpfs, not overlayfs: a node
# root must be a plain local filesystem for containerd's overlayfs snapshotter inside it.
WORK_DIR = Path(os.environ.get("NODEMEDIC_TESTBED_NODES", "/var/tmp/nodemedic-testbed"))
NODES_DIR = WORK_DIR / "nodes"
WHEELS_DIR = WORK_DIR / "wheels"

NODE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}
NODE_PYTHON = f"{image.NODE_VENV}/bin/python"
KUBELET_SCRIPT = "/usr/local/lib/kubelet-standin/kubelet.py"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"


def _log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


class NodeError(RuntimeError):
    pass


class CommandFailed(NodeError):
    def __init__(self, argv: list[str], returncode: int, stdout: str | bytes, stderr: str | bytes) -> None:
        def show(x: str | bytes) -> str:
            s = x.decode(errors="replace") if isinstance(x, bytes) else x
            return s[-3000:]

        super().__init__(
            f"{argv} exited {returncode}\n--- stdout ---\n{show(stdout)}\n--- stderr ---\n{show(stderr)}"
        )
        self.argv, self.returncode, self.stdout, self.stderr = argv, returncode, stdout, stderr


@dataclasses.dataclass(frozen=True)
class UnitState:
    unit: str
    active_state: str
    sub_state: str
    n_restarts: int
    result: str
    main_pid: int
    exec_main_status: int
    load_state: str


def wait_for(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.5, what: str = "condition"
) -> T:
    """Call `predicate` until it returns something truthy and return that; TimeoutError (with the
    last value or exception) otherwise. Exceptions inside the predicate count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - "not yet" includes "cannot tell yet"
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def _entry_text(value: Any) -> str:
    # journalctl -o json gives non-UTF-8 or binary fields as arrays of byte values.
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return bytes(value).decode(errors="replace")
    if isinstance(value, list):
        return "\n".join(_entry_text(v) for v in value)
    return str(value)


# Walks a tree inside the node without following symlinks and prints one JSON manifest:
# relative path -> [kind, mode, sha256-or-link-target-or-size]. Run with the node's own python3.
_MANIFEST_SCRIPT = r"""
import hashlib, json, os, stat, sys
top = sys.argv[1]
out = {}
def add(path, rel):
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        out[rel] = ["link", mode, os.readlink(path)]
    elif stat.S_ISDIR(st.st_mode):
        out[rel] = ["dir", mode, f"{st.st_uid}:{st.st_gid}"]
        for name in sorted(os.listdir(path)):
            add(os.path.join(path, name), f"{rel}/{name}" if rel else name)
    elif stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[rel] = ["file", mode, h.hexdigest(), f"{st.st_uid}:{st.st_gid}"]
    else:
        out[rel] = ["other", mode, stat.S_IFMT(st.st_mode)]
try:
    add(top, "")
except FileNotFoundError:
    out = {"": ["missing"]}
json.dump(out, sys.stdout, sort_keys=True)
"""

_WRITE_SCRIPT = r"""
import os, sys
path, mode = sys.argv[1], int(sys.argv[2], 8)
os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
data = sys.stdin.buffer.read()
tmp = f"{path}.nmtest-tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, mode)
os.replace(tmp, path)
"""


class Node:
    """A booted test node. Create with `boot_node()`; always `stop()` (the fixtures do)."""

    def __init__(self, name: str, workdir: Path, stack: Stack | None = None) -> None:
        self.name = name
        self.stack = stack or stacks.default_stack()
        self.workdir = workdir
        self.root = workdir / "root"
        self.console_log = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the node's init (systemd) as seen from the host
        self.cgroups: list[Path] = []
        self._gids: dict[str, str] = {}

    # ---- running things -------------------------------------------------------------------------
    def run(
        self,
        argv: list[str],
        *,
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float = 60.0,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        binary: bool = False,
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv inside the node (all its namespaces) as root, or as `user` via setpriv.
        Returns CompletedProcess with str output (bytes if `binary` or `input` is bytes)."""
        if isinstance(argv, str):
            raise TypeError("Node.run takes an argv list, never a shell string")
        if not self.pid:
            raise NodeError(f"node {self.name} is not running")
        inner = list(argv)
        if user is not None:
            # setpriv wants a group for --regid: the user's primary group (nobody's is nogroup).
            if user not in self._gids:
                self._gids[user] = self.run(["id", "-g", "--", user]).stdout.strip()
            gid = self._gids[user]
            inner = ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups", "--", *inner]
        full = ["nsenter", "-t", str(self.pid), "-a", "--", *inner]
        text = not binary and not isinstance(input, bytes)
        # A new session, so a timeout can kill nsenter *and* the command it forked in the node.
        proc = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**NODE_ENV, **(env or {})},
            start_new_session=True,
        )
        data = input.encode() if isinstance(input, str) else input
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        if text:
            out_s: Any = out.decode(errors="replace")
            err_s: Any = err.decode(errors="replace")
        else:
            out_s, err_s = out, err
        cp = subprocess.CompletedProcess(argv, proc.returncode, out_s, err_s)
        if check and proc.returncode != 0:
            raise CommandFailed(list(argv), proc.returncode, out_s, err_s)
        return cp

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 90.0
    ) -> subprocess.CompletedProcess[Any]:
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 30.0,
        interval: float = 0.5,
        what: str = "condition",
    ) -> T:
        return wait_for(predicate, timeout=timeout, interval=interval, what=what)

    # ---- files ----------------------------------------------------------------------------------
    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Atomically write `data` to `path` inside the node (parents created), through the node's
        own view of the filesystem, so symlinks in the node resolve inside the node."""
        payload = data.encode() if isinstance(data, str) else data
        self.run(["python3", "-c", _WRITE_SCRIPT, path, f"{mode:o}"], input=payload)

    def read_file(self, path: str) -> bytes:
        return self.run(["cat", "--", path], binary=True).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0

    def tree_manifest(self, path: str) -> dict[str, list[Any]]:
        """Every entry under `path` (not following symlinks): kind, mode, content hash/link target."""
        return json.loads(self.run(["python3", "-c", _MANIFEST_SCRIPT, path], timeout=120).stdout)

    def checksum_tree(self, path: str) -> str:
        """sha256 over all files' contents, modes, owners and symlink targets under `path`."""
        manifest = self.tree_manifest(path)
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    # ---- journal --------------------------------------------------------------------------------
    def journal(
        self,
        unit: str | None = None,
        message_id: str | None = None,
        fields: Mapping[str, str | Iterable[str]] | None = None,
        since: str | None = None,
        identifier: str | None = None,
        grep: str | re.Pattern[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Entries from the node's journal as parsed `journalctl -o json` dicts (MESSAGE decoded
        to str). Matches are journal field matches: `unit` is `_SYSTEMD_UNIT=` (the trusted field,
        not `-u`, which also matches systemd's messages about the unit), `identifier` is
        `SYSLOG_IDENTIFIER=`; `since` is a cursor (entries strictly after it); `grep` filters
        MESSAGE with a Python regex (search)."""
        argv = ["journalctl", "--no-pager", "--all", "-o", "json"]
        if since:
            # Not --after-cursor: journalctl 252 returns nothing for `--after-cursor=C MATCH` when
            # the entry at C does not itself match. --cursor (inclusive) seeks correctly; the
            # entry at C is dropped below.
            argv.append(f"--cursor={since}")
        matches: list[str] = []
        if unit:
            matches.append(f"_SYSTEMD_UNIT={unit if '.' in unit else unit + '.service'}")
        if message_id:
            matches.append(f"MESSAGE_ID={message_id}")
        if identifier:
            matches.append(f"SYSLOG_IDENTIFIER={identifier}")
        for key, value in (fields or {}).items():
            values = [value] if isinstance(value, str) else list(value)
            matches.extend(f"{key}={v}" for v in values)  # same field twice = OR, as journalctl does
        out = self.run(argv + matches, timeout=120).stdout
        pattern = re.compile(grep) if isinstance(grep, str) else grep
        entries = []
        for line in out.splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if since and entry.get("__CURSOR") == since:
                continue
            if "MESSAGE" in entry:
                entry["MESSAGE"] = _entry_text(entry["MESSAGE"])
            if pattern is None or pattern.search(entry.get("MESSAGE", "")):
                entries.append(entry)
        return entries

    def messages(self, **kw: Any) -> list[str]:
        return [e.get("MESSAGE", "") for e in self.journal(**kw)]

    def cursor(self) -> str:
        """The cursor of the newest journal entry; pass it as `since=` to see only what follows."""
        out = self.run(["journalctl", "--no-pager", "-n", "1", "-o", "json"]).stdout.strip().splitlines()
        return json.loads(out[-1])["__CURSOR"] if out and out[-1].startswith("{") else ""

    def wait_for_journal(
        self, grep: str | re.Pattern[str], timeout: float = 30.0, **kw: Any
    ) -> dict[str, Any]:
        """Wait until an entry matching `grep` (plus journal() filters in kw) appears; return it."""
        entries = wait_for(
            lambda: self.journal(grep=grep, **kw),
            timeout=timeout,
            interval=0.5,
            what=f"journal entry matching {grep!r} ({kw})",
        )
        return entries[0]

    # ---- probes (run inside the node, with nodemedic's own probe module) ------------------------
    def _probe(self, *args: str, socket: str = CONTAINERD_SOCKET) -> dict[str, Any]:
        cp = self.run(
            [NODE_PYTHON, "-m", "nodemedic.probes", "--socket", socket, *args], check=False, timeout=30
        )
        try:
            out = json.loads(cp.stdout)
        except json.JSONDecodeError:
            raise CommandFailed(list(cp.args), cp.returncode, cp.stdout, cp.stderr) from None
        if cp.returncode == 3:
            raise CriUnavailable(out.get("message", ""))
        if cp.returncode == 4:
            raise CriCallFailed(out.get("code", ""), out.get("message", ""))
        if cp.returncode != 0:
            raise CommandFailed(list(cp.args), cp.returncode, cp.stdout, cp.stderr)
        return out

    def cri_status(self, socket: str = CONTAINERD_SOCKET) -> CriStatus:
        """RuntimeService.Status from inside the node; raises CriUnavailable if containerd is not there."""
        return CriStatus(**self._probe("cri-status", socket=socket))

    def imagefs_info(self, socket: str = CONTAINERD_SOCKET) -> list[ImageFsUsage]:
        """ImageService.ImageFsInfo from inside the node."""
        out = self._probe("imagefs", socket=socket)
        return [
            ImageFsUsage(f["mountpoint"], f["used_bytes"], f["inodes_used"]) for f in out["image_filesystems"]
        ]

    def imagefs_capacity(self, socket: str = CONTAINERD_SOCKET) -> list[dict[str, Any]]:
        """ImageFsInfo plus statvfs capacity (or statvfs_error) of each mountpoint, as the node sees it."""
        return self._probe("imagefs", socket=socket)["image_filesystems"]

    # ---- units ----------------------------------------------------------------------------------
    def unit_state(self, unit: str) -> UnitState:
        props = "ActiveState,SubState,NRestarts,Result,MainPID,ExecMainStatus,LoadState"
        out = self.systemctl("show", f"--property={props}", "--", unit).stdout
        kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

        def num(key: str) -> int:
            return int(kv.get(key) or 0)

        return UnitState(
            unit=unit,
            active_state=kv.get("ActiveState", ""),
            sub_state=kv.get("SubState", ""),
            n_restarts=num("NRestarts"),
            result=kv.get("Result", ""),
            main_pid=num("MainPID"),
            exec_main_status=num("ExecMainStatus"),
            load_state=kv.get("LoadState", ""),
        )

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def drop_in(self, unit: str, name: str, text: str, *, reload: bool = True) -> str:
        """Write /etc/systemd/system/<unit>.d/<name>.conf and daemon-reload; returns its path."""
        path = f"/etc/systemd/system/{unit}.d/{name}.conf"
        self.write_file(path, text)
        if reload:
            self.daemon_reload()
        return path

    def remove_drop_in(self, unit: str, name: str, *, reload: bool = True) -> None:
        self.run(["rm", "-f", "--", f"/etc/systemd/system/{unit}.d/{name}.conf"])
        if reload:
            self.daemon_reload()

    def configure_kubelet(self, **env: str | int | float) -> None:
        """Set the kubelet stand-in's KUBELET_STANDIN_* knobs (e.g. image_gc_period=2) in a
        drop-in and restart it. No arguments: back to the defaults."""
        if env:
            lines = "".join(f'Environment="KUBELET_STANDIN_{k.upper()}={v}"\n' for k, v in env.items())
            self.drop_in("kubelet.service", "20-nmtest-env", "[Service]\n" + lines)
        else:
            self.remove_drop_in("kubelet.service", "20-nmtest-env")
        self.systemctl("restart", "kubelet.service")

    # ---- lifecycle ------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def system_state(self) -> str:
        return self.run(["systemctl", "is-system-running"], check=False, timeout=20).stdout.strip()

    def stop(self, timeout: float = 30.0) -> None:
        """Power the node off (clean halt), kill it if that does not finish, remove its root.
        Safe to call twice and on a node that never finished booting."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                # nspawn turns SIGTERM into a clean halt of the node's systemd (SIGRTMIN+3).
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _log(f"node {self.name} did not halt in {timeout:.0f}s; killing it")
                    if self.pid:
                        # Killing a PID namespace's init kills everything in that namespace.
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self.pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=15)
        finally:
            self.pid = 0
            _remove_cgroups(self.cgroups)
            _remove_node_dir(self.workdir)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Node {self.name} pid={self.pid} root={self.root}>"


# ---- boot -----------------------------------------------------------------------------------------


def _host_mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def _remove_node_dir(workdir: Path) -> None:
    if not workdir.exists():
        return
    # The node's mounts live in its own mount namespace and die with it; a host mount under the
    # root would only be there by mistake — never let rmtree walk into it.
    for mp in sorted(_host_mounts_under(workdir), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    if _host_mounts_under(workdir):
        raise NodeError(f"refusing to remove {workdir}: still has mounts {_host_mounts_under(workdir)}")
    shutil.rmtree(workdir, ignore_errors=False)


def _find_init(nspawn_pid: int) -> int:
    """The node's PID 1, as a host pid: nspawn's child whose innermost pid is 1."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue
        if status.get("PPid") == str(nspawn_pid) and status.get("NSpid", "").split()[-1:] == ["1"]:
            return int(entry)
    return 0


def _cgroup_dirs(name: str) -> list[Path]:
    """One fresh cgroup per node in the hierarchies systemd uses (cgroup2 and, on a hybrid host,
    name=systemd). nspawn puts the node under its *own* cgroup; without systemd on the host every
    nspawn would sit in the same root cgroup, all nodes would share /payload/system.slice/…, and
    stopping kubelet.service in one node would kill kubelet in every other node."""
    with open("/proc/self/cgroup") as f:
        own = dict(
            (line.split(":", 2)[1], line.split(":", 2)[2].strip()) for line in f if line.count(":") >= 2
        )
    dirs = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, mountpoint, opts = fields[sep + 1], fields[4], fields[sep + 3]
            if fstype == "cgroup2" and "" in own:
                dirs.append(Path(mountpoint) / own[""].lstrip("/") / f"nodemedic-testbed-{name}")
            elif fstype == "cgroup" and "name=systemd" in opts.split(",") and "name=systemd" in own:
                dirs.append(Path(mountpoint) / own["name=systemd"].lstrip("/") / f"nodemedic-testbed-{name}")
    return dirs


def _remove_cgroups(dirs: list[Path]) -> None:
    for top in dirs:
        if not top.is_dir():
            continue
        # Bottom-up: a cgroup directory can only be removed once it has no children.
        for sub in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _write_into_fresh_root(root: Path, path: str, data: str | bytes, mode: int = 0o644) -> None:
    # Only for provisioning a root that has not booted yet: its tree is our own image's, so
    # writing from the host cannot follow a symlink the node planted.
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(p, mode)


def _provision(root: Path, stack: Stack) -> None:
    """Per-node files that change with the tests, not with the image (so editing them does not
    rebuild the image): the kubelet stand-in and its unit, the baseline CNI config."""
    from . import faults  # local: faults imports this module

    _write_into_fresh_root(root, KUBELET_SCRIPT, (NODE_DIR / "kubelet_standin.py").read_bytes(), 0o755)
    _write_into_fresh_root(
        root, "/etc/systemd/system/kubelet.service", (FILES / "kubelet.service").read_bytes()
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "kubelet.service").unlink(missing_ok=True)
    os.symlink("/etc/systemd/system/kubelet.service", wants / "kubelet.service")
    # The wheelhouse pip installs nodemedic's dependencies from, offline: the image's pins plus
    # whatever the working tree's pyproject.toml asks for today.
    wheels = image.ensure_wheelhouse(image.project_dependencies(), _log, python=stack.python)
    wh = root / image.NODE_WHEELHOUSE.lstrip("/")
    shutil.rmtree(wh, ignore_errors=True)
    shutil.copytree(wheels, wh)
    # A node starts healthy: a valid CNI config, as if the CNI daemonset had already run.
    _write_into_fresh_root(root, f"/etc/cni/net.d/{faults.CNI_CONF_NAME}", faults.cni_conflist())


def _prerequisites() -> None:
    """Fail loudly (never skip) when the host cannot run a node, saying what is missing."""
    if os.geteuid() != 0:
        raise NodeError("node tests need root (systemd-nspawn, nsenter)")
    missing = [
        t for t in ("systemd-nspawn", "nsenter", "debootstrap", "zstd", "tar") if shutil.which(t) is None
    ]
    if missing:
        raise NodeError(
            f"node tests need {missing} on PATH: apt-get install systemd-container debootstrap zstd"
        )


def boot_node(
    prefix: str = "nmnode",
    *,
    install: bool = True,
    boot_timeout: float = 90.0,
    stack: Stack | str | None = None,
) -> Node:
    """Unpack a fresh root from the stack's cached image (default: stacks.DEFAULT), boot it, wait
    until systemd says the system is up and containerd answers over CRI, and (by default) install
    the working tree's nodemedic."""
    _prerequisites()
    st = stacks.get(stack)
    tarball = image.ensure_image(st, _log)
    NODES_DIR.mkdir(parents=True, exist_ok=True)
    reap_stale_nodes()
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    node = Node(name, NODES_DIR / name, st)
    node.workdir.mkdir(parents=True)
    (node.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
    try:
        started = time.monotonic()
        phases: dict[str, float] = {}

        def lap(phase: str) -> None:
            phases[phase] = time.monotonic() - started - sum(phases.values())

        image.extract_image(tarball, node.root)
        lap("extract")
        _provision(node.root, st)
        lap("provision")
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            "-D",
            str(node.root),
            f"--machine={name}",
            f"--uuid={uuid.uuid4()}",
            f"--hostname={name}",
            # Own network namespace: CNI, iptables and ports stay inside the node.
            "--private-network",
            # containerd and runc mount overlays, set up namespaces and cgroups.
            "--capability=all",
            "--console=read-only",
            *st.nspawn_flags(),
        ]
        node.cgroups = _cgroup_dirs(name)
        for d in node.cgroups:
            d.mkdir()
        procs_files = [str(d / "cgroup.procs") for d in node.cgroups]

        def in_child() -> None:  # after fork, before exec
            # nspawn starts in the node's own cgroups...
            for procs in procs_files:
                with open(procs, "w") as f:
                    f.write("0")
            # ...and halts the node (SIGTERM) should the test process die without stopping it,
            # even by SIGKILL. The root dir left behind is reaped by the next boot_node().
            _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG

        with open(node.console_log, "wb") as console:
            node.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=in_child,
                # Only the stack decides the node's cgroup layout, never the caller's environment.
                env={**{k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_NSPAWN_")},
                     **st.nspawn_env()},  # fmt: skip
            )
        (node.workdir / "nspawn.pid").write_text(f"{node.proc.pid}\n")

        def init_pid() -> int:
            if node.proc is not None and node.proc.poll() is not None:
                raise NodeError(f"systemd-nspawn exited {node.proc.returncode}:\n{_tail(node.console_log)}")
            return _find_init(node.proc.pid)  # type: ignore[union-attr]

        node.pid = _wait_or_raise(init_pid, 20, "the node's init process", node)

        def booted() -> str:
            if not node.is_running():
                raise NodeError(f"node exited during boot:\n{_tail(node.console_log)}")
            state = node.system_state()
            return state if state in ("running", "degraded") else ""

        state = _wait_or_raise(booted, boot_timeout, "systemctl is-system-running = running/degraded", node)
        lap("boot")
        if state == "degraded":
            failed = node.systemctl("--failed", "--no-legend", check=False).stdout.strip()
            _log(f"node {name} booted degraded; failed units:\n{failed}")
        if install:
            install_nodemedic(node)
            lap("install")
            _wait_or_raise(
                lambda: node.cri_status().runtime_ready, 60, "containerd to answer CRI Status", node
            )
            lap("cri")
        took = ", ".join(f"{k} {v:.1f}s" for k, v in phases.items())
        total = time.monotonic() - started
        _log(f"node {name} ({st.name}) up in {total:.1f}s ({took}; init pid {node.pid}, root {node.root})")
        return node
    except BaseException:
        node.stop()
        raise


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no console log)"


def _wait_or_raise(pred: Callable[[], T], timeout: float, what: str, node: Node) -> T:
    try:
        return wait_for(pred, timeout=timeout, interval=0.3, what=what)
    except TimeoutError as e:
        raise NodeError(f"node {node.name}: {e}\n--- console ---\n{_tail(node.console_log)}") from None


def reap_stale_nodes() -> None:
    """Remove node dirs left by a test process that died without cleaning up (SIGKILL, OOM):
    kill their nspawn if still there, then delete the root."""
    if not NODES_DIR.is_dir():
        return
    for wd in NODES_DIR.iterdir():
        if not (wd / "owner.pid").exists() and not (wd / "nspawn.pid").exists():
            continue
        if owner_alive(wd):
            continue
        with contextlib.suppress(OSError, ValueError):
            nspawn = int((wd / "nspawn.pid").read_text())
            if _alive(nspawn) and _cmdline(nspawn).startswith("systemd-nspawn"):
                _log(f"killing leftover node {wd.name} (nspawn {nspawn})")
                os.kill(nspawn, signal.SIGKILL)
                wait_for(lambda n=nspawn: not _alive(n), timeout=15, what=f"nspawn {nspawn} to exit")  # type: ignore[misc]
        _log(f"removing leftover node dir {wd}")
        _remove_cgroups(_cgroup_dirs(wd.name))
        with contextlib.suppress(OSError, NodeError):
            _remove_node_dir(wd)


def owner_alive(workdir: Path) -> bool:
    """Whether the test process that wrote `workdir`/owner.pid still runs (its dir is in use)."""
    try:
        owner = int((workdir / "owner.pid").read_text())
    except (OSError, ValueError):
        return False
    return owner > 0 and _alive(owner)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---- installing nodemedic ---------------------------------------------------------------------------

_wheel_cache: dict[str, Path] = {}


# What a wheel of the working tree is built from: everything but VCS, caches, build output and
# the parts of the repo that never go into the package.
_NOT_PACKAGED = {
    ".git",
    ".venv",
    "build",
    "dist",
    "tests",
    "bench",
    "docs",
    "packaging",
    ".ci",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".mypy_cache",
}


def _source_files(repo: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(d for d in dirnames if d not in _NOT_PACKAGED and not d.endswith(".egg-info"))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc"))
    return out


def _tree_hash(repo: Path) -> str:
    h = hashlib.sha256()
    for f in _source_files(repo):
        h.update(str(f.relative_to(repo)).encode() + b"\0")
        if f.is_file() and not f.is_symlink():
            h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_wheel(repo: Path = REPO_ROOT) -> Path:
    """A wheel of the working tree, built from a copy (so the build never writes build/ or
    egg-info into the tree being edited) without network (no build isolation)."""
    key = _tree_hash(repo)
    if key in _wheel_cache and _wheel_cache[key].exists():
        return _wheel_cache[key]
    out = WHEELS_DIR / key
    wheels = sorted(out.glob("nodemedic-*.whl")) if out.is_dir() else []
    if wheels:
        _wheel_cache[key] = wheels[-1]
        return wheels[-1]
    src = WHEELS_DIR / f"src-{key}-{os.getpid()}"
    shutil.rmtree(src, ignore_errors=True)
    for f in _source_files(repo):
        dest = src / f.relative_to(repo)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest, follow_symlinks=False)
    tmp_out = Path(f"{out}.tmp-{os.getpid()}")
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-build-isolation",
                "--wheel-dir",
                str(tmp_out),
                str(src),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as e:
        raise NodeError(f"building nodemedic's wheel failed:\n{e.stdout}\n{e.stderr}") from None
    finally:
        shutil.rmtree(src, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rename(tmp_out, out)
    shutil.rmtree(tmp_out, ignore_errors=True)
    wheel = sorted(out.glob("nodemedic-*.whl"))[-1]
    _wheel_cache[key] = wheel
    # One wheel per edited tree piles up; a day-old one belongs to a tree nobody runs any more.
    for old in WHEELS_DIR.iterdir():
        if old != out and old.stat().st_mtime < time.time() - 86400:
            shutil.rmtree(old, ignore_errors=True)
    return wheel


def install_nodemedic(node: Node, repo: Path = REPO_ROOT, unit_dir: str = "/etc/systemd/system") -> str:
    """(Re)install the working tree into the node's /opt/venvs/nodemedic, link
    /usr/local/bin/nodemedic, copy units/*.{service,socket,timer,path} into `unit_dir` and
    daemon-reload. Does not enable or start anything. Returns the installed wheel's name."""
    wheel = build_wheel(repo)
    remote = f"/var/tmp/{wheel.name}"
    node.write_file(remote, wheel.read_bytes())
    pip = f"{image.NODE_VENV}/bin/pip"
    node.run([pip, "uninstall", "--yes", "--quiet", "nodemedic"], check=False)
    # Offline: dependencies resolve from the wheelhouse baked into the image.
    node.run(
        [pip, "install", "--quiet", "--no-index", "--find-links", image.NODE_WHEELHOUSE, remote], timeout=180
    )
    node.run(["rm", "-f", remote])
    node.run(["ln", "-sfn", f"{image.NODE_VENV}/bin/nodemedic", "/usr/local/bin/nodemedic"])
    units = sorted(
        p
        for p in (repo / "units").glob("*")
        if p.is_file() and p.suffix in (".service", ".socket", ".timer", ".path")
    )
    for unit in units:
        node.write_file(f"{unit_dir}/{unit.name}", unit.read_bytes())
    node.daemon_reload()
    return wheel.name
