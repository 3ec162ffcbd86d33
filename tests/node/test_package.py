"""The Debian package, from `make deb` to `apt-get purge`, in a booted node of every stack (issue 6's
and issue 13's "done when").

On each stack the .deb for the node's Debian release is built (`make deb SUITE=<suite>`, in a
clean build root of that suite) from the working tree, twice: <upstream>~deb<N>u1 and, for the
upgrade, ~deb<N>u2. That suite's lintian checks it, in its build root. The node boots from the
test bed image with the image's own nodemedic runtime (/opt/venvs) removed, so the package must
bring everything; the node has no network (--private-network), so nothing can come from PyPI or
the Debian archive at install time: every dependency must already be satisfied by the node's
own release.

The tests run in file order and share one node per stack: install, sandbox at work (a fault
healed, verified over CRI), doctor, reload, upgrade, remove, purge. A failure leaves the later
ones failing too, loudly; nothing is ever skipped.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodemedic.journal import Kind
from tests.node.testbed import faults
from tests.node.testbed.node import Node, boot_node
from tests.node.testbed.stacks import Stack

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2", "forky")]

REPO = Path(__file__).resolve().parents[2]
MAX_EXPOSURE = 3.0
CONFFILE = "/etc/nodemedic/nodemedic.toml"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
DROP_IN = "/etc/nodemedic/conf.d/50-test.toml"
PLACEHOLDER = f"{faults.CNI_CONF_DIR}/zz-nodemedic-placeholder.conflist"
TEST_CONFIG = '[cni]\nplaceholder = "{placeholder}"\n[policy]\ncooldown = "1s"\n'
# What the tests learn on the way and check at the end (one node, one lifecycle).
SEEN: dict[str, object] = {}


# ---- building ------------------------------------------------------------------------------------


MAKE = ["make", "--no-print-directory", "-C", str(REPO)]
REVS = {"v1": "1", "v2": "2"}


class DebBuilds:
    """The .debs of each suite, built on first use: {"v1": ~deb<N>u1, "v2": ~deb<N>u2}, and the
    directory they are in (for `make lintian DIST=...`)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.built: dict[str, dict[str, Path]] = {}

    def dist(self, suite: str) -> Path:
        return self.out / suite

    def __call__(self, suite: str) -> dict[str, Path]:
        if suite not in self.built:
            self.built[suite] = self._build(suite)
        return self.built[suite]

    def _build(self, suite: str) -> dict[str, Path]:
        dist = self.dist(suite)
        dist.mkdir(parents=True, exist_ok=True)
        # Wheels first (downloaded once into dist/wheels/cp3X), the build root (made once, cached),
        # then both builds side by side.
        for target in ("wheels", "buildroot"):
            cp = subprocess.run([*MAKE, target, f"SUITE={suite}"], capture_output=True, text=True, timeout=1800)
            if cp.returncode != 0:
                raise RuntimeError(f"make {target} SUITE={suite} failed:\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
        versions = {key: subprocess.run([*MAKE, "-s", "version", f"SUITE={suite}"], capture_output=True, text=True,
                                        check=True, env={**os.environ, "NODEMEDIC_REV": rev}).stdout.strip()
                    for key, rev in REVS.items()}  # fmt: skip
        logs = {k: dist / f"build-{k}.log" for k in versions}
        procs = {}
        for key, rev in REVS.items():
            with open(logs[key], "wb") as log:
                procs[key] = subprocess.Popen([*MAKE, "deb", f"SUITE={suite}", f"DIST={dist}/{key}"], stdout=log,
                                              stderr=subprocess.STDOUT, env={**os.environ, "NODEMEDIC_REV": rev})
        for key, proc in procs.items():
            if proc.wait(timeout=1200) != 0:
                tail = logs[key].read_text(errors="replace")[-5000:]
                raise RuntimeError(f"make deb SUITE={suite} NODEMEDIC_REV={REVS[key]} failed:\n{tail}")
        result = {}
        for key, version in versions.items():
            built = dist / key / f"nodemedic_{version}_amd64.deb"
            assert built.is_file(), built
            result[key] = dist / built.name
            built.rename(result[key])
        return result


@pytest.fixture(scope="session")
def deb_builds(tmp_path_factory: pytest.TempPathFactory) -> DebBuilds:
    missing = [t for t in ("make", "dpkg-parsechangelog", "debootstrap", "systemd-nspawn") if not shutil.which(t)]
    if missing:
        raise RuntimeError(f"building the .deb needs {missing}: apt-get install make dpkg-dev debootstrap "
                           "systemd-container")
    return DebBuilds(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def debs(deb_builds: DebBuilds, stack: Stack) -> dict[str, Path]:
    return deb_builds(stack.suite)


def deb_paths(deb: Path) -> set[str]:
    """Every path in the .deb's data, as an absolute path."""
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    names = subprocess.run(["tar", "-t"], input=out, capture_output=True, check=True).stdout.decode().split("\n")
    return {posixpath.normpath("/" + n) for n in names if n.strip()} - {"/"}


# ---- the node ------------------------------------------------------------------------------------

_EXISTING = r"""
import json, os, sys
print(json.dumps(sorted(p for p in json.load(sys.stdin) if os.path.lexists(p))))
"""


def existing(node: Node, paths: set[str] | list[str]) -> set[str]:
    out = node.run(["python3", "-c", _EXISTING], input=json.dumps(sorted(paths))).stdout
    return set(json.loads(out))


@pytest.fixture(scope="module")
def pkg_node(request: pytest.FixtureRequest, debs: dict[str, Path], stack: Stack) -> Iterator[Node]:
    node = boot_node("nm-package", install=False, stack=stack)
    try:
        # The image carries a nodemedic runtime for the other node tests: the package must not
        # lean on it, so it goes (and with it /opt/venvs, which the package then owns). The
        # kubelet stand-in runs on that runtime and, starting at boot, writes __pycache__ into it
        # while rm walks it ("Directory not empty" in CI): it is stopped first, and stays stopped
        # (nothing here needs a kubelet, and without its runtime it could only crash-loop).
        node.systemctl("stop", "kubelet.service")
        node.run(["rm", "-rf", "--", "/opt/venvs"])
        for key, deb in debs.items():
            node.write_file(f"/var/tmp/{deb.name}", deb.read_bytes())
            SEEN[f"remote-{key}"] = f"/var/tmp/{deb.name}"
        SEEN["package-paths"] = deb_paths(debs["v1"]) | deb_paths(debs["v2"])
        SEEN["before-install"] = existing(node, SEEN["package-paths"])  # type: ignore[arg-type]
        yield node
    finally:
        if request.module.__dict__.get("_nodebed_failed"):
            for argv in (["systemctl", "status", "--no-pager", "nodemedic"],
                         ["journalctl", "--no-pager", "-n", "80", "-u", "nodemedic"],
                         ["ls", "-la", "/etc/nodemedic", "/etc/cni/net.d"]):  # fmt: skip
                print(f"===== {' '.join(argv)} =====\n{node.run(argv, check=False).stdout}", file=sys.stderr)
        node.stop()


def apt(node: Node, *args: str) -> str:
    cp = node.run(["apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args], env=APT_ENV, timeout=300)
    return cp.stdout + cp.stderr


def status_text(node: Node) -> str:
    return node.run(["systemctl", "show", "--property=StatusText", "--value", "nodemedic"]).stdout.strip()


def main_pid(node: Node) -> int:
    return node.unit_state("nodemedic.service").main_pid


def catalog_ids(node: Node) -> set[str]:
    out = node.run(["journalctl", "--list-catalog", "--no-pager"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# ---- lintian -------------------------------------------------------------------------------------


def test_lintian_of_the_suite_reports_no_error_and_no_warning(debs: dict[str, Path], deb_builds: DebBuilds,
                                                              stack: Stack) -> None:
    version = debs["v1"].name.split("_")[1]
    cp = subprocess.run([*MAKE, "lintian", f"SUITE={stack.suite}", f"DIST={deb_builds.dist(stack.suite)}",
                         f"NODEMEDIC_VERSION={version}"], capture_output=True, text=True, timeout=900)  # fmt: skip
    tags = [line for line in cp.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert cp.returncode == 0 and not tags, f"lintian (exit {cp.returncode}):\n{cp.stdout}\n{cp.stderr}"


def test_package_depends_on_the_suites_python(debs: dict[str, Path], stack: Stack) -> None:
    depends = subprocess.run(["dpkg-deb", "-f", str(debs["v1"]), "Depends"], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    major, minor = stack.python.split(".")
    assert f"python3 (>= {stack.python}), python3 (<< {major}.{int(minor) + 1})" in depends, depends
    number = {"bookworm": 12, "trixie": 13, "forky": 14}[stack.suite]
    assert debs["v1"].name.split("_")[1].endswith(f"~deb{number}u1"), debs["v1"].name


# ---- the lifecycle -------------------------------------------------------------------------------


def test_install_enables_and_starts_the_service(pkg_node: Node, stack: Stack) -> None:
    node = pkg_node
    log = apt(node, "install", "--no-install-recommends", str(SEEN["remote-v1"]))
    assert "nodemedic" in log
    node.wait_for(lambda: node.run(["systemctl", "is-active", "nodemedic"], check=False).stdout.strip() == "active",
                  timeout=60, what="nodemedic active")  # fmt: skip
    assert node.run(["systemctl", "is-enabled", "nodemedic"]).stdout.strip() == "enabled"
    node.wait_for(lambda: "signatures" in status_text(node), timeout=30, what="a STATUS= line")
    status = node.run(["systemctl", "status", "--no-pager", "nodemedic"], check=False).stdout
    assert re.search(r"^\s*Status: \"watching .*signatures", status, flags=re.M), status
    unit_dir = "/lib/systemd/system" if stack.suite == "bookworm" else "/usr/lib/systemd/system"
    assert re.search(rf"[ (]{unit_dir}/nodemedic\.service; enabled", status), status
    # The command, the configuration, the D-Bus API and its policy, all from the package.
    assert node.run(["nodemedic", "--version"]).stdout.strip().startswith("nodemedic ")
    assert "configuration valid" in node.run(["nodemedic", "check-config"]).stdout
    assert "mode: repair" in node.run(["nodemedic", "status"], check=False).stdout
    # The journal catalog was indexed (systemd's dpkg trigger on /usr/lib/systemd/catalog).
    assert Kind.STARTED.value in catalog_ids(node)
    # The postinst byte-compiled the venv; the prerm will remove that again.
    assert node.run(["find", "/opt/venvs/nodemedic", "-name", "*.pyc", "-print", "-quit"]).stdout.strip()
    SEEN["pid-v1"] = main_pid(node)


def test_sandbox_exposure_is_low_and_units_verify(pkg_node: Node) -> None:
    out = pkg_node.run(["systemd-analyze", "security", "--no-pager", "nodemedic.service"]).stdout
    match = re.search(r"Overall exposure level for nodemedic\.service: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= MAX_EXPOSURE, out
    pkg_node.run(["systemd-analyze", "verify", "--man=no", "nodemedic.service", "nodemedic-step@probe.service"])


def test_daemon_works_inside_its_sandbox(pkg_node: Node) -> None:
    """The hardened daemon (no capability, read-only system, no IP traffic, private user namespace)
    still sees a fault (inotify), confirms it (CRI over containerd's socket, grpcio under
    MemoryDenyWriteExecute), restarts containerd over D-Bus and writes into /etc/cni/net.d."""
    node = pkg_node
    node.write_file(DROP_IN, TEST_CONFIG.format(placeholder="never"))
    node.systemctl("reload", "nodemedic")
    since = node.cursor()
    fault = faults.empty_cni_dir(node)
    try:
        # No placeholder allowed: the ladder goes straight to restarting containerd over D-Bus.
        finished = node.wait_for(
            lambda: node.journal(message_id=Kind.STEP_FINISHED.value, since=since,
                                 fields={"NODEMEDIC_STEP": "restart-containerd"}),
            timeout=90, what="restart-containerd step finished")[0]  # fmt: skip
        assert finished.get("NODEMEDIC_DETAIL", "").startswith("restarted containerd.service"), finished
        # Now allow the placeholder and ask for the repair: nodemedic writes it into /etc/cni/net.d.
        node.write_file(DROP_IN, TEST_CONFIG.format(placeholder="always"))
        node.systemctl("reload", "nodemedic")
        node.wait_for(lambda: node.run(["nodemedic", "repair", "cni-config-missing"], check=False).returncode == 0,
                      timeout=30, what="nodemedic repair accepted")  # fmt: skip
        node.wait_for(lambda: node.exists(PLACEHOLDER), timeout=60, what="placeholder written by the sandboxed daemon")
        node.wait_for(lambda: node.cri_status().network_ready, timeout=60, what="NetworkReady with the placeholder")
    finally:
        fault.restore()
    # A real config is back: the daemon removes its placeholder (also a write in the sandbox).
    node.wait_for(lambda: not node.exists(PLACEHOLDER), timeout=60, what="placeholder removed for the real config")
    # The directory deleted and made again: writable paths are mount points pinned at start, so
    # the sandbox must not pin /etc/cni/net.d itself, or nodemedic would write into the old one.
    node.run(["rm", "-rf", "--", faults.CNI_CONF_DIR])
    node.run(["mkdir", "--", faults.CNI_CONF_DIR])
    try:
        node.wait_for(lambda: node.exists(PLACEHOLDER), timeout=60, what="placeholder in the re-created directory")
    finally:
        node.write_file(f"{faults.CNI_CONF_DIR}/{faults.CNI_CONF_NAME}", faults.cni_conflist())
        node.systemctl("restart", "containerd")  # its watch died with the old directory
        node.run(["rm", "-f", DROP_IN])
        node.systemctl("reload", "nodemedic")
    node.wait_for(lambda: not node.exists(PLACEHOLDER), timeout=60, what="placeholder removed again")
    node.wait_for(lambda: node.cri_status().network_ready, timeout=60, what="NetworkReady with the real config")


def test_doctor_and_status_name_containerd_its_config_version_and_deprecations(pkg_node: Node,
                                                                              stack: Stack) -> None:
    node = pkg_node
    data = json.loads(node.run(["nodemedic", "doctor", "--json"], check=False).stdout)
    ctd = data["containerd"]
    installed = node.run(["dpkg-query", "-W", "-f=${Version}", "containerd"]).stdout
    assert installed.startswith(stack.expect["containerd"]), installed
    # CRI Version answers with the upstream version ("1.7.24~ds1", "2.1.9+unknown", "v2.1.9").
    assert ctd["version"].lstrip("v").startswith(stack.expect["containerd"]), ctd
    assert ctd["config_version"] == 2, ctd  # Debian's packages ship a version 2 config.toml
    if stack.expect["containerd"].startswith("2."):
        assert ctd["deprecations"] is not None, ctd  # the condition exists from containerd 2.0
        assert ctd["cgroup_driver"] in ("systemd", "cgroupfs"), ctd  # RuntimeConfig from 2.0
        assert "migrates this version 2 file" in ctd["config_note"], ctd
    else:
        assert ctd["cgroup_driver"] is None, ctd
    SEEN[f"doctor-{stack.name}"] = ctd
    status = node.run(["nodemedic", "status"], check=False).stdout
    assert re.search(rf"^containerd: v?{re.escape(stack.expect['containerd'])}\S*, /etc/containerd/config.toml "
                     r"config version 2$", status, flags=re.M), status


def test_reload_after_a_drop_in_changes_behaviour(pkg_node: Node) -> None:
    node = pkg_node
    assert "observe mode" not in status_text(node)
    pid = main_pid(node)
    node.write_file("/etc/nodemedic/conf.d/60-observe.toml", '[daemon]\nmode = "observe"\n')
    node.systemctl("reload", "nodemedic")
    node.wait_for(lambda: "observe mode" in status_text(node), timeout=30, what="STATUS saying observe mode")
    assert "mode: observe" in node.run(["nodemedic", "status"], check=False).stdout
    assert main_pid(node) == pid, "a reload must not restart the daemon"
    node.run(["rm", "-f", "/etc/nodemedic/conf.d/60-observe.toml"])
    node.systemctl("reload", "nodemedic")
    node.wait_for(lambda: "observe mode" not in status_text(node), timeout=30, what="STATUS back to repair mode")


def test_upgrade_keeps_the_edited_conffile_and_restarts(pkg_node: Node) -> None:
    node = pkg_node
    text = node.read_file(CONFFILE).decode()
    assert "#batch_size = 500\n" in text
    edited = text.replace("#batch_size = 500\n", "batch_size = 400\n")
    node.write_file(CONFFILE, edited)
    node.systemctl("reload", "nodemedic")
    pid = main_pid(node)
    apt(node, "install", "--no-install-recommends", str(SEEN["remote-v2"]))
    version = node.run(["dpkg-query", "-W", "-f=${Version}", "nodemedic"]).stdout
    assert version == SEEN["remote-v2"].split("_")[1], version  # type: ignore[union-attr]
    assert node.read_file(CONFFILE).decode() == edited
    assert not node.run(["find", "/etc/nodemedic", "-name", "*.dpkg-*"]).stdout.strip()
    node.wait_for(lambda: node.run(["systemctl", "is-active", "nodemedic"], check=False).stdout.strip() == "active",
                  timeout=60, what="nodemedic active after the upgrade")  # fmt: skip
    assert main_pid(node) != pid, "the upgrade restarts the daemon"
    origins = node.run(["nodemedic", "config", "show", "--origins"]).stdout
    assert re.search(rf"^journal\.batch_size = 400\s+# {re.escape(CONFFILE)}:\d+$", origins, flags=re.M), origins
    listed = node.run(["dpkg", "-L", "nodemedic"]).stdout.split()
    SEEN["installed-paths"] = {posixpath.normpath(p) for p in listed} - {"/"}


def test_remove_stops_the_service_and_keeps_the_configuration(pkg_node: Node) -> None:
    node = pkg_node
    apt(node, "remove", "nodemedic")
    state = node.unit_state("nodemedic.service")
    assert state.active_state in ("inactive", "failed") and state.load_state == "not-found", state
    assert not node.exists("/usr/bin/nodemedic")
    assert not node.exists("/opt/venvs/nodemedic/lib")
    assert "batch_size = 400" in node.read_file(CONFFILE).decode()  # conffiles stay until purge
    assert node.exists("/var/lib/nodemedic")


def test_purge_leaves_nothing_of_the_package(pkg_node: Node) -> None:
    node = pkg_node
    apt(node, "purge", "nodemedic")
    status = node.run(["dpkg-query", "-W", "-f=${Status}", "nodemedic"], check=False).stdout.strip()
    assert status in ("", "unknown ok not-installed"), status
    ours = SEEN["package-paths"] | SEEN["installed-paths"] | {  # type: ignore[operator]
        "/var/lib/nodemedic", "/run/nodemedic", "/etc/nodemedic", "/opt/venvs",
        "/etc/systemd/system/multi-user.target.wants/nodemedic.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/nodemedic.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/nodemedic.service",
        PLACEHOLDER,
    }
    left = existing(node, ours) - SEEN["before-install"]  # type: ignore[operator]
    assert not left, f"left behind after purge: {sorted(left)}"
    assert Kind.STARTED.value not in catalog_ids(node), "the catalog still knows nodemedic's messages"
