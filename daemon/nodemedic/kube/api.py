"""The few Kubernetes API calls the cluster side makes, over HTTPS with asyncio's own streams.

Why not a client library: the calls are few (GET a Node, PATCH its status, POST/PATCH an Event,
POST a SelfSubjectAccessReview; for the fleet guard GET/POST/PUT a Lease and a watch on the
Leases while a slot is awaited), all JSON over HTTP/1.1, and everything here runs on the one
asyncio loop with no thread of its own (asyncio's SSL runs in the loop). bench/kube_client.py
compares the import cost with lightkube and kubernetes_asyncio.

A kubeconfig is read as JSON (valid YAML) or, when Debian's python3-yaml is there, as YAML.
The kubelet's (/etc/kubernetes/kubelet.conf) names its client certificate by path
(/var/lib/kubelet/pki/kubelet-client-current.pem, rotated by the kubelet): it is read again at
each new connection context, so a rotated certificate is picked up. Inline data (*-data) is
handed to ssl through a memfd: nothing is written to the node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = 10.0
MAX_BODY = 16 * 1024 * 1024


class KubeconfigError(Exception):
    """The kubeconfig is missing or cannot be used; the message says why."""


class ApiUnreachable(Exception):
    """No HTTP answer: connection refused, TLS failure, timeout."""


class ApiStatus(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message", "") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"HTTP {status}: {message}".rstrip(": "))
        self.status, self.body = status, body


@dataclass(frozen=True)
class Kubeconfig:
    path: str
    host: str
    port: int
    ca: bytes | None  # PEM; None: the system's CAs
    cert: tuple[str, bytes] | None  # ("file", path) or ("data", PEM)
    key: tuple[str, bytes] | None
    token: str | None
    token_file: str | None
    insecure: bool = False


def _parse(text: str, path: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml  # Debian's python3-yaml: only YAML kubeconfigs need it
        except ImportError as err:
            raise KubeconfigError(f"{path} is YAML and python3-yaml is not installed") from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise KubeconfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise KubeconfigError(f"{path} is not a kubeconfig (no mapping at the top)")
    return data


def _named(items: Any, name: str, what: str, path: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(what), dict):
            return item[what]
    raise KubeconfigError(f"{path}: no {what} named {name!r}")


def _material(entry: dict[str, Any], key: str, base: Path) -> tuple[str, bytes] | None:
    if entry.get(f"{key}-data"):
        return ("data", base64.b64decode(entry[f"{key}-data"]))
    if entry.get(key):
        return ("file", str(base / entry[key]).encode())
    return None


def load_kubeconfig(path: str) -> Kubeconfig:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {err.strerror or err}") from err
    data = _parse(text, path)
    try:
        context = _named(data.get("contexts"), data.get("current-context", ""), "context", path)
        cluster = _named(data.get("clusters"), context.get("cluster", ""), "cluster", path)
        user = _named(data.get("users"), context.get("user", ""), "user", path)
        server = urlsplit(str(cluster["server"]))
    except (KeyError, TypeError, ValueError) as err:
        raise KubeconfigError(f"{path}: incomplete kubeconfig ({err})") from err
    if server.scheme != "https" or not server.hostname:
        raise KubeconfigError(f"{path}: server must be https://HOST[:PORT], not {cluster.get('server')!r}")
    base = Path(path).parent
    ca = _material(cluster, "certificate-authority", base)
    try:
        ca_pem = None if ca is None else (ca[1] if ca[0] == "data" else Path(ca[1].decode()).read_bytes())
    except OSError as err:
        raise KubeconfigError(f"{path}: cannot read the CA file: {err}") from err
    token_file = user.get("tokenFile")
    return Kubeconfig(path, server.hostname, server.port or 443, ca_pem,
                      _material(user, "client-certificate", base), _material(user, "client-key", base),
                      user.get("token"), str(base / token_file) if token_file else None,
                      bool(cluster.get("insecure-skip-tls-verify")))


def _as_path(material: tuple[str, bytes], keep: list[int]) -> str:
    if material[0] == "file":
        return material[1].decode()
    fd = os.memfd_create("nodemedic-kube-cred", os.MFD_CLOEXEC)
    os.write(fd, material[1])
    keep.append(fd)
    return f"/proc/self/fd/{fd}"


def ssl_context(config: Kubeconfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    # Python >= 3.13 verifies strictly (RFC 5280: e.g. a CA without keyUsage is refused). Go's
    # TLS, which the kubelet and kubectl use with the same kubeconfig, does not: what works for
    # them must work here. Hostname and chain are still verified.
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    if config.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif config.ca is not None:
        ctx.load_verify_locations(cadata=config.ca.decode())
    if config.cert is not None:
        fds: list[int] = []
        try:
            cert = _as_path(config.cert, fds)
            key = _as_path(config.key, fds) if config.key is not None else None
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as err:
            raise KubeconfigError(f"{config.path}: cannot load the client certificate: {err}") from err
        finally:
            for fd in fds:
                os.close(fd)
    return ctx


class Api:
    """One request per connection (Connection: close): a handful of calls a minute at most, and
    no idle connection to keep alive, so nothing wakes the process between them."""

    def __init__(self, config: Kubeconfig) -> None:
        self.config = config
        self._ctx: ssl.SSLContext | None = None
        self._ctx_at = 0.0

    def _context(self) -> ssl.SSLContext:
        # Re-read hourly: the kubelet rotates its client certificate in place.
        if self._ctx is None or time.monotonic() - self._ctx_at > 3600:
            self._ctx = ssl_context(self.config)
            self._ctx_at = time.monotonic()
        return self._ctx

    def _auth(self) -> dict[str, str]:
        token = self.config.token
        if self.config.token_file:
            try:
                token = Path(self.config.token_file).read_text().strip()
            except OSError as err:
                raise KubeconfigError(f"cannot read token file {self.config.token_file}: {err}") from err
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json", timeout: float = TIMEOUT) -> Any:
        """The parsed JSON answer; ApiStatus for an error status, ApiUnreachable without one."""
        try:
            return await asyncio.wait_for(self._request(method, path, body, content_type), timeout)
        except TimeoutError as err:
            raise ApiUnreachable(f"no answer from {self.config.host}:{self.config.port} in {timeout:.0f}s") from err
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as err:
            raise ApiUnreachable(f"{self.config.host}:{self.config.port}: {err or type(err).__name__}") from err

    async def _open(self, method: str, path: str, body: Any, content_type: str
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict[str, str]]:
        """Send one request; the connection, the status and the headers of the answer."""
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Host": f"{self.config.host}:{self.config.port}", "Accept": "application/json",
                   "User-Agent": "nodemedic-kube", "Connection": "close", **self._auth()}
        if body is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(len(data))
        reader, writer = await asyncio.open_connection(self.config.host, self.config.port, ssl=self._context(),
                                                       server_hostname=self.config.host)
        try:
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(head.encode() + b"\r\n" + data)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
            got: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                got[name.strip().lower()] = value.strip()
        except BaseException:
            await _close(writer)
            raise
        return reader, writer, int(parts[1]), got

    async def _request(self, method: str, path: str, body: Any, content_type: str) -> Any:
        reader, writer, status, got = await self._open(method, path, body, content_type)
        try:
            raw = await _body(reader, got)
        finally:
            await _close(writer)
        return _parsed(status, raw)

    async def watch(self, path: str, timeout: float = TIMEOUT) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch (`path` carries ?watch=1&resourceVersion=...), one JSON object a
        line, until the server ends it (its timeoutSeconds) or the connection breaks
        (ApiUnreachable). Only the answer's head has `timeout`: a watch is quiet while nothing
        changes, and waiting on its socket costs no wake-up."""
        try:
            reader, writer, status, got = await asyncio.wait_for(self._open("GET", path, None, ""), timeout)
        except TimeoutError as err:
            raise ApiUnreachable(f"no answer from {self.config.host}:{self.config.port} in {timeout:.0f}s") from err
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as err:
            raise ApiUnreachable(f"{self.config.host}:{self.config.port}: {err or type(err).__name__}") from err
        try:
            if status >= 400:
                _parsed(status, await asyncio.wait_for(_body(reader, got), timeout))
            chunked = got.get("transfer-encoding", "").lower() == "chunked"
            pending = b""
            while True:
                if chunked:
                    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        return
                    data = await reader.readexactly(size)
                    await reader.readline()
                else:
                    data = await reader.read(65536)
                    if not data:
                        return
                pending += data
                if len(pending) > MAX_BODY:
                    raise ValueError("watch event too large")
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as err:
            raise ApiUnreachable(f"{self.config.host}:{self.config.port}: watch ended: "
                                 f"{err or type(err).__name__}") from err
        finally:
            await _close(writer)

    # -- the calls ---------------------------------------------------------------------------

    async def node(self, name: str) -> dict[str, Any]:
        return await self.request("GET", f"/api/v1/nodes/{name}")

    async def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", f"/api/v1/nodes/{name}/status", patch,
                                  "application/strategic-merge-patch+json")

    async def create_event(self, event: dict[str, Any]) -> Any:
        ns = event["metadata"]["namespace"]
        return await self.request("POST", f"/api/v1/namespaces/{ns}/events", event)

    async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> Any:
        return await self.request("PATCH", f"/api/v1/namespaces/{namespace}/events/{name}", patch,
                                  "application/strategic-merge-patch+json")

    async def can_i(self, attributes: dict[str, str]) -> tuple[bool, str]:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": attributes}}
        answer = await self.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
        status = answer.get("status", {})
        return bool(status.get("allowed")), str(status.get("reason", "") or status.get("evaluationError", ""))


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


def _parsed(status: int, raw: bytes) -> Any:
    """The answer's JSON (or text); ApiStatus for an error status."""
    try:
        parsed: Any = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        parsed = raw.decode(errors="replace")
    if status >= 400:
        raise ApiStatus(status, parsed)
    return parsed


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readline()
            if len(out) > MAX_BODY:
                raise ValueError("answer too large")
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read(MAX_BODY)
