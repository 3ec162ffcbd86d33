import json
import os
import subprocess
import sys
import textwrap

import pytest

from nodemedic.config import ConfigError
from nodemedic.detector.matcher import Matcher
from nodemedic.detector.signatures import load_catalogue
from nodemedic.hostroot import HostRoot
from tests.conftest import REPO
from tests.unit.helpers import run_cli, write

GOOD = """\
id = "{id}"
problem = "demo-problem"
summary = "a demo"
units = ["demo.service"]
literal = "boom"
message = ['^boom (?:now|later)$', '^boom twice$']
[threshold]
count = 2
window = "5m"
"""


def sig(root, name, text=None, where="/etc/nodemedic/signatures.d"):
    return write(root, f"{where}/{name}.toml", text if text is not None else GOOD.format(id=name))


def test_operator_file_replaces_vendor_file_and_can_add_new_ones(tmp_path):
    vendor = {s.id for s in load_catalogue(HostRoot(tmp_path)).signatures}
    sig(tmp_path, "demo-extra")
    catalogue = load_catalogue(HostRoot(tmp_path))
    assert {s.id for s in catalogue.signatures} == vendor | {"demo-extra"}
    s = catalogue.by_id("demo-extra")
    assert s.matches("E0101 00:00:00.000000 1 x.go:1] boom now") and s.matches("boom twice")
    assert not s.matches("E0101 00:00:00.000000 1 x.go:1] boom never")
    assert s.threshold.count == 2 and s.threshold.window == 300


def test_empty_file_or_dev_null_link_masks_a_vendor_signature(tmp_path):
    # an installed layout: vendor defaults and signatures under /usr/share/nodemedic
    write(tmp_path, "/usr/share/nodemedic/nodemedic.toml", (REPO / "etc/nodemedic/defaults.toml").read_text())
    for name in ("demo-a", "demo-b", "demo-c"):
        sig(tmp_path, name, where="/usr/share/nodemedic/signatures.d")
    sig(tmp_path, "demo-a", "")
    os.symlink("/dev/null", tmp_path / "etc/nodemedic/signatures.d/demo-b.toml")
    catalogue = load_catalogue(HostRoot(tmp_path))
    assert set(catalogue.masked) == {"demo-a", "demo-b"}
    assert [s.id for s in catalogue.signatures] == ["demo-c"]
    assert catalogue.signatures[0].path == tmp_path / "usr/share/nodemedic/signatures.d/demo-c.toml"


@pytest.mark.parametrize(
    ("mutate", "line", "fragment"),
    [
        (lambda t: t.replace("'^boom twice$'", "'^boom (twice$'"), 6, "missing ): ^boom (twice$"),
        # RE2 refuses what it cannot match in linear time: a backreference, a lookahead
        (lambda t: t.replace("'^boom twice$'", "'^(boom) \\1$'"), 6, "rejected by RE2"),
        (lambda t: t.replace("message = [", "message = [\n  '^(?=boom)',"), 7, "invalid perl operator"),
        (lambda t: t.replace('literal = "boom"', 'literal = \'"boom"\''), 5, "literal must not contain quotes"),
        (lambda t: t.replace("[threshold]", 'level = ["loud"]\n[threshold]'), 7, "unknown level 'loud'"),
        (lambda t: t.replace('count = 2\n', 'count = "2"\n'), 8, "expected an integer"),
        (lambda t: t.replace('window = "5m"\n', 'window = "5m"\npersists = "1m"\n'), 7, "either count"),
        (lambda t: t + "colour = 'red'\n", 10, "unknown key 'threshold.colour'"),
        (lambda t: t.replace('problem = "demo-problem"', 'problem = "Demo Problem"'), 2, "lower-case"),
        (lambda t: t.replace('units = ["demo.service"]', 'units = ["demo"]'), 4, "not a unit name"),
        (lambda t: t.replace('id = "demo"', 'id = "other"'), 1, "must equal the file name"),
        (lambda t: t.replace('literal = "boom"\n', ""), 1, "missing key 'literal'"),
        (lambda t: t.replace("[threshold]", "[threshold"), 7, "invalid TOML"),
    ],
)
def test_bad_signature_is_a_clear_error_naming_file_and_line(tmp_path, capsys, mutate, line, fragment):
    path = sig(tmp_path, "demo", mutate(GOOD.format(id="demo")))
    with pytest.raises(ConfigError) as caught:
        load_catalogue(HostRoot(tmp_path))
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == (path, line), problem
    assert fragment in problem.message
    code, out, err = run_cli(capsys, "--root", str(tmp_path), "check-config")
    assert code == 1 and f"{path}:{line}: " in err and "Traceback" not in err


def test_matcher_filters_by_trusted_unit_and_origin(tmp_path):
    sig(tmp_path, "demo")
    matcher = Matcher([load_catalogue(HostRoot(tmp_path)).by_id("demo")])
    assert [s.id for s in matcher.match("boom twice", "demo.service")] == ["demo"]
    assert matcher.match("boom twice", "other.service") == []
    assert matcher.match("boom twice", "demo.service", origin="manager") == []
    assert [s.id for s in matcher.match("boom twice")] == ["demo"]
    # journald hands out bytes for non-UTF-8 messages
    assert [s.id for s in matcher.match(b"boom twice")] == ["demo"]
    assert matcher.match(b"\xff\xfe boom \xff", "demo.service") == []


def test_signatures_list_json_and_text(tmp_path, capsys):
    sig(tmp_path, "demo")
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "signatures", "list", "--json")
    assert code == 0
    [demo] = [s for s in json.loads(out)["signatures"] if s["id"] == "demo"]
    path = str(tmp_path / "etc/nodemedic/signatures.d/demo.toml")
    assert demo == {"id": "demo", "problem": "demo-problem", "units": ["demo.service"], "origin": "unit",
                    "threshold": {"count": 2, "window": "5m"}, "path": path}
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "signatures", "list")
    assert any(line.split()[:2] == ["demo", "demo-problem"] for line in out.splitlines())


