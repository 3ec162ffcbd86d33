"""docs/where-to-add-what.md, done: in a copy of the tree, add a throwaway signature (its data
file and its corpus lines, nothing else) and the catalogue and corpus tests take it up; name a
problem nobody defined and the catalogue test says what is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

THROWAWAY = "kubeadm-throwaway-check"
# A line no real component writes, so it points at one problem only; kubeadm writes plain text,
# so one '+' line per release block covers every format the corpus tests ask for.
SIGNATURE = r"""id = "kubeadm-throwaway-check"
problem = "{problem}"
summary = "a throwaway signature: tests/unit/test_where_to_add.py adds it to a copy of the tree"
units = ["kubeadm"]
literal = "[throwaway-check] "
message = ['^\[throwaway-check\] gave up after ']

[threshold]
count = 1
window = "10m"
"""
CORPUS = """# kubeadm-throwaway-check: written by tests/unit/test_where_to_add.py, never shipped.
+ [throwaway-check] gave up after 4m0s
- [throwaway-check] started
# src: kubeadm v1.20..v1.36 nowhere: the test's own line
+ [throwaway-check] gave up after 40s
"""
MODULES = ["tests/unit/test_corpus.py", "tests/unit/test_catalogue.py", "tests/unit/test_problem_classes.py",
           "tests/unit/test_ladders_documented.py"]


def tree_with_throwaway(tmp_path: Path, problem: str) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".ruff_cache", ".pytest_cache", ".hypothesis"))
    (tree / "etc/nodemedic/signatures.d" / f"{THROWAWAY}.toml").write_text(SIGNATURE.format(problem=problem))
    (tree / "tests/corpus" / f"{THROWAWAY}.log").write_text(CORPUS)
    return tree


def pytest_in(tree: Path, modules: list[str]) -> subprocess.CompletedProcess[str]:
    # tests/conftest.py puts the copy's daemon/ first on sys.path: the copy is what runs.
    probe = "import nodemedic, sys; sys.stdout.write(nodemedic.__file__)"
    where = subprocess.run([sys.executable, "-c", f"import tests.conftest; {probe}"], cwd=tree,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tree)), where
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *modules],
                          cwd=tree, capture_output=True, text=True, timeout=600)


def test_a_signature_for_a_known_problem_is_two_files_and_nothing_else(tmp_path):
    done = pytest_in(tree_with_throwaway(tmp_path, "join-kubelet-timeout"), MODULES)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    taken_up = [line for line in done.stdout.splitlines() if line.startswith("PASSED") and THROWAWAY in line]
    assert len(taken_up) >= 6, done.stdout[-4000:]  # every per-signature corpus test ran on it


def test_a_signature_for_an_undefined_problem_fails_the_catalogue_test(tmp_path):
    done = pytest_in(tree_with_throwaway(tmp_path, "throwaway-problem"), ["tests/unit/test_catalogue.py"])
    assert done.returncode == 1, done.stdout[-4000:]
    assert "define these problems in nodemedic/problems.py" in done.stdout
    assert "throwaway-problem" in done.stdout


# A reporter is one module under report/ and one entry in report/reporters.py's list.
REPORTER = '''"""A throwaway reporter: tests/unit/test_where_to_add.py adds it to a copy of the tree."""

from __future__ import annotations

import os

from nodemedic.engine.reporting import Transition
from nodemedic.state import ProblemRecord


class ThrowawayReporter:
    def on_transition(self, record: ProblemRecord | None, transition: Transition) -> None:
        with open(os.environ["NMTEST_REPORTER_OUT"], "a") as out:
            out.write(f"{transition.problem} {transition.phase}\\n")

    def on_step(self, record, step) -> None:
        pass

    def on_change(self) -> None:
        pass
'''
DRIVE = """
import sys
from nodemedic.daemon import Daemon, load
from nodemedic.engine.reporting import Transition
from nodemedic.hostroot import HostRoot
from nodemedic.state import Phase

root = HostRoot(sys.argv[1])
daemon = Daemon(root, load(root))
print(",".join(type(r).__name__ for r in daemon.reporters.reporters))
daemon.reporters.on_transition(None, Transition("cni-config-missing", Phase.CONFIRMED, "a test"))
"""


def test_a_reporter_is_one_module_and_one_list_entry(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".ruff_cache", ".pytest_cache", ".hypothesis"))
    (tree / "daemon/nodemedic/report/throwaway.py").write_text(REPORTER)
    listing = tree / "daemon/nodemedic/report/reporters.py"
    text = listing.read_text()
    assert "JournalReporter()]" in text, "the list of reporters moved: update this test and the docs"
    listing.write_text(text.replace("JournalReporter()]", "JournalReporter(), ThrowawayReporter()]").replace(
        "from nodemedic.report.status import StatusReporter",
        "from nodemedic.report.status import StatusReporter\nfrom nodemedic.report.throwaway import ThrowawayReporter"))
    out = tmp_path / "reported"
    host = tmp_path / "host"
    host.mkdir()
    done = subprocess.run([sys.executable, "-c", "import tests.conftest\n" + DRIVE, str(host)], cwd=tree,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "NMTEST_REPORTER_OUT": str(out)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("JournalReporter,ThrowawayReporter"), done.stdout
    assert out.read_text() == "cni-config-missing confirmed\n"
    # ...and the layers still hold with it (a reporter sits above the engine it listens to).
    layers = pytest_in(tree, ["tests/unit/test_layers.py"])
    assert layers.returncode == 0, layers.stdout[-3000:]
