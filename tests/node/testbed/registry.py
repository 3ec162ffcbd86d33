"""A registry stand-in inside the node: just enough of the read side of the OCI distribution API
for containerd to pull an image over plain HTTP. It is not a registry: no push, no auth, no
catalog, no tag list, no content negotiation, one process, files under one directory.

    GET/HEAD /v2/                              200 {}
    GET/HEAD /v2/<name>/manifests/<tag|digest> the manifest, Content-Type = its mediaType
    GET/HEAD /v2/<name>/blobs/<digest>         the blob; a `Range: bytes=N-` gets 206 + Content-Range
    (a query string, such as the `?ns=<registry>` containerd sends a mirror, is ignored and logged)

every answer with Content-Length and, for content, Docker-Content-Digest (containerd resolves a
tag with HEAD and takes the digest from that header) — and Range, because containerd resumes a
partial download with `Range: bytes=<offset>-`.

A bad hop can be staged per blob, one shot: `Registry.stall_once(blob, sent)` makes the next full
GET of that blob announce the blob's real length, send `sent` — bytes that are not the blob's —
and then send nothing more while holding the connection open, as a broken proxy in the path
does. Range requests are always answered from the real blob: the stand-in itself is healthy.

This file runs in two places. In the node it is the server, on the node's own python3 and the
standard library only (`python3 registry.py ROOT HOST:PORT`). On the host, `Registry` publishes
images into ROOT and runs the server as a transient unit through `Node.run` (argv lists).
Every request is logged to the unit's journal (method, path, Range, status).
"""

from __future__ import annotations

import http.server
import json
import re
import select
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # host side only; in the node this file runs alone
    from .images import Blob, OciImage
    from .node import Node

UNIT = "nmtest-registry.service"
LISTEN = "127.0.0.1:5000"
# How images are named. containerd 1.6.20's and 1.7.24's CRI pull from a `localhost` registry over
# plain HTTP with Debian's stock config (no mirrors, no config_path): nothing to configure.
# containerd 2.1.9 speaks TLS to it ("tls: first record does not look like a TLS handshake") and its
# stock config_path is '': there the stand-in is declared plain HTTP the current way, a hosts.toml
# under /etc/containerd/certs.d plus config_path, for as long as it runs (`start`/`stop`).
HOST = "localhost:5000"
CERTS_D = "/etc/containerd/certs.d"
HOSTS_TOML = f"{CERTS_D}/{HOST}/hosts.toml"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
HOSTS_TEXT = f'server = "http://{HOST}"\n\n[host."http://{HOST}"]\n  capabilities = ["pull", "resolve"]\n'
# config_path in the file's own version: 2 (what Debian ships, also with containerd 2.x) or 3.
CONFIG_PATH_V2 = f'\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{CERTS_D}"\n'
CONFIG_PATH_V3 = f"\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = \"{CERTS_D}\"\n"
ROOT = "/var/lib/nmtest-registry"  # in the node
SCRIPT = "/usr/local/lib/nmtest/registry.py"
STALL_MAX = 300.0  # seconds a stalled transfer is held open at most
NODE_SYSTEM_PYTHON = "/usr/bin/python3"  # the stand-in needs nothing beyond the standard library

_NAME = r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
_ROUTE = re.compile(rf"^/v2/(?P<name>{_NAME})/(?P<kind>manifests|blobs)/(?P<ref>[\w.:-]{{1,128}})$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


# ---- the server (in the node) ---------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """ROOT/blobs/sha256/<hex>, ROOT/repos/<name>/tags/<tag> (a digest), ROOT/stall/<hex> (a staged bad hop)."""

    server_version = "nmtest-registry-standin/1"
    protocol_version = "HTTP/1.1"  # keep-alive, like a real registry
    root: Path

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        # One line per request on stderr, i.e. in the unit's journal. A request http.server could not
        # parse has no path or headers yet: containerd 2.x tries TLS first, even for localhost, and
        # falls back to plain HTTP only when it gets an HTTP answer (this 400) to its ClientHello.
        headers = getattr(self, "headers", None)
        rng = headers.get("Range", "-") if headers is not None else "-"
        command, path = getattr(self, "command", None), getattr(self, "path", None)
        sys.stderr.write(f"{command} {path} range={rng} {format % args}\n")

    def _send(self, status: int, headers: dict[str, str], body: bytes, send_body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, send_body: bool) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message, "detail": self.path}]}).encode()
        self._send(status, {"Content-Type": "application/json"}, body, send_body)

    def _serve(self, body: bool) -> None:
        # A query is ignored, as a registry does, but logged: containerd names the registry a
        # mirror stands in for with `?ns=<registry>`.
        path = self.path.split("?", 1)[0]
        if path in ("/v2/", "/v2"):
            self._send(200, {"Content-Type": "application/json"}, b"{}", body)
            return
        route = _ROUTE.match(path)
        if not route:
            self._error(404, "NAME_UNKNOWN", "not served by this stand-in", body)
            return
        name, kind, ref = route["name"], route["kind"], route["ref"]
        if not _DIGEST.match(ref):
            tag = self.root / "repos" / name / "tags" / ref
            ref = tag.read_text().strip() if kind == "manifests" and tag.is_file() else ""
        blob = self.root / "blobs" / "sha256" / ref.removeprefix("sha256:") if ref else None
        if blob is None or not blob.is_file():
            unknown = "MANIFEST_UNKNOWN" if kind == "manifests" else "BLOB_UNKNOWN"
            self._error(404, unknown, f"{kind[:-1]} unknown", body)
            return
        data = blob.read_bytes()
        if kind == "manifests":
            media_type = json.loads(data)["mediaType"]
        else:
            media_type = "application/octet-stream"
        headers = {"Content-Type": media_type, "Docker-Content-Digest": ref}
        staged = self.root / "stall" / blob.name
        wanted = _RANGE.match(self.headers.get("Range", ""))
        if body and kind == "blobs" and not wanted and staged.is_file():
            self._stall(staged, headers, len(data))
            return
        if wanted and kind == "blobs":
            start = int(wanted[1])
            end = int(wanted[2]) if wanted[2] else len(data) - 1
            if start >= len(data) or end < start:
                self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", body)
                return
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, headers, data[start:end + 1], body)
            return
        self._send(200, headers, data, body)

    def _stall(self, staged: Path, headers: dict[str, str], size: int) -> None:
        """The staged bad hop: the real length announced, other bytes sent, then nothing more
        until the client gives up and closes the connection (bounded, so the unit can stop)."""
        sent = staged.read_bytes()
        staged.unlink()  # one shot
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()
        self.close_connection = True
        sys.stderr.write(f"stalled {self.path} after {len(sent)} of {size} bytes\n")
        sys.stderr.flush()
        deadline = time.monotonic() + STALL_MAX
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 1.0)
            if readable and not self.connection.recv(4096):
                sys.stderr.write(f"client gave up on {self.path}\n")
                return


