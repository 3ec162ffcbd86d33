"""The Debian packaging, the units and the operator's files, checked without building anything.

The .deb itself is built, linted and installed into a booted node by tests/node/test_package.py;
these are the fast consistency checks that catch drift between the code and what is shipped:
a config key missing from the operator's template or the man page, an unpinned or unhashed
wheel, a path the daemon writes that its sandbox does not allow.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from nodemedic.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = REPO / "etc/nodemedic/defaults.toml"
TEMPLATE = REPO / "etc/nodemedic/nodemedic.toml"
LOCK = REPO / "packaging/requirements.lock"
DEBIAN = REPO / "packaging/debian"
UNITS = REPO / "units"
MAN8 = REPO / "docs/man/nodemedic.8"
MAN5 = REPO / "docs/man/nodemedic.toml.5"

# Runtime dependencies Debian provides (Depends: python3-systemd, python3-dbus-next), not the venv.
FROM_DEBIAN = {"systemd-python": "python3-systemd", "dbus-next": "python3-dbus-next"}


# ---- helpers -------------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}}, with systemd's rules for lists:
    a repeated key appends, an empty assignment resets (and is kept as [""] when last)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path}:{number}: keep unit lines unwrapped"
        if line.startswith("["):
            assert line.endswith("]"), f"{path}:{number}: bad section header"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}:{number}: assignment outside a section"
        assert "=" in line, f"{path}:{number}: not a KEY=VALUE line: {line!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", key), f"{path}:{number}: bad key {key!r}"
        if value == "":
            current[key] = [""]
        else:
            current.setdefault(key, [])
            if current[key] == [""]:
                current[key] = []
            current[key].append(value)
    return sections


def words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split()]


def uncomment_template(text: str) -> str:
    """The operator's template with every commented-out option (and table header) enabled."""
    out = []
    for line in text.splitlines():
        if re.match(r"^#(\[[a-z_.-]+\]|[a-z_]+ = .*)$", line):
            line = line[1:]
        out.append(line)
    return "\n".join(out) + "\n"


