from prometheus_client.parser import text_string_to_metric_families

from nodemedic.report.metrics import Metrics
from nodemedic.safety import Guard
from nodemedic.state import Phase, ProblemRecord


def samples(path):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(path.read_text()) for s in family.samples}


def test_textfile_parses_and_follows_changes(tmp_path):
    path = tmp_path / "textfile" / "nodemedic.prom"
    metrics = Metrics(path, Guard.from_paths([]), create_dir=True)
    record = ProblemRecord("cni-config-missing", Phase.HEALED)
    metrics.step_finished("cni-config-missing", "cni-placeholder", "ok")
    metrics.update([record], entries_read=10, hits={"kubelet-network-plugin-not-ready": 2})
    got = samples(path)
    assert got[("nodemedic_repairs_total", (("problem", "cni-config-missing"), ("result", "ok"),
                                            ("step", "cni-placeholder")))] == 1
    assert got[("nodemedic_problems", (("state", "healed"),))] == 1
    assert got[("nodemedic_problem_state", (("problem", "cni-config-missing"), ("state", "healed")))] == 1
    assert got[("nodemedic_journal_entries_read_total", ())] == 10
    assert got[("nodemedic_signature_hits_total", (("signature", "kubelet-network-plugin-not-ready"),))] == 2
    assert got[("nodemedic_last_repair_timestamp_seconds", ())] > 0
    # a reload restarts the detector's counts; the counter keeps counting up
    metrics.update([record], entries_read=15, hits={"kubelet-network-plugin-not-ready": 1})
    got = samples(path)
    assert got[("nodemedic_signature_hits_total", (("signature", "kubelet-network-plugin-not-ready"),))] == 3
    assert got[("nodemedic_journal_entries_read_total", ())] == 15


def test_unchanged_metrics_do_not_rewrite_the_file(tmp_path):
    path = tmp_path / "nodemedic.prom"
    metrics = Metrics(path, Guard.from_paths([]), create_dir=False)
    metrics.update([], 0, {})
    first = path.stat().st_mtime_ns
    path.write_text(path.read_text())  # touch contents; a rewrite would replace the inode
    inode = path.stat().st_ino
    metrics.update([], 0, {})
    assert path.stat().st_ino == inode and first <= path.stat().st_mtime_ns


def test_missing_default_directory_is_skipped_with_one_warning(tmp_path, capsys):
    metrics = Metrics(tmp_path / "absent" / "nodemedic.prom", Guard.from_paths([]), create_dir=False)
    metrics.update([], 1, {})
    metrics.update([], 2, {})
    assert not (tmp_path / "absent").exists()
    assert capsys.readouterr().err.count("does not exist") == 1
