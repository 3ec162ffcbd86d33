"""The systemd mount unit that makes the repointed root appear at containerd's configured root.

A bind mount, never a symlink: kubelet's cAdvisor maps the image filesystem's mountpoint to a
block device, which a symlinked root defeats ("invalid capacity 0 on image filesystem"). The
unit is ordered before containerd and required by it, so containerd never starts on the empty
directory underneath when the mount is missing.
"""

from __future__ import annotations

import time

from nodemedic.repairs.commands import run

UNIT_DIR = "/etc/systemd/system"
MARKER = "# Written by nodemedic repoint"
CONTAINERD = "containerd.service"


async def unit_name(where: str) -> str:
    """The unit name systemd requires for a mount at `where` (systemd-escape --path)."""
    result = await run(["systemd-escape", "--path", "--suffix=mount", where], 10.0)
    if result.returncode != 0:
        raise RuntimeError(f"systemd-escape --path {where}: {result.stderr.strip()}")
    return result.stdout.strip()


def unit_text(what: str, where: str) -> str:
    return "\n".join((
        f"{MARKER} on {time.strftime('%Y-%m-%d %H:%M:%S %z')}: containerd's root lives on {what}.",
        "# Remove with care: containerd would start on the empty directory underneath.",
        "[Unit]",
        f"Description=containerd root {where} on {what} (nodemedic repoint)",
        "Documentation=man:nodemedic(8)",
        # The target's own filesystem (a data disk in fstab) must be mounted first.
        f"RequiresMountsFor={what}",
        f"Before={CONTAINERD}",
        "",
        "[Mount]",
        f"What={what}",
        f"Where={where}",
        "Type=none",
        "Options=bind",
        "",
        "[Install]",
        "WantedBy=local-fs.target",
        f"RequiredBy={CONTAINERD}",
        "",
    ))


def is_ours(text: str) -> bool:
    return text.startswith(MARKER)


def what_of(text: str) -> str:
    """The What= of a unit text, or ""."""
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() == "What":
            return value.strip()
    return ""