def serve(root: str, listen: str) -> None:
    host, port = listen.rsplit(":", 1)
    handler = type("Handler", (_Handler,), {"root": Path(root)})
    with http.server.ThreadingHTTPServer((host, int(port)), handler) as server:
        sys.stderr.write(f"registry stand-in serving {root} on {listen}\n")
        sys.stderr.flush()
        server.serve_forever()


# ---- the host side --------------------------------------------------------------------------------


class Registry:
    """The stand-in in one node: publish images, stage a bad hop, start and stop its unit."""

    _config: bytes | None = None  # containerd's config as it was before `start` (2.x only)

    def __init__(self, node: Node, root: str = ROOT, listen: str = LISTEN, unit: str = UNIT) -> None:
        self.node, self.root, self.listen, self.unit = node, root, listen, unit

    def publish(self, name: str, tag: str, image: OciImage) -> str:
        """Serve `image` as HOST/name:tag; returns that reference."""
        for blob in image.blobs:
            self.node.write_file(self._blob_path(blob.digest), blob.data)
        self.node.write_file(f"{self.root}/repos/{name}/tags/{tag}", image.manifest.digest)
        return f"{HOST}/{name}:{tag}"

    def stall_once(self, blob: Blob, sent: bytes) -> None:
        """The next full GET of `blob` gets `sent` (fewer bytes than the blob, not its own), then stalls."""
        if len(sent) >= len(blob.data):
            raise ValueError("a stalled transfer sends fewer bytes than the blob has")
        self.node.write_file(f"{self.root}/stall/{blob.digest.removeprefix('sha256:')}", sent)

    def _needs_hosts_toml(self) -> bool:
        return self.node.stack.expect["containerd"].startswith("2.")

    def _restart_containerd(self) -> None:
        # The bed's own restarts must not use up the unit's start limit (5 in 10 s) that the
        # tests' restarts count against.
        self.node.systemctl("reset-failed", "containerd", check=False)
        self.node.systemctl("restart", "containerd")
        self.node.wait_for(lambda: self.node.cri_status().runtime_ready, timeout=60, what="containerd back")

    def start(self) -> None:
        if self._needs_hosts_toml():
            import tomllib

            self._config = self.node.read_file(CONTAINERD_CONFIG)
            text = self._config.decode()
            assert "config_path" not in text and not self.node.exists(HOSTS_TOML), \
                "containerd's registry config is not the stock one any more"
            version = tomllib.loads(text).get("version", 1)
            self.node.write_file(HOSTS_TOML, HOSTS_TEXT)
            self.node.write_file(CONTAINERD_CONFIG, text + (CONFIG_PATH_V3 if version >= 3 else CONFIG_PATH_V2))
            self._restart_containerd()
        self.node.write_file(SCRIPT, Path(__file__).read_bytes())
        self.node.run(["systemd-run", "--quiet", f"--unit={self.unit}", "--property=Restart=no",
                       NODE_SYSTEM_PYTHON, SCRIPT, self.root, self.listen])
        self.node.wait_for(self._answers, what=f"{self.unit} answering on {self.listen}")

    def stop(self) -> None:
        self.node.systemctl("stop", self.unit, check=False)
        self.node.systemctl("reset-failed", self.unit, check=False)
        self.node.run(["rm", "-rf", "--", self.root, SCRIPT])
        if getattr(self, "_config", None) is not None:
            self.node.run(["rm", "-rf", "--", f"{CERTS_D}/{HOST}"])
            self.node.run(["rmdir", "--ignore-fail-on-non-empty", CERTS_D])
            self.node.write_file(CONTAINERD_CONFIG, self._config)
            self._config = None
            self._restart_containerd()

    def requests(self, since: str | None = None) -> list[str]:
        """The stand-in's request log (its unit's journal)."""
        return self.node.messages(unit=self.unit, since=since)

    def _answers(self) -> bool:
        probe = ("import sys, urllib.request; "
                 "sys.exit(urllib.request.urlopen(sys.argv[1], timeout=2).status != 200)")
        return self.node.run([NODE_SYSTEM_PYTHON, "-c", probe, f"http://{self.listen}/v2/"],
                             check=False).returncode == 0

    def _blob_path(self, digest: str) -> str:
        return f"{self.root}/blobs/sha256/{digest.removeprefix('sha256:')}"


if __name__ == "__main__":
    serve(*sys.argv[1:3])
