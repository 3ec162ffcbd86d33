"""`nodemedic join`: escalation order, budget, streaming and masking, with a stand-in kubeadm.

The stand-in is NOT kubeadm: a small script that fails its first N runs the way kubeadm join
does when kubelet never becomes healthy (kubeadm <= 1.29's real "[kubelet-check]" lines, the
error on stderr, exit 1) and succeeds afterwards. The node tests use the same script.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from nodemedic.config import load_config
from nodemedic.flows import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, join_cleanup, join_preflight
from nodemedic.flows import report as report_module
from nodemedic.flows.join import Join
from nodemedic.flows.join_cleanup import Level, choose_level
from nodemedic.flows.join_preflight import Check
from nodemedic.flows.masking import Masker
from nodemedic.flows.report import FlowReport
from nodemedic.hostroot import HostRoot
from nodemedic.journal import Kind
from nodemedic.repairs.context import RepairContext
from nodemedic.safety import Guard
from nodemedic.state import EngineState
from tests.unit.helpers import write

# A STAND-IN for kubeadm (test double); {python}, {fails}, {state_dir} and {files_root} are filled in
# when it is written. The node tests write the same script to the node's /usr/local/bin/kubeadm.
KUBEADM_STANDIN = r'''#!{python}
# nodemedic test STAND-IN for kubeadm: NOT kubeadm. Its first {fails} run(s) fail like a kubeadm join
# whose kubelet never gets healthy (kubeadm <= 1.29's [kubelet-check] lines, exit 1), after writing
# what kubeadm join writes; like kubeadm, its preflight refuses while those files exist. Afterwards
# it succeeds. It records every argv it was given.
import json, os, sys
state, files_root = "{state_dir}", "{files_root}"
os.makedirs(state, exist_ok=True)
runs = os.path.join(state, "runs.jsonl")
with open(runs, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
with open(runs) as f:
    n = sum(1 for _ in f)
def node(path):
    return os.path.join(files_root, path.lstrip("/"))
def write(path, text):
    os.makedirs(os.path.dirname(node(path)), exist_ok=True)
    with open(node(path), "w") as f:
        f.write(text)
token = sys.argv[sys.argv.index("--token") + 1] if "--token" in sys.argv else ""
print("[preflight] Running pre-flight checks", flush=True)
print(f"I1120 10:00:00.000000    1 join.go:412] [preflight] found token {{token}} (stand-in echo)", flush=True)
taken = [p for p in ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki/ca.crt") if os.path.exists(node(p))]
if taken:
    print("error execution phase preflight: [preflight] Some fatal errors occurred:", file=sys.stderr)
    for p in taken:
        name = p.lstrip("/").replace("/", "-")
        print(f"\t[ERROR FileAvailable--{{name}}]: {{p}} already exists", file=sys.stderr)
    print("[preflight] If you know what you are doing, you can make a check non-fatal with "
          "`--ignore-preflight-errors=...`", file=sys.stderr)
    print("To see the stack trace of this error execute with --v=5 or higher", file=sys.stderr, flush=True)
    sys.exit(1)
write("/etc/kubernetes/pki/ca.crt", "-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n")
write("/etc/kubernetes/bootstrap-kubelet.conf", "apiVersion: v1\nkind: Config\n")
print('[kubelet-start] Writing kubelet configuration to file "/var/lib/kubelet/config.yaml"', flush=True)
write("/var/lib/kubelet/config.yaml", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
      "cgroupDriver: systemd\n")
write("/var/lib/kubelet/kubeadm-flags.env", 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/'
      'containerd/containerd.sock"\n')
print("[kubelet-start] Starting the kubelet", flush=True)
print("[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap...", flush=True)
write("/etc/kubernetes/kubelet.conf", "apiVersion: v1\nkind: Config\n")
write("/var/lib/kubelet/pki/kubelet-client-current.pem", "stand-in\n")
if n <= {fails}:
    print("[kubelet-check] Initial timeout of 40s passed.", flush=True)
    print("[kubelet-check] It seems like the kubelet isn't running or healthy.", flush=True)
    print("[kubelet-check] The HTTP call equal to 'curl -sSL http://localhost:10248/healthz' failed with error: "
          'Get "http://localhost:10248/healthz": dial tcp [::1]:10248: connect: connection refused.', flush=True)
    print("error execution phase kubelet-start: error uploading crisocket: timed out waiting for the condition",
          file=sys.stderr, flush=True)
    print("To see the stack trace of this error execute with --v=5 or higher", file=sys.stderr, flush=True)
    sys.exit(1)
print("")
print("This node has joined the cluster:")
print("* Certificate signing request was sent to apiserver and a response was received.")
print("* The Kubelet was informed of the new secure connection details.")
'''

TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "1f" * 32


def standin_text(fails: int, state_dir: str, files_root: str, python: str = sys.executable) -> str:
    return KUBEADM_STANDIN.format(python=python, fails=fails, state_dir=state_dir, files_root=files_root)


def standin(directory: Path, fails: int) -> Path:
    """The stand-in kubeadm in `directory`, writing kubeadm's files below directory/node (never /)."""
    script = directory / "kubeadm-standin"
    script.write_text(standin_text(fails, str(directory / "state"), str(directory / "node")))
    script.chmod(0o755)
    return script


