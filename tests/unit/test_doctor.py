import json
import os
import time

from tests.unit.helpers import run_cli, write


def findings(capsys, root) -> dict[str, dict]:
    code, out, _ = run_cli(capsys, "--root", str(root), "doctor", "--json")
    data = json.loads(out)
    assert (code == 0) is data["healthy"]
    return {f["check"]: f for f in data["findings"]}


def test_missing_runtime_is_named_with_the_ladder_nodemedic_would_climb(tmp_path, capsys):
    found = findings(capsys, tmp_path)
    runtime = found["runtime"]
    assert not runtime["ok"] and runtime["problem"] == "runtime-down"
    assert runtime["plan"] == [
        "step 1: restart-containerd (disruptive)",
        "step 2: gentle-node-reset (disruptive)",
        "step 3: aggressive-node-reset (destructive) - held back: destructive steps are off "
        "(policy.allow_destructive = false)",
    ]


def test_symlinked_containerd_root_and_stale_ingest_are_reported(tmp_path, capsys):
    elsewhere = tmp_path / "data" / "containerd"
    ingest = elsewhere / "io.containerd.content.v1.content" / "ingest" / "abc123"
    ingest.mkdir(parents=True)
    (ingest / "data").write_bytes(b"partial")
    old = time.time() - 3600
    for path in (ingest / "data", ingest):
        os.utime(path, (old, old))
    (tmp_path / "var" / "lib").mkdir(parents=True)
    (tmp_path / "var" / "lib" / "containerd").symlink_to("../../data/containerd")
    found = findings(capsys, tmp_path)
    assert "a relative symlink to ../../data/containerd" in found["containerd root"]["detail"]
    assert found["content ingest"]["problem"] == "ingest-stale"
    assert found["content ingest"]["plan"] == ["step 1: remove-stale-ingests (safe)"]


def test_report_only_and_observe_mode_say_why_nothing_would_be_done(tmp_path, capsys):
    write(tmp_path, "/proc/swaps", "Filename Type Size Used Priority\n/dev/dm-1 partition 4194300 0 -1\n")
    write(tmp_path, "/etc/nodemedic/conf.d/10.toml", '[daemon]\nmode = "observe"\n')
    found = findings(capsys, tmp_path)
    assert found["swap"]["plan"][0].startswith("would not repair: turning swap off")
    assert found["runtime"]["plan"] == ["would not repair: mode is observe"]


def test_a_skipped_check_says_skip_and_why_and_does_not_change_the_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")  # no systemd to ask
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "doctor")
    lines = out.splitlines()
    assert any(line.startswith("[skip] systemd: unit checks not made: ") for line in lines), out
    # /proc/sys/fs/inotify is not in the throw-away root: that check is skipped too, and says why
    assert any(line.startswith("[skip] inotify limits: not checked: cannot read") for line in lines), out
    assert not any(line.startswith("[ok ] systemd") or line.startswith("[ok ] inotify") for line in lines), out
    code_json, out_json, _ = run_cli(capsys, "--root", str(tmp_path), "doctor", "--json")
    data = json.loads(out_json)
    skipped = [f for f in data["findings"] if f["skipped"]]
    assert {f["check"] for f in skipped} == {"systemd", "inotify limits"}
    # the exit code is the verdict of the checks that ran (the missing runtime), skips aside
    assert code == code_json == (0 if all(f["ok"] for f in data["findings"]) else 1)
