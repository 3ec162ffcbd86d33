"""Configuration that parses but cannot work is refused at load time with PATH:LINE (issue 18,
items 2 and 9), and `check-config` judges exactly as the daemon does: both call the daemon's
loader, nodemedic.runconfig.load."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import pytest

from nodemedic.config import ConfigError, Settings, load_config
from nodemedic.config.schema import Seconds
from nodemedic.hostroot import HostRoot
from tests.unit.helpers import run_cli, write

DROPIN = "/etc/nodemedic/conf.d/50-x.toml"


def check_config(capsys, root: Path) -> tuple[int, list[str]]:
    code, _, err = run_cli(capsys, "--root", str(root), "check-config")
    return code, [line for line in err.splitlines() if not line.startswith("nodemedic: warning:")]


def daemon_problems(root: Path) -> list[str]:
    """What the daemon's own loader (start and reload) says about this tree."""
    from nodemedic.daemon import load

    try:
        load(HostRoot(root))
    except ConfigError as err:
        return [str(p) for p in err.problems]
    return []


def refused(capsys, root: Path) -> list[str]:
    """check-config's problems, asserted to be exactly the daemon's."""
    code, lines = check_config(capsys, root)
    assert lines == daemon_problems(root), "check-config and the daemon must judge alike"
    assert code == (1 if lines else 0)
    assert not any("Traceback" in line for line in lines)
    return lines


# ---- item 2: names are names, paths are absolute, normalised and inside what they are for --------

@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[cni]\nplaceholder_file = "../../containerd/config.toml"\n', "plain file name without '/'"),
        ('[cni]\nplaceholder_file = "/etc/containerd/config.toml"\n', "plain file name without '/'"),
        ('[cni]\nplaceholder_file = "sub/zz.conflist"\n', "plain file name without '/'"),
        ('[cni]\nplaceholder_file = ".."\n', "must be a file name"),
        ('[cni]\nplaceholder_file = "."\n', "must be a file name"),
        ('[cni]\nplaceholder_file = ""\n', "must be a file name"),
        ('[cni]\nplaceholder_file = "zz-placeholder.conf"\n', "ending in '.conflist'"),
        ('[cni]\nplaceholder_subnet = "10.244.0.1/16"\n', "not a network"),
        ('[daemon]\nstate_dir = "var/lib/nodemedic"\n', "must be an absolute path"),
        ('[daemon]\nstate_dir = "/var/lib/nodemedic/"\n', "write '/var/lib/nodemedic'"),
        ('[daemon]\nruntime_dir = "/run/../run/nodemedic"\n', "must be a normalised path"),
        ('[daemon]\nunits = ["kubelet"]\n', "not a systemd unit name"),
        ('[daemon]\nunits = []\n', "at least 1 item"),
        ('[paths]\ncni_conf_dir = "etc/cni/net.d"\n', "must be an absolute path"),
        ('[paths]\ncni_conf_dir = "/"\n', "must not be / itself"),
        ('[paths]\ncontainerd_root = "/var/lib//containerd"\n', "must be a normalised path"),
        ('[paths]\ncontainerd_config = "config.toml"\n', "must be an absolute path"),
        ('[paths]\ncontainerd_socket = ""\n', "must be an absolute path"),
        ('[paths]\ncni_bin_dir = "/opt/cni/bin/."\n', "must be a normalised path"),
        ('[policy]\nprotected_paths = ["/srv/media", "media"]\n', "item 2: must be an absolute path"),
        ('[policy]\nprotected_paths = ["/srv/../mnt/media"]\n', "write '/mnt/media'"),
        ('[policy]\nprotected_paths = ["/"]\n', "must not be / itself"),
        ('[metrics]\ntextfile = "nodemedic.prom"\n', "must be an absolute path"),
        ('[metrics]\ntextfile = "/var/lib/node-exporter/nodemedic.txt"\n', "ending in '.prom'"),
        ('[repoint]\nfilesystems = ["ext4", "../x"]\n', "not a filesystem type"),
    ],
)
def test_names_and_paths_are_refused_with_file_and_line(tmp_path, capsys, text, fragment):
    path = write(tmp_path, DROPIN, "# a comment\n" + text)
    [line] = refused(capsys, tmp_path)
    assert line.startswith(f"{path}:3: "), line
    assert fragment in line, line