def join_argv(script: Path) -> list[str]:
    return [str(script), "join", "10.0.0.1:6443", "--token", TOKEN, f"--discovery-token-ca-cert-hash={CA_HASH}"]


class Journal:
    def __init__(self) -> None:
        self.entries: list[tuple[Kind, str, dict[str, object]]] = []

    def __call__(self, kind: Kind, message: str, priority: int = 6, **fields: object) -> None:
        self.entries.append((kind, message, fields))

    def kinds(self) -> list[Kind]:
        return [k for k, _, _ in self.entries]

    def of(self, kind: Kind) -> list[dict[str, object]]:
        return [dict(f, message=m) for k, m, f in self.entries if k is kind]


@pytest.fixture
def journal(monkeypatch) -> Journal:
    j = Journal()
    monkeypatch.setattr(report_module, "log", j)
    return j


@pytest.fixture
def cleanups(monkeypatch) -> list[str]:
    """The cleanup levels in the order they ran (the real ones need systemd; recorded here)."""
    done: list[str] = []

    async def gentle(ctx):
        done.append("gentle")
        return ["restarted containerd.service", "restarted kubelet.service"]

    async def aggressive(ctx):
        done.append("aggressive")
        # the file part is real (below the test's --root); the unit stops/starts need systemd
        return join_cleanup.remove_join_files(ctx)

    async def passes(ctx, fix):
        return Check("stand-in", "ok", "preflight replaced in unit tests")

    monkeypatch.setattr(join_cleanup, "gentle", gentle)
    monkeypatch.setattr(join_cleanup, "aggressive", aggressive)
    monkeypatch.setattr(join_preflight, "CHECKS", (passes,))
    return done


def run_join(tmp_path: Path, argv: list[str], capsys, *, attempts: int = 3, destructive: bool = True,
             gentle_cleanups: int = 1, timeout: str = "30s") -> tuple[int, str]:
    root = tmp_path / "node"
    write(root, "/etc/nodemedic/conf.d/50-test.toml",
          f'[policy]\nallow_destructive = {str(destructive).lower()}\n'
          f'[join]\nattempts = {attempts}\ngentle_cleanups = {gentle_cleanups}\nbackoff = "0s"\n'
          f'attempt_timeout = "{timeout}"\n')
    settings = load_config(HostRoot(root)).settings
    report = FlowReport("join", Masker(argv))
    flow = Join(settings, HostRoot(root), argv, report)
    ctx = RepairContext(settings, HostRoot(root), Guard.from_paths([]), None, None, EngineState())  # type: ignore[arg-type]
    code = asyncio.run(flow.attempts(ctx))
    return code, capsys.readouterr().out


def runs(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "state" / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("failed, gentle_cleanups, destructive, expected", [
    (1, 1, True, Level.GENTLE),
    (2, 1, True, Level.AGGRESSIVE),
    (3, 1, True, Level.AGGRESSIVE),
    (2, 2, True, Level.GENTLE),
    (3, 2, True, Level.AGGRESSIVE),
    (2, 1, False, Level.GENTLE),
    (5, 1, False, Level.GENTLE),
])
def test_the_ladder_is_gentle_first_and_aggressive_only_when_allowed(failed, gentle_cleanups, destructive,
                                                                     expected):
    level, held = choose_level(failed, gentle_cleanups, destructive)
    assert level is expected
    assert bool(held) == (failed > gentle_cleanups and not destructive)


def test_gentle_cleanup_first_then_aggressive_and_the_join_succeeds(tmp_path, capsys, journal, cleanups):
    """Attempt 1 times out at [kubelet-check]; the gentle cleanup leaves kubeadm's files, so attempt 2
    fails kubeadm's own preflight ("already exists"); the aggressive cleanup removes them (and only
    them), and attempt 3 joins."""
    volume = write(tmp_path / "node", "/var/lib/kubelet/pods/0a1b/volumes/kubernetes.io~empty-dir/data/f", "keep")
    script = standin(tmp_path, fails=1)
    argv = join_argv(script)
    code, out = run_join(tmp_path, list(argv), capsys)
    assert code == EXIT_OK
    assert cleanups == ["gentle", "aggressive"]
    assert runs(tmp_path) == [argv[1:]] * 3  # the command ran exactly as given, every time
    assert journal.kinds() == [
        Kind.JOIN_PREFLIGHT,
        Kind.JOIN_ATTEMPT_STARTED, Kind.JOIN_SYMPTOM, Kind.JOIN_ATTEMPT_FAILED, Kind.JOIN_CLEANUP,
        Kind.JOIN_ATTEMPT_STARTED, Kind.JOIN_ATTEMPT_FAILED, Kind.JOIN_CLEANUP,
        Kind.JOIN_ATTEMPT_STARTED, Kind.JOIN_SUCCEEDED,
    ]
    gentle, aggressive = journal.of(Kind.JOIN_CLEANUP)
    assert (gentle["level"], aggressive["level"]) == ("gentle", "aggressive")
    for path in ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki/ca.crt", "/var/lib/kubelet/config.yaml",
                 "/var/lib/kubelet/pki/"):
        assert f"removed {path}" in str(aggressive["actions"])
    assert volume.read_text() == "keep"  # pods and their volumes are never touched
    assert journal.of(Kind.JOIN_SYMPTOM)[0]["signature"] == "kubeadm-join-kubelet-check-timeout"
    first, second = journal.of(Kind.JOIN_ATTEMPT_FAILED)
    assert first["problems"] == "join-kubelet-timeout" and first["returncode"] == "1"
    assert "error execution phase kubelet-start" in str(first["output_tail"])  # stderr is streamed too
    assert "already exists" in str(second["output_tail"])
    assert "This node has joined the cluster:" in out


