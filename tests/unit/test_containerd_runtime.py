"""containerd 2.x as the CRI probe, doctor and the imagefs check see it, against a CRI stand-in
(cri_standin.py: a real gRPC server answering with the messages containerd 2.x sends)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from nodemedic.config import load_config
from nodemedic.hostroot import HostRoot
from nodemedic.probes.containerd_info import release
from nodemedic.probes.cri import CriClient
from nodemedic.repairs import imagefs
from nodemedic.repairs.context import RepairContext
from nodemedic.safety import Guard
from nodemedic.sources.systemd_bus import SystemdBus
from nodemedic.state import EngineState
from tests.unit.cri_standin import Answers, CriStandin
from tests.unit.helpers import run_cli, write

CONFIGS = Path(__file__).parent / "containerd_configs"
SOCKET = "run/containerd/containerd.sock"
MIRRORS = {"io.containerd.deprecation/cri-registry-mirrors": "The `mirrors` property of "
           "`[plugins.\"io.containerd.grpc.v1.cri\".registry]` is deprecated since containerd v1.5 and will be "
           "removed in containerd v2.3. Use `config_path` instead."}


def doctor(capsys: pytest.CaptureFixture[str], root: Path) -> dict:
    _, out, _ = run_cli(capsys, "--root", str(root), "doctor", "--json")
    return json.loads(out)


def checks(data: dict) -> dict[str, dict]:
    return {f["check"]: f for f in data["findings"]}


def test_doctor_json_names_version_config_version_and_deprecations(tmp_path: Path, capsys) -> None:
    write(tmp_path, "/etc/containerd/config.toml", (CONFIGS / "debian-2.1.9+ds1-5.toml").read_text())
    with CriStandin(tmp_path / SOCKET, Answers(version="v2.1.9", deprecations=MIRRORS)):
        data = doctor(capsys, tmp_path)
    ctd = data["containerd"]
    assert ctd["version"] == "v2.1.9" and ctd["api_version"] == "v1"
    assert ctd["config_version"] == 2 and ctd["config_path"] == "/etc/containerd/config.toml"
    assert ctd["deprecations"] == MIRRORS
    assert "migrates this version 2 file" in ctd["config_note"]
    found = checks(data)
    assert found["containerd config"]["ok"] and "containerd v2.1.9" in found["containerd config"]["detail"]
    assert "io.containerd.deprecation/cri-registry-mirrors: The `mirrors`" in found["containerd deprecations"]["detail"]


def test_doctor_without_deprecation_condition_or_runtime_config(tmp_path: Path, capsys) -> None:
    # containerd 1.x: no ContainerdHasNoDeprecationWarnings condition, RuntimeConfig UNIMPLEMENTED.
    write(tmp_path, "/etc/containerd/config.toml", (CONFIGS / "default-1.6.20.toml").read_text())
    with CriStandin(tmp_path / SOCKET, Answers(version="1.6.20~ds1", deprecations=None, cgroup_driver=None)):
        data = doctor(capsys, tmp_path)
    assert data["containerd"]["deprecations"] is None and data["containerd"]["cgroup_driver"] is None
    assert "containerd deprecations" not in checks(data)
    assert "does not answer RuntimeConfig" in checks(data)["cgroup driver"]["detail"]


def test_v3_config_on_containerd_1_is_reported(tmp_path: Path, capsys) -> None:
    write(tmp_path, "/etc/containerd/config.toml", (CONFIGS / "default-2.1.9.toml").read_text())
    with CriStandin(tmp_path / SOCKET, Answers(version="1.7.24~ds1", cgroup_driver=None)):
        found = checks(doctor(capsys, tmp_path))
    assert not found["containerd config"]["ok"]
    assert "does not read config version 3" in found["containerd config"]["detail"]


KUBELET_SYSTEMD = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n"
RUNC_CGROUPFS = {"containerd": {"runtimes": {"runc": {"options": {"SystemdCgroup": False}}}}}


def test_cgroup_mismatch_is_a_problem_only_where_kubelet_cannot_ask_the_runtime(tmp_path: Path, capsys) -> None:
    write(tmp_path, "/var/lib/kubelet/config.yaml", KUBELET_SYSTEMD)
    with CriStandin(tmp_path / SOCKET, Answers(version="1.7.24", cgroup_driver=None, config=RUNC_CGROUPFS)):
        before = checks(doctor(capsys, tmp_path))["cgroup driver"]
    assert not before["ok"] and before["problem"] == "cgroup-driver-mismatch"
    assert before["plan"][0] == "step 1: containerd-systemd-cgroup (safe)"
    with CriStandin(tmp_path / SOCKET, Answers(version="v2.1.9", cgroup_driver="cgroupfs", config=RUNC_CGROUPFS)):
        after = checks(doctor(capsys, tmp_path))["cgroup driver"]
    assert after["ok"] and not after["problem"]
    assert "reports cgroup driver cgroupfs (RuntimeConfig)" in after["detail"]
    assert "(systemd, which differs: such a kubelet would mismatch)" in after["detail"]


def test_cni_conf_dir_that_containerd_does_not_read_is_reported(tmp_path: Path, capsys) -> None:
    text = (CONFIGS / "default-2.1.9.toml").read_text().replace("conf_dir = '/etc/cni/net.d'",
                                                                  "conf_dir = '/etc/cni/custom.d'")
    write(tmp_path, "/etc/containerd/config.toml", text)
    with CriStandin(tmp_path / SOCKET, Answers()):
        found = checks(doctor(capsys, tmp_path))
    assert not found["CNI config dir"]["ok"]
    assert "plugins.io.containerd.cri.v1.runtime.cni.conf_dir" in found["CNI config dir"]["detail"]


def test_imagefs_takes_the_configured_snapshotters_entry(tmp_path: Path) -> None:
    # containerd 2.x: one entry per snapshotter holding snapshots. A second snapshotter whose
    # directory cannot be stat'ed is not the image filesystem kubelet sizes.
    write(tmp_path, "/etc/containerd/config.toml", (CONFIGS / "default-2.1.9.toml").read_text())
    overlay = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"
    (tmp_path / overlay.lstrip("/")).mkdir(parents=True)
    entries = ["/var/lib/containerd/io.containerd.snapshotter.v1.native", overlay]
    root = HostRoot(tmp_path)
    settings = load_config(root, lambda _msg: None).settings

    async def problem() -> str:
        async with CriClient(str(tmp_path / SOCKET)) as cri:
            ctx = RepairContext(settings, root, Guard.from_paths([]), SystemdBus(), cri, EngineState())
            return await imagefs.imagefs_problem(ctx)

    with CriStandin(tmp_path / SOCKET, Answers(imagefs=entries)):
        assert asyncio.run(problem()) == ""
    with CriStandin(tmp_path / SOCKET, Answers(imagefs=list(reversed(entries)))):
        assert asyncio.run(problem()) == ""
    # The configured snapshotter's own directory missing is still the problem.
    (tmp_path / overlay.lstrip("/")).rmdir()
    with CriStandin(tmp_path / SOCKET, Answers(imagefs=entries)):
        assert asyncio.run(problem()) == f"statvfs of {overlay} fails"


@pytest.mark.parametrize(("text", "expected"), [("v2.1.9", (2, 1)), ("2.1.9+unknown", (2, 1)),
                                                 ("1.6.20~ds1", (1, 6)), ("1.7.24~ds1-6", (1, 7)), ("", None)])
def test_release(text: str, expected: tuple[int, int] | None) -> None:
    assert release(text) == expected


def test_snapshot_links_are_checked_in_the_configured_snapshotter(tmp_path: Path, capsys) -> None:
    # config version 3 names the snapshotter under the images plugin: a dangling link in the
    # native snapshotter's tree is found there, not in overlayfs'.
    text = (CONFIGS / "default-2.1.9.toml").read_text().replace("snapshotter = 'overlayfs'", "snapshotter = 'native'")
    write(tmp_path, "/etc/containerd/config.toml", text)
    snapshots = tmp_path / "var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / "7").symlink_to("/gone/7")
    found = checks(doctor(capsys, tmp_path))["containerd snapshots"]
    assert not found["ok"] and "io.containerd.snapshotter.v1.native/snapshots/7 -> /gone/7" in found["detail"]
