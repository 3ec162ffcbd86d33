"""The node test bed itself: the node is real, and every injector breaks it through the real
component. These are the issue's "done when" tests and the contract later node tests rely on."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest

from nodemedic.probes.cri import CriUnavailable
from tests.node.testbed import faults, image
from tests.node.testbed.node import Node

# The test bed's own tests on the stacks whose components differ from the last proven one (bookworm,
# proven since issue 3 and exercised by every ladder module): 1.7 + systemd 257, 2.1, cgroup2-only.
pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "trixie-containerd2", "forky")]

CNI_INIT_FAILED = re.compile(
    r'level=error msg="failed to load cni during init, please check CRI plugin status before setting up '
    r'network for pods" error="cni config load failed: no network config found in /etc/cni/net\.d: '
    r'cni plugin not initialized: failed to load cni config"'
)
NETWORK_NOT_READY = re.compile(
    r'^E\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ kubelet\.go:\d+\] "Container runtime network not ready" '
    r'networkReady="NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: '
    r'cni plugin not initialized"$'
)
CAPACITY_ZERO = re.compile(
    r'"Image garbage collection failed (once|multiple).*" err="invalid capacity 0 on image filesystem"$'
)
GC_ONCE = re.compile(
    r'^E\d{4} [\d:.]+ +\d+ kubelet\.go:\d+\] "Image garbage collection failed once\. '
    r'Stats initialization may not have completed yet" err="invalid capacity 0 on image filesystem"$'
)
GC_AGAIN = re.compile(
    r'^E\d{4} [\d:.]+ +\d+ kubelet\.go:\d+\] "Image garbage collection failed multiple times in a row" '
    r'err="invalid capacity 0 on image filesystem"$'
)
GC_OK = re.compile(r'"Image garbage collection succeeded"$')


def kubelet_lines(node: Node, since: str, pattern: re.Pattern[str]) -> list[str]:
    return node.messages(unit="kubelet.service", since=since, grep=pattern)


# ---- the node is real --------------------------------------------------------------------------------


def test_node_runs_real_systemd_journald_dbus_containerd(node: Node) -> None:
    assert node.system_state() in ("running", "degraded")
    assert node.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    for unit in ("systemd-journald.service", "dbus.service", "containerd.service", "kubelet.service"):
        assert node.unit_state(unit).active_state == "active", unit
    plugins = node.run(["ctr", "plugins", "ls"]).stdout
    # containerd's overlayfs snapshotter must work inside the node (its root is not on overlayfs).
    assert re.search(r"io\.containerd\.snapshotter\.v1\s+overlayfs\s+linux/amd64\s+ok", plugins), plugins
    # (2.x lists the CRI gRPC service without a platform: "-")
    assert re.search(r"io\.containerd\.grpc\.v1\s+cri\s+(?:linux/amd64|-)\s+ok", plugins), plugins
    st = node.cri_status()
    assert st.runtime_ready and st.network_ready, st
    [fs] = node.imagefs_info()
    assert fs.mountpoint == "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"
    # Its own network namespace: nothing but loopback, so CNI/iptables stay inside the node.
    links = node.run(["ip", "-o", "link", "show"]).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"], links


def test_node_is_the_stack_it_claims(node: Node) -> None:
    """The image's manifest, the running components and the cgroup layout are the stack's."""
    manifest = json.loads(node.read_file("/etc/nodemedic-testbed.json"))
    assert manifest["stack"] == node.stack.name
    packages = manifest["packages"]
    for package, prefix in node.stack.expect.items():
        if package != "python3":
            assert packages[package].startswith(prefix), (package, packages[package], prefix)
    version = node.run(["containerd", "--version"]).stdout
    assert re.search(rf" v?{re.escape(node.stack.expect['containerd'])}", version), version
    assert node.run(["systemctl", "--version"]).stdout.startswith(f"systemd {node.stack.expect['systemd']}")
    py = node.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    assert py == node.stack.python == node.stack.expect["python3"]
    fstype = node.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"]).stdout.strip()
    assert fstype == ("cgroup2fs" if node.stack.unified else "tmpfs"), fstype


def test_nodemedic_installed_from_working_tree(node: Node) -> None:
    out = node.run(
        [
            "/opt/venvs/nodemedic/bin/python",
            "-c",
            "import nodemedic, nodemedic.probes, systemd.journal, dbus_next, grpc; print(nodemedic.__file__)",
        ]
    )
    py = node.stack.python
    assert out.stdout.strip().startswith(f"/opt/venvs/nodemedic/lib/python{py}/site-packages/nodemedic/")
    assert (
        node.run(["readlink", "/usr/local/bin/nodemedic"]).stdout.strip()
        == "/opt/venvs/nodemedic/bin/nodemedic"
    )


def test_journal_cursor_and_filters(node: Node, cursor: str) -> None:
    node.run(["systemd-cat", "-t", "nmtest-probe"], input="hello from the test\n")
    entry = node.wait_for_journal("hello from the test", identifier="nmtest-probe", since=cursor)
    assert entry["SYSLOG_IDENTIFIER"] == "nmtest-probe"
    assert node.journal(identifier="nmtest-probe", since=entry["__CURSOR"]) == []
    assert node.journal(fields={"SYSLOG_IDENTIFIER": ["nmtest-probe", "nobody-else"]}, since=cursor)


def test_protected_dirs_are_populated_and_checksummed(node: Node) -> None:
    for top in ("/srv/media", "/mnt/media"):
        manifest = node.tree_manifest(top)
        assert sum(1 for v in manifest.values() if v[0] == "file") >= 2, manifest
    before = node.checksum_tree("/srv/media")
    assert node.checksum_tree("/srv/media") == before
    node.run(["chmod", "600", "/srv/media/films/README.txt"])
    try:
        assert node.checksum_tree("/srv/media") != before  # a mode change alone is seen
    finally:
        node.run(["chmod", "444", "/srv/media/films/README.txt"])
    assert node.checksum_tree("/srv/media") == before


# ---- done when (a): containerd and CNI, for real ------------------------------------------------------


def test_containerd_logs_cni_init_failure_and_reloads_written_config(node: Node, cursor: str, inject) -> None:
    inject(faults.empty_cni_dir, restart_containerd=True)
    assert node.run(["ls", "-A", faults.CNI_CONF_DIR]).stdout == ""

    # containerd itself logs it, from its own unit (trusted field, not a forgeable identifier).
    entry = node.wait_for_journal(CNI_INIT_FAILED, unit="containerd.service", since=cursor, timeout=20)
    assert entry["_SYSTEMD_UNIT"] == "containerd.service" and entry["_COMM"] == "containerd"
    st = node.cri_status()
    assert (st.runtime_ready, st.network_ready, st.network_reason) == (True, False, "NetworkPluginNotReady")
    assert st.network_message == "Network plugin returns error: cni plugin not initialized"
    # ...and the kubelet stand-in reports what kubelet reports from that CRI status.
    node.wait_for_journal(NETWORK_NOT_READY, unit="kubelet.service", since=cursor, timeout=20)

    pid = node.unit_state("containerd.service").main_pid
    inject(faults.write_cni_config)
    node.wait_for(lambda: node.cri_status().network_ready, timeout=20, what="NetworkReady=true")
    # Picked up by containerd's fsnotify watch on /etc/cni/net.d, not by a restart.
    assert node.unit_state("containerd.service").main_pid == pid


def test_removed_cni_dir_needs_a_containerd_restart(node: Node, cursor: str, inject) -> None:
    inject(faults.remove_cni_dir)
    if node.stack.expect["containerd"].startswith("2."):
        # containerd 2.x (seen with 2.1.9) does not carry on without the directory: its CRI
        # service stops fatally, containerd exits, and systemd (Restart=always) starts it again,
        # which then watches a re-created directory.
        node.wait_for_journal(
            'level=fatal msg="Failed to run CRI service" error="cni network conf monitor error: '
            'cni conf dir is removed, stop watching"', unit="containerd.service", since=cursor, timeout=20
        )
        node.wait_for(lambda: node.unit_state("containerd.service").n_restarts >= 1, what="systemd's restart")
        node.run(["mkdir", "-p", faults.CNI_CONF_DIR])
        inject(faults.write_cni_config)
        node.wait_for(lambda: node.cri_status().network_ready, timeout=30, what="NetworkReady=true")
        return
    node.wait_for(lambda: not node.cri_status().network_ready, timeout=20, what="NetworkReady=false")
    node.run(["mkdir", "-p", faults.CNI_CONF_DIR])
    inject(faults.write_cni_config)
    # 1.6/1.7: containerd's watch went with the directory: a new config in a new directory is
    # not seen...
    time.sleep(3)
    assert not node.cri_status().network_ready
    # ...until containerd restarts and watches it again.
    node.systemctl("restart", "containerd.service")
    node.wait_for(lambda: node.cri_status().network_ready, timeout=20, what="NetworkReady=true after restart")


# ---- done when (b): "invalid capacity 0" only when statvfs really fails -----------------------------


def test_kubelet_standin_capacity_zero_only_when_statvfs_fails(node: Node, fast_kubelet, inject) -> None:
    period = fast_kubelet["image_gc_period"]
    # Healthy: the image filesystem containerd reports has a real capacity...
    [fs] = node.imagefs_capacity()
    assert fs["capacity_bytes"] > 0, fs
    healthy = node.cursor()
    # ...and over several GC periods the stand-in checks it (-v=4 logs each success) and never
    # claims capacity 0.
    node.wait_for(
        lambda: len(kubelet_lines(node, healthy, GC_OK)) >= 3, timeout=6 * period, what="3 image GC runs"
    )
    assert kubelet_lines(node, healthy, CAPACITY_ZERO) == []

    # Broken: containerd's root moves away under it; statvfs of the reported mountpoint fails.
    broken = node.cursor()
    fault = inject(faults.containerd_root_moved)
    [fs] = node.imagefs_capacity()
    assert fs["capacity_bytes"] is None and fs["statvfs_error"] == "No such file or directory", fs
    node.wait_for_journal(GC_ONCE, unit="kubelet.service", since=broken, timeout=6 * period)
    node.wait_for_journal(GC_AGAIN, unit="kubelet.service", since=broken, timeout=6 * period)
    node.wait_for_journal(
        "Failed to get the info of the filesystem with mountpoint",
        unit="kubelet.service",
        since=broken,
        timeout=2,
    )

    # Repaired: the lines stop.
    fault.restore()
    repaired = node.cursor()
    node.wait_for_journal(GC_OK, unit="kubelet.service", since=repaired, timeout=6 * period)
    settled = node.cursor()
    node.wait_for(
        lambda: len(kubelet_lines(node, settled, GC_OK)) >= 2, timeout=6 * period, what="2 image GC runs"
    )
    assert kubelet_lines(node, settled, CAPACITY_ZERO) == []


def test_containerd_root_symlinked_to_another_fs(node: Node, fast_kubelet, inject) -> None:
    period = fast_kubelet["image_gc_period"]
    fault = inject(faults.containerd_root_symlink)
    assert node.run(["readlink", faults.CONTAINERD_ROOT]).stdout.strip() == fault.info["target"]
    assert node.run(["findmnt", "-no", "FSTYPE", fault.info["mount"]]).stdout.strip() == "tmpfs"
    node.wait_for(
        lambda: node.cri_status().runtime_ready, timeout=20, what="containerd back on the moved root"
    )
    [fs] = node.imagefs_capacity()
    assert fs["capacity_bytes"] == 512 * 1024 * 1024, fs  # the tmpfs, through the symlink
    ok = node.cursor()
    node.wait_for(
        lambda: len(kubelet_lines(node, ok, GC_OK)) >= 2, timeout=6 * period, what="2 image GC runs"
    )
    assert kubelet_lines(node, ok, CAPACITY_ZERO) == []

    gone = node.cursor()
    faults.detach(node, fault)  # the data disk disappears under containerd
    assert node.run(["test", "-e", faults.CONTAINERD_ROOT], check=False).returncode == 1  # dangling now
    node.wait_for_journal(CAPACITY_ZERO, unit="kubelet.service", since=gone, timeout=6 * period)


# ---- the other injectors -----------------------------------------------------------------------------


def test_stale_ingest_is_laid_out_like_containerds(node: Node, stale_ingest) -> None:
    d = stale_ingest.info["path"]
    assert node.read_file(f"{d}/ref").decode() == stale_ingest.info["ref"]
    assert node.read_file(f"{d}/total").decode() == str(stale_ingest.info["total"])
    started = dt.datetime.fromisoformat(node.read_file(f"{d}/startedat").decode().replace("Z", "+00:00"))
    assert dt.datetime.now(dt.UTC) - started > dt.timedelta(days=2)
    mtime = int(node.run(["stat", "-c", "%Y", f"{d}/data"]).stdout)
    assert time.time() - mtime > 2 * 86400


def test_interrupted_ingest_is_left_by_containerd(node: Node, inject) -> None:
    fault = inject(faults.interrupted_ingest, age=dt.timedelta(days=2))
    # containerd itself tracks it as an active (never committed) ingest.
    active = node.run(["ctr", "-n", "k8s.io", "content", "active"]).stdout
    assert fault.info["ref"] in active, active
    data_size = int(node.run(["stat", "-c", "%s", f"{fault.info['path']}/data"]).stdout)
    assert data_size == 256 << 10


def test_crash_looping_kubelet(node: Node, cursor: str, crash_looping_kubelet) -> None:
    def looping() -> bool:
        st = node.unit_state("kubelet.service")
        return st.n_restarts >= 3

    node.wait_for(looping, timeout=30, what="kubelet.service to restart 3 times")
    entry = node.wait_for_journal(
        r'"command failed" err="failed to load kubelet config file', unit="kubelet.service", since=cursor
    )
    assert entry["_COMM"] == "kubelet"
    node.wait_for_journal(
        "kubelet.service: Main process exited, code=exited, status=1/FAILURE",
        since=cursor,
        fields={"UNIT": "kubelet.service", "_PID": "1"},
    )


def test_forged_kubelet_lines_carry_the_forgers_trusted_fields(node: Node, cursor: str) -> None:
    line = 'E0101 00:00:00.000000    4242 kubelet.go:2855] "Container runtime network not ready" forged="yes"'
    faults.forge_log_line(node, line)
    faults.forge_log_line(node, line, user=image.NODE_USER)
    faults.forge_log_line(node, line, user=image.NODE_USER, fields={"UNIT": "kubelet.service"})
    entries = node.wait_for(
        lambda: (
            (es := node.journal(identifier="kubelet", since=cursor, grep="forged")) and len(es) >= 3 and es
        ),
        timeout=15,
        what="3 forged lines",
    )
    uid = node.run(["id", "-u", image.NODE_USER]).stdout.strip()
    assert sorted(e["_UID"] for e in entries) == sorted(["0", uid, uid])
    assert all(e.get("_SYSTEMD_UNIT") != "kubelet.service" for e in entries)
    assert all(e["SYSLOG_IDENTIFIER"] == "kubelet" for e in entries)


def test_journal_noise(node: Node, cursor: str) -> None:
    faults.journal_noise(node, lines=3000, identifier="nmnoise")
    node.wait_for(
        lambda: len(node.journal(identifier="nmnoise", since=cursor)) >= 3000,
        timeout=30,
        what="3000 noise lines",
    )


def test_containerd_stopped_and_killed(node: Node, fast_kubelet, inject) -> None:
    down = node.cursor()
    fault = inject(faults.stop_containerd)
    with pytest.raises(CriUnavailable):
        node.cri_status()
    node.wait_for_journal(
        '"Container runtime sanity check failed" err="rpc error: code = Unavailable',
        unit="kubelet.service",
        since=down,
        timeout=10,
    )
    node.wait_for_journal(
        re.compile(r'"Skipping pod synchronization" err="\[?container runtime is down'),
        unit="kubelet.service",
        since=down,
        timeout=20,
    )
    fault.restore()
    node.wait_for(lambda: node.cri_status().runtime_ready, timeout=20, what="containerd back")

    killed = inject(faults.kill_containerd)
    old = killed.info["main_pid_before"]
    node.wait_for(
        lambda: node.unit_state("containerd.service").main_pid not in (0, old),
        timeout=30,
        what="containerd restarted by systemd",
    )
    assert node.unit_state("containerd.service").n_restarts >= 1
    node.wait_for(lambda: node.cri_status().runtime_ready, timeout=20, what="CRI back after the kill")