def test_the_budget_is_never_exceeded_and_aggressive_is_held_back_without_permission(tmp_path, capsys, journal,
                                                                                     cleanups):
    script = standin(tmp_path, fails=99)
    code, _out = run_join(tmp_path, join_argv(script), capsys, attempts=4, destructive=False)
    assert code == EXIT_FAILED
    assert len(runs(tmp_path)) == 4
    assert cleanups == ["gentle", "gentle", "gentle"]  # none after the last attempt
    held = [c.get("held_back") for c in journal.of(Kind.JOIN_CLEANUP)]
    assert held[0] is None and all("allow_destructive" in str(h) for h in held[1:])
    assert journal.kinds()[-1] is Kind.JOIN_EXHAUSTED
    assert [a["attempt"] for a in journal.of(Kind.JOIN_ATTEMPT_STARTED)] == ["1", "2", "3", "4"]


def test_a_control_plane_node_never_gets_the_aggressive_cleanup(tmp_path, capsys, journal, cleanups):
    write(tmp_path / "node", "/etc/kubernetes/manifests/kube-apiserver.yaml", "kind: Pod\n")
    script = standin(tmp_path, fails=99)
    code, _ = run_join(tmp_path, join_argv(script), capsys, attempts=3, destructive=True)
    assert code == EXIT_FAILED and cleanups == ["gentle", "gentle"]
    assert "control plane" in str(journal.of(Kind.JOIN_CLEANUP)[1]["held_back"])


def test_the_token_and_hash_appear_nowhere_in_output_or_journal(tmp_path, capsys, journal, cleanups):
    script = standin(tmp_path, fails=1)
    code, out = run_join(tmp_path, join_argv(script), capsys)
    assert code == EXIT_OK
    assert "(stand-in echo)" in out  # the line that echoed the token was shown, masked
    everything = out + json.dumps([(k.name, m, {n: str(v) for n, v in f.items()}) for k, m, f in journal.entries])
    assert TOKEN not in everything and CA_HASH not in everything
    assert "--token ***" in everything and "--discovery-token-ca-cert-hash=***" in everything


def test_an_attempt_that_hangs_is_killed_at_its_timeout_and_counts_against_the_budget(tmp_path, capsys, journal,
                                                                                     cleanups):
    script = tmp_path / "kubeadm-standin-hangs"
    script.write_text(f"#!{sys.executable}\n# STAND-IN for a kubeadm that hangs\nimport time\n"
                      "print('[preflight] Running pre-flight checks', flush=True)\ntime.sleep(600)\n")
    script.chmod(0o755)
    code, _ = run_join(tmp_path, [str(script), "join", "x"], capsys, attempts=2, timeout="1s")
    assert code == EXIT_FAILED
    assert [f["message"] for f in journal.of(Kind.JOIN_ATTEMPT_FAILED)] == [
        "join attempt 1 of 2 timed out", "join attempt 2 of 2 timed out"]


def test_a_refused_preflight_runs_nothing(tmp_path, capsys, journal, cleanups, monkeypatch):
    async def swap_on(ctx, fix):
        return Check("swap", "refused", "swap is on (/dev/zram0)")

    monkeypatch.setattr(join_preflight, "CHECKS", (swap_on,))
    script = standin(tmp_path, fails=0)
    code, _ = run_join(tmp_path, join_argv(script), capsys)
    assert code == EXIT_REFUSED and runs(tmp_path) == []
    assert journal.kinds() == [Kind.JOIN_PREFLIGHT, Kind.JOIN_REFUSED]
