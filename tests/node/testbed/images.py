"""Container images the offline node can run: built here from files already in the node, imported
with `ctr images import`, never pulled.

`pause_standin()` is a local stand-in for the pause image (registry.k8s.io/pause), which CRI
RunPodSandbox needs for every pod sandbox: one layer holding Debian's static busybox (package
busybox-static in the node image), entrypoint `busybox sleep` for ever. It is not the pause
binary — it reaps no zombies and ignores SIGTERM (PID 1 with no handler); containerd stops a
sandbox container with SIGKILL anyway. It carries its own honest name; containerd is pointed at
it with `sandbox_image` (testbed/pods.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

from .node import Node

NAMESPACE = "k8s.io"  # CRI's containerd namespace
PAUSE_STANDIN = "localhost/nodemedic-testbed/pause-standin:1"
BUSYBOX = "/bin/busybox"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CRI_TABLE = '[plugins."io.containerd.grpc.v1.cri"]'

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


def _tar(members: dict[str, tuple[bytes, int]]) -> bytes:
    """A reproducible tar (fixed mtime/owner) of name -> (content, mode); parents created."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(members):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            data, mode = members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass(frozen=True)
class OciImage:
    """The blobs of a one-layer image; the manifest names the config and the layer by digest."""

    layer: Blob
    config: Blob
    manifest: Blob

    @property
    def blobs(self) -> tuple[Blob, Blob, Blob]:
        return (self.layer, self.config, self.manifest)


def oci_image(files: dict[str, tuple[bytes, int]], entrypoint: list[str]) -> OciImage:
    """A linux/amd64 image with one uncompressed layer holding `files` (name -> (content, mode)).
    Shared by `ctr images import` archives and the registry stand-in (testbed/registry.py)."""
    layer = Blob(OCI_LAYER, _tar(files))
    config = Blob(OCI_CONFIG, json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }, sort_keys=True).encode())
    manifest = Blob(OCI_MANIFEST, json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": config.descriptor(), "layers": [layer.descriptor()],
    }, sort_keys=True).encode())
    return OciImage(layer, config, manifest)


def oci_archive(name: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str]) -> bytes:
    """An OCI image layout tarball with one uncompressed layer, as `ctr images import` takes it;
    the annotation io.containerd.image.name gives the image its full name."""
    image = oci_image(files, entrypoint)
    manifest = image.manifest
    index = {"schemaVersion": 2, "manifests": [manifest.descriptor(
        platform={"architecture": "amd64", "os": "linux"},
        annotations={"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
    )]}
    members = {"oci-layout": (json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644),
               "index.json": (json.dumps(index, sort_keys=True).encode(), 0o644)}
    for blob in image.blobs:
        members[f"blobs/sha256/{blob.digest.removeprefix('sha256:')}"] = (blob.data, 0o644)
    return _tar(members)


def import_image(node: Node, archive: bytes, path: str) -> None:
    node.write_file(path, archive)
    try:
        node.run(["ctr", "-n", NAMESPACE, "images", "import", path], timeout=120)
    finally:
        node.run(["rm", "-f", "--", path])


def pause_standin(node: Node) -> str:
    """Import the pause stand-in into CRI's namespace (idempotent); returns its name."""
    busybox = node.read_file(BUSYBOX)
    archive = oci_archive(PAUSE_STANDIN, {"bin/busybox": (busybox, 0o755)},
                          ["/bin/busybox", "sleep", "2147483647"])
    import_image(node, archive, "/var/tmp/pause-standin.oci.tar")
    return PAUSE_STANDIN
