"""The `nodemedic` command line: argument parsing and small read-only commands."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import tomlkit

from nodemedic import __version__
from nodemedic.config import ConfigError, load_config
from nodemedic.detector.matcher import Matcher, as_text
from nodemedic.detector.signatures import load_catalogue
from nodemedic.durations import format_duration
from nodemedic.flows import commands as flow_commands
from nodemedic.flows import mirrors_cli
from nodemedic.hostroot import HostRoot
from nodemedic.kube import cli as kube_cli

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def _warn(message: str) -> None:
    print(f"nodemedic: warning: {message}", file=sys.stderr)


def _root(args: argparse.Namespace) -> HostRoot:
    return HostRoot(Path(args.root)) if args.root else HostRoot()


def cmd_check_config(args: argparse.Namespace) -> int:
    # The daemon's own loader (runconfig.load), not a copy of it: what passes here, the daemon
    # takes at start and on reload, and what it refuses is refused here with the same words.
    from nodemedic.runconfig import load

    loaded = load(_root(args), _warn)  # ConfigError: main() prints each problem, exit 1
    catalogue = loaded.catalogue
    print(f"configuration valid: {len(loaded.config.files)} file(s), {len(catalogue.signatures)} signature(s)"
          + (f", {len(catalogue.masked)} masked" if catalogue.masked else ""))
    return EXIT_OK


def _flatten(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (name,))
        else:
            yield prefix + (name,), value


def cmd_config_show(args: argparse.Namespace) -> int:
    from nodemedic.runconfig import load

    # Only a configuration the daemon would take is shown: an invalid one fails as check-config.
    loaded = load(_root(args), _warn).config
    if not args.origins:
        sys.stdout.write(tomlkit.dumps(loaded.merged))
        return EXIT_OK
    rows = [(".".join(key), tomlkit.item(value).as_string(), str(loaded.origins[key]))
            for key, value in _flatten(loaded.merged)]
    width = max(len(k) + len(v) for k, v, _ in rows) + 3
    for key, value, origin in rows:
        print(f"{key} = {value}".ljust(width) + f"  # {origin}")
    return EXIT_OK


def cmd_signatures_list(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(_root(args))
    records = [{"id": s.id, "problem": s.problem, "units": sorted(s.units), "origin": s.origin,
                "threshold": _threshold_json(s.threshold), "path": str(s.path)} for s in catalogue.signatures]
    if args.json:
        json.dump({"signatures": records, "masked": list(catalogue.masked)}, sys.stdout, indent=2)
        print()
        return EXIT_OK
    for s in catalogue.signatures:
        print(f"{s.id:42} {s.problem:26} {','.join(sorted(s.units)):36} {s.threshold.describe()}")
    for name in catalogue.masked:
        print(f"{name:42} (masked)")
    return EXIT_OK


def _threshold_json(threshold: Any) -> dict[str, Any]:
    if threshold.persists is not None:
        return {"persists": format_duration(threshold.persists)}
    return {"count": threshold.count, "window": format_duration(threshold.window)}


def _input_lines(stream: Any) -> Iterator[str]:
    for raw in stream:
        yield as_text(raw).rstrip("\r\n")


def cmd_match(args: argparse.Namespace) -> int:
    matcher = Matcher(load_catalogue(_root(args)).signatures)
    if args.unit and args.unit not in matcher.units():
        _warn(f"no signature watches unit {args.unit!r}")
    out: TextIO = sys.stdout
    source = sys.stdin.buffer if args.file in (None, "-") else open(args.file, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(_input_lines(source), start=1):
            if args.explain:
                out.write(_explain(matcher, number, line, args.unit, args.json))
                continue
            ids = [s.id for s in matcher.match(line, args.unit)]
            if args.json:
                out.write(json.dumps({"line": number, "signatures": ids}) + "\n")
            elif ids:
                out.write(f"{number}: {' '.join(ids)}\n")
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    return EXIT_OK


def _explain(matcher: Matcher, number: int, line: str, unit: str | None, as_json: bool) -> str:
    """The decoded record, and per signature which pattern hit or why none did: what an
    operator needs to write a signature for a line they pasted."""
    record, verdicts = matcher.explain(line, unit)
    near = [(s, v) for s, v in verdicts if not v.reason.startswith("literal ")]
    absent = len(verdicts) - len(near)
    if as_json:
        return json.dumps({"line": number, "signatures": [s.id for s, v in verdicts if v.hit],
                           "decoded": {"format": record.format, "level": record.level, "msg": record.msg,
                                       "fields": dict(record.fields), "source": record.source},
                           "verdicts": {s.id: {"hit": v.hit, "reason": v.reason} for s, v in near},
                           "literal_absent": absent}) + "\n"
    lines = [f"line {number}: {record.format}" + (f", level {record.level}" if record.level else "")
             + (f", at {record.source}" if record.source else ""), f"  msg: {record.msg}"]
    lines += [f"  {key}: {value}" for key, value in record.details()]
    lines += [f"  {'HIT' if v.hit else 'no '} {s.id}: {v.reason}" for s, v in near]
    lines.append(f"  {absent} other signature(s): their literal is not in the line")
    return "\n".join(lines) + "\n"


def cmd_doctor(args: argparse.Namespace) -> int:
    from nodemedic.doctor import run_doctor

    root = _root(args)
    diagnosis = run_doctor(load_config(root, _warn).settings, root)
    if args.json:
        json.dump(diagnosis.as_json(), sys.stdout, indent=2)
        print()
    else:
        for finding in diagnosis.findings:
            if finding.skipped:  # never "[ok ]": nothing was looked at
                print(f"[skip] {finding.check}: {finding.detail}: {finding.skipped}")
                continue
            mark = "ok " if finding.ok else "BAD"
            print(f"[{mark}] {finding.check}: {finding.detail}")
            if finding.problem:
                print(f"      problem {finding.problem}:")
                for line in finding.plan:
                    print(f"        {line}")
        print("healthy" if diagnosis.healthy else "problems found")
    return EXIT_OK if diagnosis.healthy else EXIT_INVALID


EXIT_NOT_RUNNING = 3
EXIT_DENIED = 4


def _steer(member: str, signature: str = "", body: list[Any] | None = None) -> tuple[int, list[Any]]:
    """Call the running daemon; (exit code, reply) with a clear message on failure."""
    import asyncio

    from nodemedic.report import dbus_api

    try:
        return EXIT_OK, asyncio.run(dbus_api.call(member, signature, body))
    except dbus_api.NotRunning as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING, []
    except dbus_api.Denied as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return EXIT_DENIED, []
    except dbus_api.Refused as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return EXIT_INVALID, []


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from nodemedic.report import dbus_api

    try:
        props = asyncio.run(dbus_api.properties())
    except dbus_api.NotRunning as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    problems = [dict(zip(("problem", "state", "step", "attempts", "last_change", "detail"), row, strict=True))
                for row in props["Problems"]]
    active = [p for p in problems if p["state"] not in ("idle", "healed")]
    containerd = _containerd_summary(_root(args))
    if args.json:
        json.dump({"state": props["State"], "mode": props["Mode"], "problems": problems,
                   "containerd": containerd.as_json()}, sys.stdout, indent=2)
        print()
    else:
        print(f"nodemedic: {props['State']}")
        print(f"mode: {props['Mode']}")
        for line in _containerd_lines(containerd):
            print(line)
        if problems:
            print(f"{'PROBLEM':28} {'STATE':10} {'STEP':26} {'ATTEMPTS':>8}  DETAIL")
            for p in problems:
                print(f"{p['problem']:28} {p['state']:10} {p['step'] or '-':26} {p['attempts']:>8}  {p['detail']}")
    return EXIT_INVALID if active else EXIT_OK


def _containerd_summary(root: HostRoot) -> Any:
    """containerd's version, config version and deprecations, asked directly (CRI and the file),
    not through the daemon: `status` shows them even for a daemon that predates the question."""
    import asyncio

    from nodemedic.probes import containerd_info
    from nodemedic.probes.cri import CriClient

    try:
        paths = load_config(root, lambda _msg: None).settings.paths
    except ConfigError as err:
        return containerd_info.ContainerdInfo(errors=[f"configuration: {err}"])

    async def ask() -> containerd_info.ContainerdInfo:
        async with CriClient(str(root.path(paths.containerd_socket)), timeout=2.0) as cri:
            return await containerd_info.gather(cri, root.path(paths.containerd_config), paths.containerd_config)

    return asyncio.run(ask())


def _containerd_lines(info: Any) -> list[str]:
    config = f"config version {info.config_version}" if info.config_version is not None else "config unreadable"
    lines = [f"containerd: {info.version or 'not answering'}, {info.config_path} {config}"]
    if note := info.config_note():
        lines.append(f"  {note}")
    for key, text in sorted((info.deprecations or {}).items()):
        lines.append(f"  deprecated: {key}: {text}")
    lines += [f"  {error}" for error in info.errors]
    return lines


def cmd_pause(args: argparse.Namespace) -> int:
    code, _ = _steer("Pause")
    if code == EXIT_OK:
        print("paused: nodemedic observes and reports, and repairs nothing until `nodemedic resume`")
    return code


def cmd_resume(args: argparse.Namespace) -> int:
    code, _ = _steer("Resume")
    if code == EXIT_OK:
        print("resumed: nodemedic repairs again")
    return code


def cmd_repair(args: argparse.Namespace) -> int:
    if args.dry_run:
        code, reply = _steer("Plan", "s", [args.problem])
        for line in reply[0] if reply else []:
            print(line)
        return code
    code, reply = _steer("Repair", "s", [args.problem])
    if reply:
        print(reply[0])
    return code


def cmd_forget(args: argparse.Namespace) -> int:
    code, _ = _steer("Forget", "s", [args.problem])
    if code == EXIT_OK:
        print(f"forgot {args.problem}: its state, attempts and cooldown are cleared")
    return code


def cmd_reload(args: argparse.Namespace) -> int:
    """Reload the daemon's configuration and wait for the outcome: what ExecReload= runs.

    No /bin/kill (procps is not in a minimal Debian): the daemon's D-Bus API does the reload
    and answers when it is over, so `systemctl reload nodemedic` fails when the new
    configuration was refused, and says why in the journal.
    """
    import asyncio

    from nodemedic.report import dbus_api

    try:
        ok, lines = asyncio.run(dbus_api.call("Reload"))  # answered when the reload is over
    except dbus_api.NotRunning as err:
        if args.pid is None:
            print(f"nodemedic: {err}", file=sys.stderr)
            return EXIT_NOT_RUNNING
        # The daemon runs (systemd gave its PID) but its API is not on the bus just now: the
        # signal still reloads, only the outcome cannot be awaited here.
        os.kill(args.pid, signal.SIGHUP)
        print(f"nodemedic: {err}; sent SIGHUP to {args.pid} instead: the outcome is in the journal "
              "(journalctl -u nodemedic)", file=sys.stderr)
        return EXIT_OK
    except dbus_api.Denied as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return EXIT_DENIED
    except dbus_api.Refused as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return EXIT_INVALID
    for line in lines if isinstance(lines, list) else []:
        print(line if ok else f"nodemedic: reload refused: {line}", file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_INVALID


def cmd_run(args: argparse.Namespace) -> int:
    from nodemedic.daemon import run  # the daemon's imports (systemd, dbus, grpc) only when needed

    return run(_root(args))


def cmd_step(args: argparse.Namespace) -> int:
    from nodemedic.repairs.step_actions import run_step  # CRI and D-Bus imports only when needed

    return run_step(_root(args), args.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodemedic", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nodemedic {__version__}")
    parser.add_argument("--root", metavar="DIR",
                        help="operate on a tree below DIR instead of / (like systemctl --root)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate configuration and signatures")
    p.set_defaults(func=cmd_check_config)

    config = sub.add_parser("config", help="show the merged configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = config_sub.add_parser("show", help="print the merged configuration as TOML")
    p.add_argument("--origins", action="store_true", help="say which file and line set each value")
    p.set_defaults(func=cmd_config_show)

    sigs = sub.add_parser("signatures", help="the signature catalogue")
    sigs_sub = sigs.add_subparsers(dest="signatures_command", required=True, metavar="ACTION")
    p = sigs_sub.add_parser("list", help="list id, problem, units and threshold")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_signatures_list)

    p = sub.add_parser("doctor", help="diagnose the node once, without the daemon; say what would be done")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("status", help="what the running daemon sees (exit 0 healthy, 1 problems, 3 not running)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("pause", help="stop repairing (observe and report only) until resumed")
    p.set_defaults(func=cmd_pause)
    p = sub.add_parser("resume", help="repair again after a pause")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("repair", help="run a problem's ladder now")
    p.add_argument("problem")
    p.add_argument("--dry-run", action="store_true", help="print the steps it would take")
    p.set_defaults(func=cmd_repair)
    p = sub.add_parser("forget", help="clear a problem's state, attempts and cooldown")
    p.add_argument("problem")
    p.set_defaults(func=cmd_forget)

    flow_commands.add_parsers(sub)
    mirrors_cli.add_parsers(sub)
    kube_cli.add_parsers(sub)

    p = sub.add_parser("reload", help="reload the daemon's configuration and wait for the outcome "
                                      "(what systemctl reload runs)")
    p.add_argument("pid", nargs="?", type=int, help="the daemon's PID ($MAINPID): sent SIGHUP if its "
                                                    "D-Bus API cannot be reached")
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser("run", help="run the resident daemon (systemd Type=notify)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("step", help="run one privileged repair step (what nodemedic-step@NAME.service runs)")
    p.add_argument("name")
    p.set_defaults(func=cmd_step)

    p = sub.add_parser("match", help="match journald MESSAGE lines (file or stdin) against the catalogue")
    p.add_argument("file", nargs="?", help="file of MESSAGE lines; '-' or absent for stdin")
    p.add_argument("--unit", help="unit the lines came from (default: try every signature)")
    p.add_argument("--json", action="store_true", help='one {"line": N, "signatures": [...]} per line')
    p.add_argument("--explain", action="store_true",
                   help="show each line's decoded format, level, message and fields, and which pattern hit "
                        "or why none did")
    p.set_defaults(func=cmd_match)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        return EXIT_OK
    except OSError as err:
        print(f"nodemedic: {err.filename or ''}: {err.strerror}", file=sys.stderr)
        return EXIT_INVALID
