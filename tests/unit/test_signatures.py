import json
import os

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
regex = ['^E\\d+ boom (?:now|later)$', '^boom twice$']
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
    assert s.matches("E1 boom now") and s.matches("boom twice") and not s.matches("E1 boom never")
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
        (lambda t: t.replace("'^boom twice$'", "'^boom (twice$'"), 6, "invalid regex"),
        (lambda t: t.replace("'^boom twice$'", "'boom twice$'"), 6, "anchored"),
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
    log.write_bytes(b"nothing here\nE7 boom later\n\xff\xfe garbage \x00\nboom twice\n")
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "match", "--json", "--unit", "demo.service", str(log))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows == [{"line": 1, "signatures": []}, {"line": 2, "signatures": ["demo"]},
                    {"line": 3, "signatures": []}, {"line": 4, "signatures": ["demo"]}]


def test_match_missing_file_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--root", str(tmp_path), "match", str(tmp_path / "nope.log"))
    assert code == 1 and "nope.log" in err and "Traceback" not in err
