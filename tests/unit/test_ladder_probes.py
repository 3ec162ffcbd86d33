"""The probes behind the ladders that can be checked without a node: who writes an ingest, which
problems a unit running again re-checks, kubelet's side of the cgroup driver."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from nodemedic.detector.conditions import unit_recovered
from nodemedic.hostroot import HostRoot
from nodemedic.probes.ingest_dir import open_for_writing, stale_entries_in
from nodemedic.repairs.cgroup import kubelet_cgroup_driver
from nodemedic.sources.events import UnitChanged


def _old_entry(ingest: Path, name: str) -> Path:
    entry = ingest / name
    entry.mkdir(parents=True)
    for part in ("ref", "startedat", "updatedat", "data"):
        (entry / part).write_bytes(b"x")
    past = time.time() - 3 * 86400
    for path in (*entry.iterdir(), entry):
        os.utime(path, (past, past))
    return entry


def test_an_old_entry_open_for_writing_is_not_stale(tmp_path: Path):
    ingest = tmp_path / "ingest"
    abandoned = _old_entry(ingest, "abandoned")
    written = _old_entry(ingest, "written")
    with open(written / "data", "ab"):  # a writer, as containerd's content writer holds it
        assert open_for_writing(str(written / "data"))
        assert not open_for_writing(str(abandoned / "data"))
        assert stale_entries_in(ingest, stale_age=600) == [abandoned]
    assert sorted(stale_entries_in(ingest, stale_age=600)) == [abandoned, written]


def test_young_entries_and_a_missing_dir_are_not_stale(tmp_path: Path):
    ingest = tmp_path / "ingest"
    assert stale_entries_in(ingest, stale_age=600) == []
    (ingest / "fresh").mkdir(parents=True)
    (ingest / "fresh" / "data").write_bytes(b"x")
    assert stale_entries_in(ingest, stale_age=600) == []
    assert not open_for_writing(str(ingest / "gone"))


def test_a_unit_running_again_rechecks_only_its_exhausted_problems():
    running = UnitChanged("containerd.service", "active", "running", 0, "success")
    assert unit_recovered(running, "containerd.service", set()) == []
    found = unit_recovered(running, "containerd.service", {"containerd-crash-loop", "runtime-down", "x"})
    assert sorted(s.problem for s in found) == ["containerd-crash-loop", "runtime-down"]
    kubelet = UnitChanged("kubelet.service", "active", "running", 3, "success")
    assert [s.problem for s in unit_recovered(kubelet, "containerd.service", {"kubelet-crash-loop",
                                                                               "runtime-down"})] == [
        "kubelet-crash-loop"]
    looping = UnitChanged("kubelet.service", "activating", "auto-restart", 3, "exit-code")
    assert unit_recovered(looping, "containerd.service", {"kubelet-crash-loop"}) == []


def test_kubelet_cgroup_driver_is_read_from_its_config(tmp_path: Path):
    ctx = SimpleNamespace(root=HostRoot(tmp_path))
    assert kubelet_cgroup_driver(ctx) == ""  # type: ignore[arg-type]
    config = tmp_path / "var/lib/kubelet/config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                      "cgroupDriver: \"systemd\"\n")
    assert kubelet_cgroup_driver(ctx) == "systemd"  # type: ignore[arg-type]
    config.write_text("kind: KubeletConfiguration\n# cgroupDriver: systemd\ncgroupDriver: cgroupfs\n")
    assert kubelet_cgroup_driver(ctx) == "cgroupfs"  # type: ignore[arg-type]