def test_match_json_reads_a_file_including_binary_lines(tmp_path, capsys):
    sig(tmp_path, "demo")
    log = tmp_path / "lines.log"
    log.write_bytes(b"nothing here\nboom later\n\xff\xfe garbage \x00\nboom twice\n")
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "match", "--json", "--unit", "demo.service", str(log))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows == [{"line": 1, "signatures": []}, {"line": 2, "signatures": ["demo"]},
                    {"line": 3, "signatures": []}, {"line": 4, "signatures": ["demo"]}]


def test_match_missing_file_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--root", str(tmp_path), "match", str(tmp_path / "nope.log"))
    assert code == 1 and "nope.log" in err and "Traceback" not in err


def test_one_signature_matches_its_message_in_every_format(tmp_path):
    sig(tmp_path, "demo", GOOD.format(id="demo").replace(
        "message = ['^boom (?:now|later)$', '^boom twice$']",
        "message = ['^boom failed']\nerror = ['^disk on fire']\nlevel = ['error', 'warning']"))
    s = load_catalogue(HostRoot(tmp_path)).by_id("demo")
    for line in ('E0101 00:00:00.000001    7 x.go:1] "boom failed" err="disk on fire: really"',
                 'E0101 00:00:00.000001    7 x.go:1] boom failed: disk on fire',
                 'x.go:1] "boom failed" err="disk on fire"',
                 '{"ts":1.5,"caller":"x/x.go:1","msg":"boom failed","err":"disk on fire"}',
                 'time="2026-01-01T00:00:00Z" level=warning msg="boom failed" error="disk on fire"',
                 '{"error":"disk on fire","level":"error","msg":"boom failed","time":"2026-01-01T00:00:00Z"}',
                 'WARN[0000] boom failed                        error="disk on fire"',
                 'Nov 30 10:00:00 node-1 demo[42]: boom failed: disk on fire'):
        assert s.matches(line), line
    for line in ('I0101 00:00:00.000001    7 x.go:1] "boom failed" err="disk on fire"',  # level info
                 'time="2026-01-01T00:00:00Z" level=error msg="boom failed" error="disk is fine, fire elsewhere"',
                 'time="2026-01-01T00:00:00Z" level=error msg="boom fails" error="disk on fire"'):
        assert not s.matches(line), line


def test_a_legacy_whole_line_regex_still_works(tmp_path):
    sig(tmp_path, "demo", GOOD.format(id="demo").replace(
        "message = ['^boom (?:now|later)$', '^boom twice$']", "regex = ['^E\\d+ boom (?:now|later)$']"))
    s = load_catalogue(HostRoot(tmp_path)).by_id("demo")
    assert s.matches("E1 boom now") and not s.matches("E1 boom never")


# Before RE2, Python's backtracking `re` took 30 s at 93 % CPU on this pair (then the watchdog
# aborted the daemon); the line doubles the work per added "a", so 44 of them never finish.
CATASTROPHIC = """\
import sys
sys.path.insert(0, {daemon!r})
from nodemedic.detector.matcher import Matcher
from nodemedic.detector.signatures import load_catalogue
from nodemedic.hostroot import HostRoot
matcher = Matcher([load_catalogue(HostRoot({root!r})).by_id("evil")])
line = "a" * 44 + "!"
print(sorted(s.id for s in matcher.match(line, "demo.service")), sorted(s.id for s in matcher.match("aaaa")))
"""


@pytest.mark.parametrize("key", ["message", "error", "regex"])
def test_an_operator_pattern_cannot_backtrack_catastrophically(tmp_path, key):
    sig(tmp_path, "evil", GOOD.format(id="evil").replace("literal = \"boom\"", "literal = \"aaaa\"").replace(
        "message = ['^boom (?:now|later)$', '^boom twice$']", f"{key} = ['^(a+)+$']"))
    script = CATASTROPHIC.format(daemon=str(REPO / "daemon"), root=str(tmp_path))
    try:
        # a safety net so that a regression fails this test instead of hanging the suite; not a timing
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                              timeout=60, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("matching '^(a+)+$' against a 45-character line did not finish within 60 s")
    assert done.stdout.split("\n")[0] == "[] ['evil']"


def test_match_explain_shows_the_decoded_record_and_why(tmp_path, capsys):
    sig(tmp_path, "demo", GOOD.format(id="demo").replace(
        "message = ['^boom (?:now|later)$', '^boom twice$']", "message = ['^boom failed$']\nerror = ['^disk on fire']"))
    log = tmp_path / "lines.log"
    log.write_text('E0101 00:00:00.000001    7 x.go:1] "boom failed" err="disk on fire"\n'
                   'time="2026-01-01T00:00:00Z" level=error msg="boom failed" error="disk is fine"\n')
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "match", "--explain", "--unit", "demo.service", str(log))
    assert code == 0
    assert "line 1: klog-structured, level error, at x.go:1\n  msg: boom failed\n  err: disk on fire\n" in out
    assert "HIT demo: message '^boom failed$' hit, error '^disk on fire' hit field err" in out
    assert "line 2: logfmt, level error" in out
    assert "no  demo: message '^boom failed$' hit, no error pattern hit (field error, rest of the message)" in out
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "match", "--explain", "--json", str(log))
    first = json.loads(out.splitlines()[0])
    assert first["signatures"] == ["demo"] and first["decoded"]["fields"] == {"err": "disk on fire"}
    assert first["verdicts"]["demo"]["hit"] is True
