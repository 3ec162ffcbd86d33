"""`python -m nodemedic.probes cri-status|imagefs|fs-capacity PATH|mount PATH` — one probe, JSON out.

Exit codes: 0 answered, 3 CRI unavailable, 4 CRI call failed, 5 statvfs failed. The JSON on
stdout is always one object, so callers (the test bed, operators with jq) can parse it either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from nodemedic.probes.cri import (
    DEFAULT_SOCKET,
    DEFAULT_TIMEOUT,
    CriCallFailed,
    CriUnavailable,
    cri_status,
    imagefs_info,
)
from nodemedic.probes.fs import fs_capacity, mount_for


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodemedic.probes", description="Run one live probe.")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="CRI socket (default %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (default %(default)s)")
    sub = p.add_subparsers(dest="probe", required=True)
    sub.add_parser("cri-status", help="RuntimeService.Status")
    sub.add_parser("imagefs", help="ImageService.ImageFsInfo, with statvfs of each mountpoint")
    fsp = sub.add_parser("fs-capacity", help="statvfs of PATH")
    fsp.add_argument("path")
    mp = sub.add_parser("mount", help="the mount holding PATH")
    mp.add_argument("path")
    args = p.parse_args(argv)

    out: dict[str, object]
    code = 0
    try:
        if args.probe == "cri-status":
            out = dataclasses.asdict(cri_status(args.socket, args.timeout))
        elif args.probe == "imagefs":
            filesystems = []
            for u in imagefs_info(args.socket, args.timeout):
                entry: dict[str, object] = dataclasses.asdict(u)
                # The capacity is what kubelet derives from the mountpoint; show it beside the usage.
                try:
                    entry["capacity_bytes"] = fs_capacity(u.mountpoint).capacity_bytes
                except OSError as e:
                    entry["capacity_bytes"] = None
                    entry["statvfs_error"] = e.strerror or str(e)
                filesystems.append(entry)
            out = {"image_filesystems": filesystems}
        elif args.probe == "fs-capacity":
            out = dataclasses.asdict(fs_capacity(args.path))
        else:
            m = mount_for(args.path)
            out = {"path": args.path, "mount": dataclasses.asdict(m) if m else None}
    except CriUnavailable as e:
        out, code = {"error": "unavailable", "message": str(e)}, 3
    except CriCallFailed as e:
        out, code = {"error": "call-failed", "code": e.code, "message": e.details}, 4
    except OSError as e:
        out, code = {"error": "statvfs", "errno": e.errno, "message": e.strerror or str(e)}, 5
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
