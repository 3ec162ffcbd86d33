"""The few `ip` calls the network steps make: read a link's IPv4 addresses, delete a link."""

from __future__ import annotations

import json
from ipaddress import IPv4Interface

from nodemedic.repairs import commands

# `ip` and iptables answer in milliseconds; the timeout only guards against a wedged netlink.
COMMAND_TIMEOUT = 30.0


def parse_ip_addr(text: str) -> list[IPv4Interface]:
    """The IPv4 addresses in `ip -j -4 addr show` output."""
    out = []
    for link in json.loads(text or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet" and "local" in addr:
                out.append(IPv4Interface(f"{addr['local']}/{addr['prefixlen']}"))
    return out


async def link_ipv4(name: str) -> list[IPv4Interface] | None:
    """The link's IPv4 addresses, or None when there is no such link."""
    done = await commands.run(["ip", "-j", "-4", "addr", "show", "dev", name], COMMAND_TIMEOUT)
    if done.returncode != 0:
        if "does not exist" in done.stderr:
            return None
        raise RuntimeError(f"ip addr show dev {name}: {done.stderr.strip()}")
    return parse_ip_addr(done.stdout)


async def delete_link(name: str) -> None:
    """`ip link delete`; needs CAP_NET_ADMIN (a nodemedic-step@ unit)."""
    done = await commands.run(["ip", "link", "delete", "dev", name], COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"ip link delete dev {name}: {done.stderr.strip()}")