def flatten(table: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    flat: dict[tuple[str, ...], object] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def lock_entries() -> list[tuple[Requirement, list[str]]]:
    text = LOCK.read_text().replace("\\\n", " ")
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --")
        hashes = [o.strip().removeprefix("hash=") for o in options if o.strip().startswith("hash=")]
        assert len(options) == len(hashes), f"requirements.lock: only --hash options allowed: {line!r}"
        entries.append((Requirement(spec.strip()), hashes))
    return entries


# ---- the operator's configuration template ---------------------------------------------------------


def test_template_lists_every_default_commented_out_with_its_default_value() -> None:
    defaults = flatten(tomllib.loads(DEFAULTS.read_text()))
    text = TEMPLATE.read_text()
    # As shipped, the template sets nothing: the vendor defaults are in force.
    assert flatten(tomllib.loads(text)) == {}
    enabled = flatten(tomllib.loads(uncomment_template(text)))
    missing = sorted(".".join(k) for k in defaults.keys() - enabled.keys())
    assert not missing, f"options of defaults.toml missing from etc/nodemedic/nodemedic.toml: {missing}"
    differ = {".".join(k): (enabled[k], v) for k, v in defaults.items() if enabled[k] != v}
    assert not differ, f"template value differs from the default (template, default): {differ}"
    extra = sorted(".".join(k) for k in enabled.keys() - defaults.keys() if k[0] != "problems")
    assert not extra, f"template options that are not in defaults.toml: {extra}"


def test_every_template_option_has_a_one_line_explanation_above_it() -> None:
    lines = TEMPLATE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^#[a-z_]+ = ", line):
            above = lines[number - 1]
            assert above.startswith("# ") and len(above) > 10, f"nodemedic.toml:{number + 1}: explain {line!r}"


def test_template_problem_overrides_match_the_model() -> None:
    from dataclasses import fields

    from nodemedic.config.model import ProblemSettings

    enabled = tomllib.loads(uncomment_template(TEMPLATE.read_text()))
    [(_name, example)] = enabled["problems"].items()
    assert set(example) == {f.name for f in fields(ProblemSettings)}


def test_template_is_a_valid_configuration_with_every_option_enabled(tmp_path: Path) -> None:
    from nodemedic.config import load_config
    from nodemedic.hostroot import HostRoot

    etc = tmp_path / "etc/nodemedic"
    etc.mkdir(parents=True)
    (etc / "nodemedic.toml").write_text(uncomment_template(TEMPLATE.read_text()))
    loaded = load_config(HostRoot(tmp_path), lambda _msg: None)
    assert loaded.settings.daemon.mode == "repair"


# ---- man pages -----------------------------------------------------------------------------------


def test_man_page_documents_every_configuration_key() -> None:
    man = MAN5.read_text()
    sections = re.split(r"^\.SH ", man, flags=re.M)
    documented: set[tuple[str, str]] = set()
    for section in sections:
        title = section.split("\n", 1)[0].strip()
        if title.startswith("[") and title.endswith("]"):
            for key in re.findall(r"^\.TP\n\.B ([a-z_]+)$", section, flags=re.M):
                documented.add((title[1:-1], key))
    defaults = flatten(tomllib.loads(DEFAULTS.read_text()))
    missing = sorted(".".join(k) for k in defaults if (k[0], k[1]) not in documented)
    assert not missing, f"keys not documented in docs/man/nodemedic.toml.5: {missing}"


def test_man_page_documents_every_command() -> None:
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    man = MAN8.read_text()
    commands = man[man.index(".SH COMMANDS"):man.index(".SH OPTIONS")]
    synopsis = man[man.index(".SH SYNOPSIS"):man.index(".SH DESCRIPTION")]
    for name in sub.choices:
        roff = re.escape(name.replace("-", "\\-"))  # roff writes a hyphen as \-
        assert re.search(rf"^\.B nodemedic {roff}(?![\w\\])", synopsis, flags=re.M), f"{name} missing from SYNOPSIS"
        assert re.search(rf"^\.BI? \"?{roff}(?![\w\\])", commands, flags=re.M), f"{name} missing from COMMANDS"


def test_man_pages_are_declared_and_versioned() -> None:
    declared = (DEBIAN / "nodemedic.manpages").read_text().split()
    assert declared == ["docs/man/nodemedic.8", "docs/man/nodemedic.toml.5"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for page in (MAN8, MAN5):
        th = next(line for line in page.read_text().splitlines() if line.startswith(".TH "))
        assert f'"nodemedic {version}"' in th, f"{page.name}: .TH should name nodemedic {version}"


# ---- the bundled, hash-checked wheels --------------------------------------------------------------


def test_lock_pins_every_wheel_by_version_and_sha256() -> None:
    entries = lock_entries()
    assert entries
    for req, hashes in entries:
        [spec] = req.specifier
        assert spec.operator == "==", f"{req}: pin an exact version"
        assert hashes, f"{req.name}: no --hash=sha256:..."
        for h in hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), f"{req.name}: bad hash {h!r}"
        assert not req.extras and req.marker is None, f"{req}: no extras or markers in the lock"
    names = [canonicalize_name(r.name) for r, _ in entries]
    assert len(names) == len(set(names)), "a package is pinned twice"


def test_lock_satisfies_every_runtime_dependency_of_pyproject() -> None:
    pinned = {canonicalize_name(r.name): next(iter(r.specifier)).version for r, _ in lock_entries()}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        if name in FROM_DEBIAN:
            continue
        assert name in pinned, f"{dep.name} (pyproject.toml) is not in packaging/requirements.lock"
        assert dep.specifier.contains(pinned[name], prereleases=True), \
            f"lock pins {name}=={pinned[name]}, pyproject.toml wants {dep.specifier}"


def test_lock_ships_what_the_node_tests_run() -> None:
    """The node test bed installs tests/node/node-requirements.txt; the .deb ships the lock. The
    same versions, or the tests test something other than what operators get."""
    pinned = {canonicalize_name(r.name): next(iter(r.specifier)).version for r, _ in lock_entries()}
    node = {}
    for line in (REPO / "tests/node/node-requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            node[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    assert pinned == node


def test_debian_dependencies_are_declared() -> None:
    control = (DEBIAN / "control").read_text()
    binary = control[control.index("Package: nodemedic"):]
    depends = re.search(r"^Depends:(.*?)(?=^\S)", binary + "\nEnd:", flags=re.M | re.S).group(1)
    for package in [*FROM_DEBIAN.values(), "${nodemedic:Python}", "${nodemedic:Systemd}", "${shlibs:Depends}"]:
        assert package in depends, f"Depends lacks {package}"
    # The substvars are filled from the build root's own python3 and the unit variant installed.
    rules = (DEBIAN / "rules").read_text()
    assert '-Vnodemedic:Python="python3 (>= $(PYVER)), python3 (<< $(PYNEXT))"' in rules
    assert '-Vnodemedic:Systemd="systemd (>= $(SYSTEMD_MIN))"' in rules
    assert re.search(r"^Architecture: amd64$", binary, flags=re.M)
    source = control[:control.index("Package: nodemedic")]
    for package in ("python3-venv", "python3-setuptools", "python3-wheel", *FROM_DEBIAN.values()):
        assert package in source, f"Build-Depends lacks {package}"


def test_copyright_covers_every_bundled_distribution() -> None:
    copyright_text = (DEBIAN / "copyright").read_text()
    site = "opt/venvs/nodemedic/lib/python3.*/site-packages/"
    for req, _ in lock_entries():
        dist_info = re.sub(r"[-_.]+", "_", req.name).lower()
        assert f"{site}{dist_info}-*" in copyright_text, f"debian/copyright has no Files: for {req.name}"
    licenses = set(re.findall(r"^License: (\S+)$", copyright_text, flags=re.M))
    paragraphs = set(re.findall(r"^License: (\S+)\n ", copyright_text, flags=re.M))
    assert licenses <= paragraphs, f"licenses without a License: paragraph: {licenses - paragraphs}"


def test_version_agrees_between_pyproject_and_changelog() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"nodemedic \(([^)]+)\) \w+; urgency=\w+", first)
    assert match, first
    assert match.group(1).split("-")[0] == version


# Installed only where systemd knows Type=notify-reload (>= 253: Debian 13 and later), as
# /usr/lib/systemd/system/nodemedic.service.d/notify-reload.conf (debian/rules, by suite).
NOTIFY_RELOAD_DROPIN = "nodemedic-notify-reload.conf"


def test_rules_installs_every_file_in_units() -> None:
    rules = (DEBIAN / "rules").read_text()
    for unit in sorted(UNITS.iterdir()):
        assert f"units/{unit.name}" in rules, f"debian/rules does not install units/{unit.name}"


def test_maintainer_scripts_keep_the_debhelper_token_and_fail_on_errors() -> None:
    for name in ("postinst", "prerm", "postrm"):
        text = (DEBIAN / f"nodemedic.{name}").read_text()
        assert text.startswith("#!/bin/sh\nset -e\n"), name
        assert "#DEBHELPER#" in text, name


def test_lintian_overrides_carry_a_reason() -> None:
    lines = (DEBIAN / "nodemedic.lintian-overrides").read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert number > 0 and lines[number - 1].startswith("# "), f"override without a reason: {line}"


# ---- units -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNITS / "nodemedic.service")


def test_service_is_a_notify_daemon_with_watchdog_reload_and_directories(service) -> None:
    s = service["Service"]
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["/usr/bin/nodemedic run"]
    # Not /bin/kill: procps is not in a minimal Debian 12; nodemedic's own command waits for the outcome.
    assert s["ExecReload"] == ["/usr/bin/nodemedic reload $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    # An invalid configuration exits 78 (EX_CONFIG) and is not restarted every RestartSec for ever.
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["WatchdogSec"] and s["WatchdogSec"][0] != "0"
    assert s["NotifyAccess"] == ["main"]
    defaults = tomllib.loads(DEFAULTS.read_text())["daemon"]
    assert f"/var/lib/{s['StateDirectory'][0]}" == defaults["state_dir"]
    assert f"/run/{s['RuntimeDirectory'][0]}" == defaults["runtime_dir"]
    assert service["Install"]["WantedBy"] == ["multi-user.target"]


def test_exit_status_of_a_config_error_is_the_one_the_unit_does_not_restart(service) -> None:
    from nodemedic.daemon import EX_CONFIG

    assert service["Service"]["RestartPreventExitStatus"] == [str(EX_CONFIG)]


def test_notify_reload_dropin_lets_systemd_signal_and_wait_instead_of_execreload() -> None:
    dropin = parse_unit(UNITS / NOTIFY_RELOAD_DROPIN)
    assert dropin == {"Service": {"Type": ["notify-reload"], "ReloadSignal": ["SIGHUP"], "ExecReload": [""]}}


def test_service_is_hardened(service) -> None:
    s = service["Service"]
    expected = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "NoNewPrivileges": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
        "ProtectHostname": "yes", "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native", "RestrictAddressFamilies": "AF_UNIX AF_NETLINK", "UMask": "0077",
        "IPAddressDeny": "any",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], f"{key}={s.get(key)}, expected {value}"
    assert s["CapabilityBoundingSet"] == [""], "the resident daemon needs no capability"
    # It reads the node's links (cni0) over netlink, so it shares the node's network namespace.
    assert "PrivateNetwork" not in s
    assert "@system-service" in words(s["SystemCallFilter"])


def test_service_may_write_exactly_where_the_daemon_writes(service) -> None:
    """Every default path a repair writes is writable in the sandbox (else it fails with EROFS),
    and nothing more. A writable path is a mount point in the daemon's namespace, pinned to the
    directory that was there at start: so it is the parent of a directory nodemedic watches (it
    must see that directory deleted, recreated or replaced by a symlink), and the parent of
    containerd's root, which a repair renames aside."""
    from nodemedic.repairs.sysctl import SYSCTL_FILE

    writable = {p.lstrip("-") for p in words(service["Service"]["ReadWritePaths"])}
    d = tomllib.loads(DEFAULTS.read_text())

    def parent(path: str) -> str:
        return str(PurePosixPath(path).parent)

    needed = {
        parent(d["paths"]["cni_conf_dir"]),
        parent(d["paths"]["containerd_root"]),
        parent(d["paths"]["containerd_config"]),
        parent(d["metrics"]["textfile"]),
        parent(SYSCTL_FILE),
        "/proc/sys/fs/inotify",
    }
    # Only the outermost: /var/lib covers /var/lib/prometheus/node-exporter.
    outermost = {p for p in needed if not any(q != p and PurePosixPath(q) in PurePosixPath(p).parents for q in needed)}
    assert writable == outermost


def test_step_template_is_a_oneshot_started_by_the_daemon() -> None:
    unit = parse_unit(UNITS / "nodemedic-step@.service")
    s = unit["Service"]
    assert s["Type"] == ["oneshot"]
    assert s["ExecStart"] == ["/usr/bin/nodemedic step %i"]
    assert "Install" not in unit, "instances are started over D-Bus, never enabled"


def test_catalog_is_well_formed() -> None:
    text = (UNITS / "nodemedic.catalog").read_text()
    ids = re.findall(r"^-- ([0-9a-f]{32})$", text, flags=re.M)
    assert ids and len(ids) == len(set(ids))
    for block in re.split(r"^-- [0-9a-f]{32}$", text, flags=re.M)[1:]:
        assert re.search(r"^Subject: \S", block, flags=re.M)
        assert re.search(r"^Defined-By: nodemedic$", block, flags=re.M)


def test_tmpfiles_creates_only_the_cni_dir_the_sandbox_needs() -> None:
    lines = [ln for ln in (DEBIAN / "nodemedic.tmpfiles").read_text().splitlines() if ln and not ln[0] == "#"]
    assert lines == ["d /etc/cni/net.d - - - -"]


# ---- one package per Debian release -------------------------------------------------------------

SUITES = {"bookworm": ("12", "3.11"), "trixie": ("13", "3.13"), "forky": ("14", "3.14")}
# The compiled wheels of the lock: one file per CPython ABI (the others are py3-none or abi3).
COMPILED = {"google-re2", "grpcio", "multidict", "pyahocorasick"}


def make_version(suite: str, **env: str) -> str:
    out = subprocess.run(["make", "-s", "--no-print-directory", "version", f"SUITE={suite}"], cwd=REPO,
                         capture_output=True, text=True, check=True, env={**os.environ, **env})
    return out.stdout.strip()


def dpkg_lt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0


def test_suite_versions_upgrade_from_debian_12_to_13_to_forky() -> None:
    upstream = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    versions = {suite: make_version(suite) for suite in SUITES}
    assert versions == {suite: f"{upstream}~deb{number}u1" for suite, (number, _) in SUITES.items()}
    # Debian's backports/security convention: older release < newer release < plain upstream.
    assert dpkg_lt(versions["bookworm"], versions["trixie"])
    assert dpkg_lt(versions["trixie"], versions["forky"])
    assert dpkg_lt(versions["forky"], upstream)
    # Each is an upgrade from the first release's plain 0.1.0 package, and a rebuild (u2) of one
    # release is an upgrade within it that still sorts below the next release.
    for version in versions.values():
        assert dpkg_lt("0.1.0", version)
    rebuilt = make_version("bookworm", NODEMEDIC_REV="2")
    assert rebuilt == f"{upstream}~deb12u2"
    assert dpkg_lt(versions["bookworm"], rebuilt) and dpkg_lt(rebuilt, versions["trixie"])


def test_make_refuses_an_unknown_suite() -> None:
    out = subprocess.run(["make", "-s", "version", "SUITE=buster"], cwd=REPO, capture_output=True, text=True,
                         check=False)
    assert out.returncode != 0 and "choose bookworm, trixie or forky" in out.stderr


def test_makefile_maps_each_suite_to_its_release_and_python() -> None:
    makefile = (REPO / "Makefile").read_text()
    for suite, (number, python) in SUITES.items():
        assert f"DEBIAN_{suite} := {number}\n" in makefile
        assert f"PYTHON_{suite} := {python}\n" in makefile


def test_lock_has_a_wheel_hash_for_each_suites_cpython() -> None:
    hashes = {canonicalize_name(r.name): h for r, h in lock_entries()}
    for name in COMPILED:
        # cp311, cp313, cp314: checked when written with `pip download --only-binary=:all:
        # --python-version 3.1X`; make deb for each suite fails on a missing one (--require-hashes).
        assert len(hashes[name]) == len(SUITES), f"{name}: {len(hashes[name])} hashes, want one per suite"
    for name, listed in hashes.items():
        if name not in COMPILED:
            assert len(listed) == 1, f"{name}: a pure-python (or abi3) wheel is shared by every suite"


def test_buildroot_takes_the_suites_from_the_makefile() -> None:
    script = (REPO / "packaging/buildroot").read_text()
    for suite in SUITES:
        assert suite in script
    # a build has no network and never changes the cached root
    assert "unshare --mount --propagation private --pid --fork --net" in script
    assert 'mount -o remount,bind,ro "$root"' in script


def test_rules_choose_unit_dir_and_variant_by_suite() -> None:
    rules = (DEBIAN / "rules").read_text()
    assert "SUITE := $(shell dpkg-parsechangelog -S Distribution)" in rules
    assert "UNITDIR := $(if $(filter bookworm,$(SUITE)),lib,usr/lib)/systemd/system" in rules
    assert "SITE := $(DEST)/lib/python$(PYVER)/site-packages" in rules
    # systemd >= 253 (trixie, forky): the Type=notify-reload drop-in, and the dependency to match
    assert "NOTIFY_RELOAD := units/nodemedic-notify-reload.conf" in rules
    assert "ifneq ($(filter trixie forky sid unstable,$(SUITE)),)" in rules
    assert "$(PKGDIR)/$(UNITDIR)/nodemedic.service.d/notify-reload.conf" in rules
    assert "SYSTEMD_MIN := $(if $(DROP_IN),253,252)" in rules


def test_the_kube_unit_runs_as_the_user_its_bus_policy_lets_own_org_nodemedic_kube1() -> None:
    """nodemedic-kube.service serves the fleet guard's org.nodemedic.Kube1: the bus policy must
    let the unit's user own it, and no one else; the .deb installs the policy."""
    import xml.etree.ElementTree as ET

    unit = parse_unit(UNITS / "nodemedic-kube.service")["Service"]
    user = unit.get("User", ["root"])[-1]
    assert "DynamicUser" not in unit or unit["DynamicUser"][-1] in ("no", "false")
    policy = ET.parse(UNITS / "org.nodemedic.Kube1.conf").getroot()
    owners = {p.get("user") for p in policy.iter("policy") for allow in p.iter("allow")
              if allow.get("own") == "org.nodemedic.Kube1"}
    assert owners == {user}
    rules = (DEBIAN / "rules").read_text()
    assert "units/org.nodemedic.Kube1.conf $(PKGDIR)/usr/share/dbus-1/system.d/org.nodemedic.Kube1.conf" in rules
