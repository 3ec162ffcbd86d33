"""pytest fixtures for the test bed's Kubernetes (imported by tests/node/conftest.py).

- `kube_binaries` (session): kube-apiserver, kubelet and kubectl 1.20.2, built from Debian's
  source package on first use and then taken from the cache (testbed/kube.py). Any test that
  needs the control plane or a real kubelet pulls it in, so `./dev test` builds them once.
- `control_plane` (module): etcd + kube-apiserver in a network namespace of their own
  (testbed/kube_cp.py): `.admin()` client, `.node_identity(name)` / `.client(identity)`,
  `.kubectl(...)`, `.stop_apiserver()` / `.start_apiserver()` / `.restart_apiserver()`,
  `.attach(node)`. The API server is https://10.250.0.1:6443 inside that namespace.
- `kubelet` (module): the module's `node` running the real kubelet (testbed/kube_node.py),
  registered with `control_plane` and seen Ready; removed (stand-in back) at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import kube
from .kube_cp import ControlPlane
from .kube_node import Kubelet, install_kubelet
from .node import Node


@pytest.fixture(scope="session")
def kube_binaries() -> Path:
    return kube.ensure_kube() / "bin"


@pytest.fixture(scope="module")
def control_plane(kube_binaries: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane().start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def kubelet(node: Node, control_plane: ControlPlane) -> Iterator[Kubelet]:
    k = install_kubelet(node, control_plane)
    try:
        k.wait_ready()
        yield k
    finally:
        k.remove()
