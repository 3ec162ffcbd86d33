import dataclasses
import json

import pytest

from nodemedic.config import ConfigError, load_config
from nodemedic.config.tomlfile import locate_keys
from nodemedic.hostroot import HostRoot
from tests.unit.helpers import run_cli, write


def test_defaults_alone_are_a_complete_valid_config(tmp_path):
    loaded = load_config(HostRoot(tmp_path))
    assert loaded.settings.daemon.mode == "repair"
    assert loaded.settings.policy.protected_paths == ("/srv/media", "/mnt/media")
    assert loaded.settings.policy.cooldown == 30.0
    assert len(loaded.files) == 1


def test_settings_are_immutable(tmp_path):
    settings = load_config(HostRoot(tmp_path)).settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.daemon.mode = "observe"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.problems["x"] = None  # type: ignore[index]


def test_dropins_merge_in_lexical_order_and_last_key_wins(tmp_path):
    write(tmp_path, "/etc/nodemedic/nodemedic.toml", '[policy]\nattempt_budget = 7\ncooldown = "1m"\n')
    write(tmp_path, "/etc/nodemedic/conf.d/20-b.toml", "[policy]\nattempt_budget = 9\n")
    write(tmp_path, "/etc/nodemedic/conf.d/10-a.toml", "[policy]\nattempt_budget = 8\nallow_destructive = true\n")
    loaded = load_config(HostRoot(tmp_path))
    policy = loaded.settings.policy
    assert policy.attempt_budget == 9
    assert policy.cooldown == 60.0
    assert policy.allow_destructive is True
    # deep merge: untouched keys of the same table keep their vendor value
    assert policy.quiet_period == 300.0
    origin = loaded.origins[("policy", "attempt_budget")]
    assert origin.path.name == "20-b.toml" and origin.line == 2
    assert loaded.origins[("policy", "cooldown")].path.name == "nodemedic.toml"


def test_non_toml_dropins_are_ignored_with_a_warning(tmp_path):
    write(tmp_path, "/etc/nodemedic/conf.d/10-a.toml.dpkg-old", "[policy]\nattempt_budget = 'x'\n")
    warnings: list[str] = []
    loaded = load_config(HostRoot(tmp_path), warnings.append)
    assert loaded.settings.policy.attempt_budget == 3
    assert len(warnings) == 1 and "10-a.toml.dpkg-old" in warnings[0]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[policy]\n\ncooldwn = 3\n", 3, "unknown key 'policy.cooldwn'"),
        ("[daemon]\nmode = 'fix'\n", 2, "expected one of 'repair', 'observe'"),
        ("[policy]\nattempt_budget = '3'\n", 2, "expected an integer"),
        ("[policy]\ncooldown = 'soon'\n", 2, "not a duration"),
        ("[policy]\nprotected_paths = '/srv'\n", 2, "a list of strings"),
        ("[daemon]\nmode = \n", 2, "invalid TOML"),
        ("[nonsense]\nx = 1\n", 1, "unknown key 'nonsense'"),
        ("[problems.cni-config-missing]\nbudget = 1\n", 2, "unknown key 'problems.cni-config-missing.budget'"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, text, line, fragment):
    path = write(tmp_path, "/etc/nodemedic/conf.d/50-x.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(HostRoot(tmp_path))
    [problem] = caught.value.problems
    assert problem.path == path
    assert problem.line == line
    assert fragment in problem.message


def test_non_utf8_config_is_a_clear_error(tmp_path):
    path = write(tmp_path, "/etc/nodemedic/nodemedic.toml", "")
    path.write_bytes(b"[daemon]\nmode = \"\xff\"\n")
    with pytest.raises(ConfigError) as caught:
        load_config(HostRoot(tmp_path))
    assert str(caught.value) == f"{path}:2: not valid UTF-8"


def test_all_errors_of_all_files_are_reported_together(tmp_path):
    write(tmp_path, "/etc/nodemedic/nodemedic.toml", "[policy]\nbogus = 1\n")
    write(tmp_path, "/etc/nodemedic/conf.d/a.toml", "[daemon]\nunits = [1]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(HostRoot(tmp_path))
    assert [p.path.name for p in caught.value.problems] == ["nodemedic.toml", "a.toml"]


def test_locate_keys_handles_dotted_keys_and_multiline_strings():
    text = 'a = 1\n[t]\nx.y = """\nz = 2\n"""\nw = 3\n[t.sub]\nq = 1\n'
    lines = locate_keys(text)
    assert lines[("a",)] == 1
    assert lines[("t", "x", "y")] == 3
    assert ("t", "z") not in lines
    assert lines[("t", "w")] == 6
    assert lines[("t", "sub", "q")] == 8


def test_check_config_cli_exit_codes(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "check-config")
    assert code == 0 and "configuration valid" in out
    path = write(tmp_path, "/etc/nodemedic/conf.d/10.toml", "[problems.no-such-problem]\nenabled = false\n")
    code, _, err = run_cli(capsys, "--root", str(tmp_path), "check-config")
    assert code == 1
    assert err.strip() == f"{path}:1: unknown problem 'no-such-problem'"


def test_config_show_prints_merged_toml_and_origins(tmp_path, capsys):
    write(tmp_path, "/etc/nodemedic/conf.d/10.toml", '[daemon]\nmode = "observe"\n')
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "config", "show")
    assert code == 0 and 'mode = "observe"' in out
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "config", "show", "--origins")
    [line] = [ln for ln in out.splitlines() if ln.startswith("daemon.mode ")]
    assert line.endswith(f"# {tmp_path}/etc/nodemedic/conf.d/10.toml:2")
    [line] = [ln for ln in out.splitlines() if ln.startswith("policy.cooldown ")]
    assert "defaults.toml:" in line or "/usr/share/nodemedic/nodemedic.toml:" in line


def test_config_show_on_broken_config_fails_cleanly(tmp_path, capsys):
    write(tmp_path, "/etc/nodemedic/nodemedic.toml", "[daemon\n")
    code, out, err = run_cli(capsys, "--root", str(tmp_path), "config", "show")
    assert code == 1 and out == ""
    assert "nodemedic.toml:1: invalid TOML" in err
    assert "Traceback" not in err


def test_json_is_not_needed_for_show_but_signatures_list_json_parses(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "signatures", "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert isinstance(data["signatures"], list)