def test_valid_names_and_paths_pass_and_empty_metrics_textfile_switches_metrics_off(tmp_path, capsys):
    write(tmp_path, DROPIN, '[cni]\nplaceholder_file = "99-mine.conflist"\nplaceholder_subnet = "fd00:10::/64"\n'
          '[metrics]\ntextfile = ""\n[policy]\nprotected_paths = []\n')
    assert refused(capsys, tmp_path) == []


def test_own_files_inside_a_protected_path_are_refused_where_the_later_key_was_set(tmp_path, capsys):
    path = write(tmp_path, DROPIN, '[policy]\nprotected_paths = ["/var/lib"]\n')
    lines = refused(capsys, tmp_path)
    assert len(lines) == 2, lines  # state_dir and the metrics textfile, both under /var/lib
    assert all(line.startswith(f"{path}:2: ") for line in lines), lines
    assert "daemon.state_dir /var/lib/nodemedic overlaps protected path /var/lib" in lines[0]
    assert "daemon.state_dir is set at " in lines[0]


# ---- item 9: numbers with bounds, durations in order ---------------------------------------------

@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[journal]\nbatch_size = 0\n", "journal.batch_size: must be at least 1, got 0"),
        ("[journal]\nbatch_size = 1000000000\n", "must be at most 100000"),
        ('[journal]\nreplay_window = "400d"\n', 'must be at most "7d"'),
        ("[policy]\nattempt_budget = 0\n", "must be at least 1"),
        ("[policy]\nverify_attempts = -1\n", "must be at least 1"),
        ('[policy]\nstep_timeout = "0s"\n', 'must be at least "1s"'),
        ('[policy]\ncooldown = "2d"\n', 'must be at most "1d"'),
        ("[imagefs]\nwarmup_attempts = 0\n", "must be at least 1"),
        ('[ingest]\nstale_age = "0s"\n', 'must be at least "1s"'),
        ("[join]\nattempts = 0\n", "must be at least 1"),
        ("[join]\ngentle_cleanups = -1\n", "must be at least 0"),
        ('[repoint]\nprogress_interval = "0s"\n', "must be at least"),
        ("[problems.cni-config-missing]\nattempt_budget = 0\n", "must be at least 1"),
    ],
)
def test_numbers_out_of_bounds_are_refused_with_file_and_line(tmp_path, capsys, text, fragment):
    path = write(tmp_path, DROPIN, "\n" + text)
    [line] = refused(capsys, tmp_path)
    assert line.startswith(f"{path}:3: "), line
    assert fragment in line, line


