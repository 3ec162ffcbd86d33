"""`nodemedic mirrors migrate`: the sub-command; cli.py calls add_parsers()."""

from __future__ import annotations

import argparse

from nodemedic.config import load_config
from nodemedic.flows.commands import EXIT_CODES, _root, _run, _warn
from nodemedic.flows.report import FlowReport


def cmd_mirrors_migrate(args: argparse.Namespace) -> int:
    from nodemedic.flows.mirrors import migrate

    root = _root(args)
    settings = load_config(root, _warn).settings
    return _run(migrate(settings, root, args.dry_run, FlowReport("mirrors"), args.verify_image, args.skip_pull_check))


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    mirrors = sub.add_parser("mirrors", help="containerd registry mirrors: move the deprecated ones to hosts.toml")
    actions = mirrors.add_subparsers(dest="mirrors_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "migrate", help="move config.toml's registry mirrors (and configs.*.tls) into certs.d/<host>/hosts.toml",
        description="Move the deprecated registry.mirrors and registry.configs.*.tls of containerd's config.toml "
        "(version 2: plugins.\"io.containerd.grpc.v1.cri\".registry; version 3: plugins.'io.containerd.cri.v1.images'"
        ".registry) into hosts.toml files under config_path (default /etc/containerd/certs.d), set config_path, "
        "keep a backup, restart containerd and verify with a real CRI pull, before and after, of --verify-image or "
        "of an image of a migrated registry found on the node. config.toml is edited round-trip: every other line "
        "and comment stays. Credentials (configs.*.auth, auths) stay in config.toml: hosts.toml has no place for "
        "them. A malformed config.toml or a hosts.toml already there with other settings is refused, nothing "
        "changed; any failure after the first write is rolled back.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; change nothing")
    p.add_argument("--verify-image", default="", metavar="IMAGE",
                   help="the image to pull through the migrated configuration (default: one on the node)")
    p.add_argument("--skip-pull-check", action="store_true",
                   help="verify by CRI Status and containerd's effective config only (no image to pull)")
    p.set_defaults(func=cmd_mirrors_migrate)
