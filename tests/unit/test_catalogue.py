"""The problem catalogue walked end to end: signatures.d names problems, nodemedic.problems
defines them with their class, repairs/remedies.py gives each its ladder (or says why it only
reports it) and its confirming probe, and the README's ladder table shows every one."""

from __future__ import annotations

import tomllib

from nodemedic.problems import CLASSES, PROBLEMS, Problem, ProblemClass, crash_loop_problem, problem_class
from nodemedic.repairs.remedies import CONFIRMS, LADDERS, REMEDIES
from tests.unit.corpus import SIGNATURES_DIR
from tests.unit.test_ladders_documented import documented


def signature_problems() -> dict[str, str]:
    """Each shipped signature's problem, by signature id (the directory is the list)."""
    return {path.stem: tomllib.loads(path.read_text())["problem"] for path in sorted(SIGNATURES_DIR.glob("*.toml"))}


def test_every_signatures_problem_is_defined_and_has_a_remedy():
    named = signature_problems()
    assert named, "no signatures found"
    undefined = {sig: problem for sig, problem in named.items() if problem not in PROBLEMS}
    assert undefined == {}, "define these problems in nodemedic/problems.py"
    # A signature whose problem had no remedy used to be report-only without saying so.
    without = {sig: problem for sig, problem in named.items() if problem not in REMEDIES}
    assert without == {}, "give these problems a ladder or a report_only reason in repairs/remedies.py"


def test_every_problem_has_exactly_one_remedy_and_every_remedy_a_problem():
    ids = [remedy.problem for remedy in LADDERS]
    assert len(ids) == len(set(ids)), "a problem with two entries in LADDERS"
    assert sorted(set(ids) - PROBLEMS.keys()) == []
    assert sorted(PROBLEMS.keys() - set(ids)) == []
    assert all(isinstance(remedy.problem, Problem) for remedy in LADDERS), "name problems by their object"


def test_a_report_only_problem_says_why_and_a_ladder_has_steps():
    for remedy in LADDERS:
        if remedy.steps:
            assert not remedy.report_only, remedy.problem
        else:
            assert len(remedy.report_only) > 20, f"{remedy.problem}: report only, and why?"
            assert remedy.problem not in CONFIRMS, f"{remedy.problem}: nothing to confirm for a report"


def test_every_problem_is_a_row_of_the_readme_table():
    assert sorted(documented()) == sorted(PROBLEMS)


def test_every_problem_has_its_class_and_crash_loops_are_named_once():
    assert CLASSES == {problem: problem.klass for problem in PROBLEMS.values()}
    assert all(isinstance(c, ProblemClass) for c in CLASSES.values())
    assert crash_loop_problem("containerd.service") in PROBLEMS
    assert crash_loop_problem("kubelet.service") in PROBLEMS
    assert problem_class(crash_loop_problem("kubelet.service")) is ProblemClass.KUBELET
    # a watched unit nodemedic has no ladder for: its crash loop is the runtime's
    assert problem_class(crash_loop_problem("cri-o.service")) is ProblemClass.RUNTIME