def _numeric_leaves(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, tuple[typing.Any, ...]]]:
    """(dotted key, its Annotated checks) of every int, float and duration setting."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_leaves(tp, f"{prefix}{field.name}.")
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        base, *checks = typing.get_args(tp) if typing.get_origin(tp) is typing.Annotated else (tp,)
        if base in (int, float, Seconds):
            yield f"{prefix}{field.name}", tuple(checks)


def test_every_number_and_duration_key_has_bounds():
    from nodemedic.config.constraints import Range
    from nodemedic.config.model import ProblemSettings

    numeric = dict([*_numeric_leaves(Settings), *_numeric_leaves(ProblemSettings, "problems.NAME.")])
    assert {"journal.batch_size", "policy.cooldown", "problems.NAME.attempt_budget"} <= set(numeric)
    for name, checks in numeric.items():
        ranges = [c for c in checks if isinstance(c, Range)]
        assert ranges and ranges[0].low is not None and ranges[0].high is not None, f"{name} has no bounds"


# ---- item 9: files that cannot be read are errors, not skipped -----------------------------------

def test_deeply_nested_inline_tables_are_a_clear_error(tmp_path, capsys):
    deep = "x = " + "{a = " * 400 + "1" + "}" * 400 + "\n"
    path = write(tmp_path, DROPIN, "[daemon]\n" + deep)
    [line] = refused(capsys, tmp_path)
    assert line == f"{path}:2: arrays or tables nested more than 32 deep"


def test_deeply_nested_arrays_in_a_signature_are_a_clear_error(tmp_path, capsys):
    path = write(tmp_path, "/etc/nodemedic/signatures.d/mine.toml", "\n\nregex = " + "[" * 500 + "]" * 500 + "\n")
    [line] = refused(capsys, tmp_path)
    assert line == f"{path}:3: arrays or tables nested more than 32 deep"


def test_a_dropin_the_daemon_cannot_read_is_refused_even_when_checked_by_root(tmp_path, capsys):
    path = write(tmp_path, DROPIN, '[daemon]\nmode = "observe"\n')
    path.chmod(0)
    [line] = refused(capsys, tmp_path)
    assert line.startswith(f"{path}:0: file {path}: mode 0000"), line
    assert "may not read it" in line


def test_a_conf_dir_the_daemon_cannot_list_is_refused(tmp_path, capsys):
    write(tmp_path, DROPIN, '[daemon]\nmode = "observe"\n')
    directory = tmp_path / "etc/nodemedic/conf.d"
    directory.chmod(0o300)
    try:
        [line] = refused(capsys, tmp_path)
    finally:
        directory.chmod(0o755)
    assert line.startswith(f"{directory}:0: directory {directory}: mode 0300"), line


def test_a_signature_the_daemon_cannot_read_is_refused(tmp_path, capsys):
    shipped = HostRoot(tmp_path).vendor_dir() / "signatures.d" / "kubelet-swap-enabled.toml"
    path = write(tmp_path, "/etc/nodemedic/signatures.d/kubelet-swap-enabled.toml", shipped.read_text())
    path.chmod(0o200)
    [line] = refused(capsys, tmp_path)
    assert line.startswith(f"{path}:0: file {path}: mode 0200"), line


@pytest.mark.parametrize("directory", ["/etc/nodemedic/conf.d", "/etc/nodemedic/signatures.d"])
@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("dangling", "a dangling symlink (to /nowhere.toml)"), ("loop", "a symlink loop"),
     ("directory", "a directory, not a file"), ("fifo", "not a regular file")],
)
def test_unreadable_entries_are_errors_not_skipped(tmp_path, capsys, directory, kind, fragment):
    base = tmp_path / directory.lstrip("/")
    base.mkdir(parents=True)
    entry = base / "x.toml"
    if kind == "dangling":
        entry.symlink_to("/nowhere.toml")
    elif kind == "loop":
        entry.symlink_to("y.toml")
        (base / "y.toml").symlink_to("x.toml")
    elif kind == "directory":
        entry.mkdir()
    else:
        os.mkfifo(entry)
    lines = refused(capsys, tmp_path)
    assert f"{entry}:0: {fragment}" in lines, lines


def test_masked_signatures_and_dev_null_config_are_fine(tmp_path, capsys):
    write(tmp_path, "/etc/nodemedic/signatures.d/kubelet-swap-enabled.toml", "")
    (tmp_path / "etc/nodemedic/signatures.d/kubelet-disk-pressure-eviction.toml").symlink_to("/dev/null")
    (tmp_path / "etc/nodemedic/conf.d").mkdir(parents=True)
    (tmp_path / "etc/nodemedic/conf.d/10-off.toml").symlink_to("/dev/null")
    assert refused(capsys, tmp_path) == []
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "check-config")
    assert code == 0 and ", 2 masked" in out


def test_a_main_config_that_is_a_dangling_link_is_an_error(tmp_path, capsys):
    (tmp_path / "etc/nodemedic").mkdir(parents=True)
    main = tmp_path / "etc/nodemedic/nodemedic.toml"
    main.symlink_to("/gone.toml")
    assert refused(capsys, tmp_path) == [f"{main}:0: a dangling symlink (to /gone.toml)"]


# ---- item 9: problem names, as the daemon names them ---------------------------------------------

def test_crash_loop_problems_are_known_to_check_config_and_daemon_alike(tmp_path, capsys):
    from nodemedic.detector.conditions import unit_condition
    from nodemedic.sources.events import UnitChanged

    write(tmp_path, DROPIN, "[problems.containerd-crash-loop]\nenabled = false\n"
                            "[problems.kubelet-crash-loop]\nattempt_budget = 1\n")
    assert refused(capsys, tmp_path) == []
    # A crash loop is named after the unit (conditions.unit_condition): a watched unit of the
    # operator's own has one too, and only a watched one.
    path = write(tmp_path, "/etc/nodemedic/conf.d/60-docker.toml", "[problems.docker-crash-loop]\nenabled = false\n")
    assert refused(capsys, tmp_path) == [f"{path}:1: unknown problem 'docker-crash-loop'"]
    write(tmp_path, "/etc/nodemedic/conf.d/55-units.toml",
          '[daemon]\nunits = ["containerd.service", "kubelet.service", "docker.service"]\n')
    assert refused(capsys, tmp_path) == []
    change = UnitChanged(unit="docker.service", active_state="activating", sub_state="auto-restart", n_restarts=3,
                         result="exit-code")
    suspicion = unit_condition(change, "containerd.service")
    assert suspicion is not None and suspicion.problem == "docker-crash-loop"


def test_unknown_problem_is_refused_by_both(tmp_path, capsys):
    path = write(tmp_path, DROPIN, "[problems.no-such-problem]\nenabled = false\n")
    assert refused(capsys, tmp_path) == [f"{path}:1: unknown problem 'no-such-problem'"]


# ---- one validation path -------------------------------------------------------------------------

def test_check_config_and_config_show_call_the_daemons_loader(tmp_path, capsys, monkeypatch):
    import nodemedic.daemon
    import nodemedic.runconfig

    assert nodemedic.daemon.load is nodemedic.runconfig.load
    calls = []
    real = nodemedic.runconfig.load

    def spy(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(nodemedic.runconfig, "load", spy)
    assert run_cli(capsys, "--root", str(tmp_path), "check-config")[0] == 0
    assert run_cli(capsys, "--root", str(tmp_path), "config", "show")[0] == 0
    assert len(calls) == 2


def test_load_config_alone_still_checks_values(tmp_path):
    write(tmp_path, DROPIN, "[journal]\nbatch_size = 0\n")
    with pytest.raises(ConfigError):
        load_config(HostRoot(tmp_path))


# ---- the manual says what the code enforces ------------------------------------------------------

MAN5 = Path(__file__).resolve().parents[2] / "docs/man/nodemedic.toml.5"


def _man_entry(key: str) -> str:
    """The text of one key's entry in nodemedic.toml(5), roff as written."""
    section, name = key.rsplit(".", 1)
    man = MAN5.read_text()
    start = man.index(f".SH [{section}]\n")
    end = man.find("\n.SH ", start + 1)
    body = man[start:end]
    entry = body.index(f".TP\n.B {name}\n")
    following = body.find("\n.TP\n", entry + 4)
    return body[entry:following if following >= 0 else None]


def test_the_manual_gives_every_bound_and_marks_every_start_only_key():
    from nodemedic.config.constraints import Range
    from nodemedic.config.live import RESTART_ONLY
    from nodemedic.config.model import ProblemSettings

    for name, checks in [*_numeric_leaves(Settings), *_numeric_leaves(ProblemSettings, "problems.NAME.")]:
        [bounds] = [c for c in checks if isinstance(c, Range)]
        assert bounds.describe() in _man_entry(name), f"nodemedic.toml(5) does not say {name}: {bounds.describe()}"
    for key in RESTART_ONLY:
        assert "Read only at start" in _man_entry(".".join(key)), f"{'.'.join(key)} is not marked read only at start"
