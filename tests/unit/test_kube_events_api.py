"""The cluster side's kubeconfig reading (nodemedic/kube/api.py): bad input is a clear error."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from nodemedic.kube.api import KubeconfigError, load_kubeconfig


def config(server: str = "https://10.0.0.1:6443", **user: str) -> dict:
    return {"apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": server,
                                                   "certificate-authority-data": base64.b64encode(b"PEM").decode()}}],
            "users": [{"name": "u", "user": user or {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}


def test_json_kubeconfig(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text(json.dumps(config(**{"client-certificate": "pki/c.pem", "client-key": "pki/k.pem"})))
    kc = load_kubeconfig(str(path))
    assert (kc.host, kc.port, kc.ca) == ("10.0.0.1", 6443, b"PEM")
    assert kc.cert == ("file", str(tmp_path / "pki/c.pem").encode())  # relative to the kubeconfig


def test_yaml_kubeconfig(tmp_path: Path) -> None:
    # python3-yaml: a Depends of the package, seen by the dev venv through system site packages.
    path = tmp_path / "kc"
    path.write_text("apiVersion: v1\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n"
                    "    server: https://api.example:443\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\n"
                    "users:\n- name: u\n  user: {token: t}\n")
    kc = load_kubeconfig(str(path))
    assert (kc.host, kc.port, kc.token, kc.ca) == ("api.example", 443, "t", None)


@pytest.mark.parametrize("text, says", [
    (None, "cannot read kubeconfig"),
    ("[1, 2]", "not a kubeconfig"),
    (json.dumps(config(server="http://10.0.0.1")), "server must be https"),
    (json.dumps({**config(), "current-context": "nope"}), "no context named 'nope'"),
])
def test_broken_kubeconfig_is_a_clear_error(tmp_path: Path, text: str | None, says: str) -> None:
    path = tmp_path / "kc"
    if text is not None:
        path.write_text(text)
    with pytest.raises(KubeconfigError, match=says):
        load_kubeconfig(str(path))
