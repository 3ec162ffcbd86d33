"""A Kubernetes control plane for the test bed: Debian's etcd and kube-apiserver 1.20.2 (built by
testbed/kube.py) in a network namespace of their own.

The namespace (`ip netns add nmkcp-<id>`) holds a bridge with 10.250.0.1/24 and nothing else; a
node joins it through a veth pair created *inside* that namespace with its peer moved straight
into the node's (`attach(node)`), so no interface ever appears in the host's namespace and
nothing routes off this machine. etcd listens on the namespace's loopback only.

Identities are client certificates made with openssl, signed by a CA of this control plane:
the admin (O=system:masters) and one per node (CN=system:node:NAME, O=system:nodes), so the API
server's Node authorizer and NodeRestriction admission treat a node exactly as on a real cluster
(`--authorization-mode=Node,RBAC`, `--enable-admission-plugins=NodeRestriction`).

The test process lives in the host's network namespace; `Client` opens each TCP connection
from a short-lived thread that has joined the control plane's namespace (setns affects only the
calling thread, and a socket keeps the namespace it was made in), then speaks HTTPS with the
stdlib. kube-apiserver 1.20.2 has known CVEs: it only ever listens inside this namespace.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import kube
from .node import WORK_DIR, Node, owner_alive, wait_for

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000

CP_DIR = WORK_DIR / "kube"
SUBNET = "10.250.0"  # /24 inside the control plane's namespace (and the nodes' kube0 links)
API_IP = f"{SUBNET}.1"
API_PORT = 6443
SERVICE_RANGE = "10.96.0.0/24"
BRIDGE = "nmkbr0"
NODE_IF = "kube0"
ETCD_CLIENT = "http://127.0.0.1:2379"


def _log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _pdeathsig() -> None:  # after fork, before exec: die with the test process
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def _run(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)


@dataclasses.dataclass(frozen=True)
class Identity:
    """A client certificate (PEM files) and the user/groups it stands for."""

    name: str
    cert: Path
    key: Path


class Pki:
    """A throw-away CA and the certificates signed by it, made with openssl(1) (EC P-256)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_cert, self.ca_key = self.dir / "ca.crt", self.dir / "ca.key"
        self._serial = 1

    def _key(self, path: Path) -> None:
        _run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)])
        os.chmod(path, 0o600)

    def make_ca(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key(self.ca_key)
        # keyUsage as kubeadm's CA has it: Python >= 3.13 verifies strictly (VERIFY_X509_STRICT) and
        # refuses a CA without it ("CA cert does not include key usage extension").
        _run(["openssl", "req", "-x509", "-new", "-key", str(self.ca_key), "-out", str(self.ca_cert),
              "-days", "7", "-subj", "/CN=nodemedic-testbed-ca",
              "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"])

    def issue(self, stem: str, subject: str, extensions: str) -> tuple[Path, Path]:
        key, csr, cert, ext = (self.dir / f"{stem}{s}" for s in (".key", ".csr", ".crt", ".ext"))
        self._key(key)
        # Authority and subject key identifiers: Python >= 3.13's strict verification wants them.
        ext.write_text(extensions + "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        _run(["openssl", "req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject])
        self._serial += 1
        _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
              "-set_serial", str(self._serial), "-days", "7", "-extfile", str(ext), "-out", str(cert)])
        csr.unlink()
        ext.unlink()
        return cert, key

    def client(self, stem: str, common_name: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
        subject = "".join(f"/O={g}" for g in groups) + f"/CN={common_name}"
        return self.issue(stem, subject, "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                         "extendedKeyUsage=clientAuth\n")

    def server(self, stem: str, common_name: str, sans: Sequence[str]) -> tuple[Path, Path]:
        return self.issue(stem, f"/CN={common_name}", "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                          f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}\n")


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class Client:
    """HTTPS to the API server inside the control plane's namespace, as one identity."""

    def __init__(self, cp: ControlPlane, identity: Identity) -> None:
        self.cp, self.identity = cp, identity
        self.ctx = ssl.create_default_context(cafile=str(cp.pki.ca_cert))
        self.ctx.load_cert_chain(str(identity.cert), str(identity.key))

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(API_IP, API_PORT, context=self.ctx, timeout=timeout)
        conn._create_connection = lambda addr, timeout=timeout, source_address=None: (  # type: ignore[attr-defined]
            self.cp.connect(addr, timeout)
        )
        return conn

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                timeout: float = 30.0) -> tuple[int, Any]:
        """(status, parsed JSON body or text); never raises for an HTTP status."""
        conn = self._connection(timeout)
        try:
            data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read().decode(errors="replace")
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except json.JSONDecodeError:
            return resp.status, raw

    def watch(self, path: str, timeout: float = 300.0) -> Iterator[dict[str, Any]]:
        """A watch (`path` with ?watch=1...): each event ({"type", "object"}) as the API server
        sends it, until the server ends the stream or `timeout` passes without one."""
        conn = self._connection(timeout)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiError(resp.status, resp.read().decode(errors="replace"))
            while line := resp.readline():
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise ApiError(status, body)
        return body

    def node(self, name: str) -> dict[str, Any]:
        return self.get(f"/api/v1/nodes/{name}")

    def node_condition(self, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        try:
            conditions = self.node(name).get("status", {}).get("conditions", [])
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return next((c for c in conditions if c.get("type") == kind), None)


class ControlPlane:
    """etcd + kube-apiserver in their own network namespace. `start()`, then `stop()` (always)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"nmkcp-{uuid.uuid4().hex[:8]}"
        self.netns = self.name
        self.netns_path = Path("/run/netns") / self.netns
        self.workdir = CP_DIR / self.name
        self.pki = Pki(self.workdir / "pki")
        self.bin = kube.kube_dir() / "bin"
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self._links = 0
        self.admin_identity: Identity | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        kube.ensure_kube()
        reap_stale()
        self.workdir.mkdir(parents=True)
        (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
        try:
            started = time.monotonic()
            self._make_pki()
            _run(["ip", "netns", "add", self.netns])
            for argv in (["link", "set", "lo", "up"],
                         ["link", "add", BRIDGE, "type", "bridge"],
                         ["addr", "add", f"{API_IP}/24", "dev", BRIDGE],
                         ["link", "set", BRIDGE, "up"]):
                _run(["ip", "-n", self.netns, *argv])
            self._start_etcd()
            self.start_apiserver()
            _log(f"control plane {self.name} up in {time.monotonic() - started:.1f}s (https://{API_IP}:{API_PORT})")
            return self
        except BaseException:
            self.stop()
            raise

    def _make_pki(self) -> None:
        self.pki.make_ca()
        self.pki.server("apiserver", "kube-apiserver", [
            f"IP:{API_IP}", "IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc"])
        sa = self.pki.dir / "sa.key"
        self.pki._key(sa)
        _run(["openssl", "pkey", "-in", str(sa), "-pubout", "-out", str(self.pki.dir / "sa.pub")])
        cert, key = self.pki.client("admin", "nodemedic-admin", ["system:masters"])
        self.admin_identity = Identity("nodemedic-admin", cert, key)
        self._kubeconfig(self.workdir / "admin.conf", cert, key, "admin")

    def _kubeconfig(self, path: Path, cert: Path, key: Path, user: str) -> None:
        path.write_text(kubeconfig_text(self.pki.ca_cert.read_text(), cert.read_text(), key.read_text(), user))
        os.chmod(path, 0o600)

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log_name, "ab") as out:
            return subprocess.Popen(
                ["nsenter", f"--net={self.netns_path}", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_pdeathsig,
            )

    def _start_etcd(self) -> None:
        data = self.workdir / "etcd"
        self.etcd = self._spawn([
            "etcd", "--name", "nmkcp", "--data-dir", str(data),
            "--listen-client-urls", ETCD_CLIENT, "--advertise-client-urls", ETCD_CLIENT,
            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "nmkcp=http://127.0.0.1:2380", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-level", "warn",
        ], "etcd.log")
        (self.workdir / "etcd.pid").write_text(f"{self.etcd.pid}\n")

    def apiserver_argv(self) -> list[str]:
        pki = self.pki.dir
        return [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers={ETCD_CLIENT}",
            "--bind-address=0.0.0.0",  # the namespace has only lo and the bridge
            f"--advertise-address={API_IP}",
            f"--secure-port={API_PORT}",
            "--insecure-port=0",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def start_apiserver(self, timeout: float = 120.0) -> None:
        """Start kube-apiserver (again) and wait until /readyz says ok."""
        if self.apiserver is not None and self.apiserver.poll() is None:
            raise RuntimeError("kube-apiserver is already running")
        self.apiserver = self._spawn(self.apiserver_argv(), "kube-apiserver.log")
        (self.workdir / "apiserver.pid").write_text(f"{self.apiserver.pid}\n")
        wait_for(self._ready, timeout=timeout, interval=0.5, what=f"kube-apiserver /readyz ({self.workdir})")

    def _ready(self) -> bool:
        if self.apiserver is None or self.apiserver.poll() is not None:
            tail = (self.workdir / "kube-apiserver.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"kube-apiserver exited:\n{tail}")
        status, body = self.admin().request("GET", "/readyz", timeout=5)
        return status == 200 and str(body).strip() == "ok"

    def stop_apiserver(self) -> None:
        """SIGTERM kube-apiserver (SIGKILL after 30 s) and wait for it; etcd stays up."""
        _terminate(self.apiserver)

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def stop(self) -> None:
        _terminate(self.apiserver)
        _terminate(self.etcd)
        with contextlib.suppress(subprocess.CalledProcessError):
            if self.netns_path.exists():
                _run(["ip", "netns", "delete", self.netns])
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- clients and identities --------------------------------------------------------------
    def connect(self, addr: tuple[str, int], timeout: float | None) -> socket.socket:
        """A TCP connection made from inside the control plane's namespace."""
        box: dict[str, Any] = {}

        def inside() -> None:
            try:
                fd = os.open(self.netns_path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                box["sock"] = socket.create_connection(addr, timeout=timeout)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = e

        t = threading.Thread(target=inside, name="netns-connect")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["sock"]

    def admin(self) -> Client:
        assert self.admin_identity is not None
        return Client(self, self.admin_identity)

    def node_identity(self, node_name: str) -> Identity:
        """A kubelet's client certificate: CN=system:node:NAME, O=system:nodes (made once)."""
        cert, key = self.pki.dir / f"node-{node_name}.crt", self.pki.dir / f"node-{node_name}.key"
        if not cert.exists():
            cert, key = self.pki.client(f"node-{node_name}", f"system:node:{node_name}", ["system:nodes"])
        return Identity(f"system:node:{node_name}", cert, key)

    def client(self, identity: Identity) -> Client:
        return Client(self, identity)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The built kubectl as admin, run in the control plane's namespace."""
        argv = ["nsenter", f"--net={self.netns_path}", "--", str(self.bin / "kubectl"),
                f"--kubeconfig={self.workdir / 'admin.conf'}", *args]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)

    # ---- nodes -------------------------------------------------------------------------------
    def attach(self, node: Node) -> str:
        """Give a booted node a link into the control plane's network: a veth pair made in the
        control plane's namespace, one end on its bridge, the other moved into the node's
        namespace as `kube0` with the next free address. Returns the node's address."""
        self._links += 1
        if self._links > 250:
            raise RuntimeError("no addresses left on the control plane's /24")
        ip = f"{SUBNET}.{self._links + 1}"
        cp_end = f"nmk{self._links}"
        _run(["ip", "-n", self.netns, "link", "add", cp_end, "type", "veth",
              "peer", "name", NODE_IF, "netns", str(node.pid)])
        _run(["ip", "-n", self.netns, "link", "set", cp_end, "master", BRIDGE, "up"])
        node.run(["ip", "addr", "add", f"{ip}/24", "dev", NODE_IF])
        node.run(["ip", "link", "set", NODE_IF, "up"])
        return ip


def kubeconfig_text(ca: str, cert: str, key: str, user: str, server: str = f"https://{API_IP}:{API_PORT}") -> str:
    """A kubeconfig with the certificates inline (JSON is valid YAML)."""

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    cluster = {"server": server, "certificate-authority-data": b64(ca)}
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "nodemedic-testbed",
        "clusters": [{"name": "nodemedic-testbed", "cluster": cluster}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "nodemedic-testbed", "context": {"cluster": "nodemedic-testbed", "user": user}}],
    }, indent=1) + "\n"


def _terminate(proc: subprocess.Popen[bytes] | None, grace: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def reap_stale() -> None:
    """Control planes of test processes that died without stopping them (SIGKILL): their etcd and
    kube-apiserver died with them (PR_SET_PDEATHSIG); remove the namespace and the directory."""
    if not CP_DIR.is_dir():
        return
    for wd in CP_DIR.iterdir():
        if owner_alive(wd):
            continue
        _log(f"removing leftover control plane {wd.name}")
        if (Path("/run/netns") / wd.name).exists():
            subprocess.run(["ip", "netns", "delete", wd.name], check=False, capture_output=True)
        shutil.rmtree(wd, ignore_errors=True)

