"""What the CNI config the runtime loads makes of the bridge: which bridge, and which gateway
address(es) it must carry (the bridge plugin's host-local ranges, or flannel's subnet.env)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from nodemedic.probes.cni_dir import CNI_SUFFIXES
from nodemedic.repairs.context import RepairContext

SUBNET_ENV = "/run/flannel/subnet.env"
DEFAULT_BRIDGE = "cni0"  # the bridge plugin's and flannel's default
FLANNEL_NETWORK = "cbr0"  # kube-flannel's network name: host-local keeps its IPs under this name
IPAM_DATA_DIR = "/var/lib/cni/networks"  # host-local's default dataDir


@dataclass(frozen=True)
class BridgeExpectation:
    """The bridge the CRI's CNI config uses, and the gateway address(es) it must carry."""

    bridge: str
    gateways: tuple[IPv4Interface, ...]
    network: str  # the CNI network name: host-local's reservations live in <ipam_dir>/<network>
    ipam_dir: str = IPAM_DATA_DIR
    source: str = ""  # the file the gateway came from, for messages

    @property
    def subnets(self) -> tuple[IPv4Network, ...]:
        return tuple(g.network for g in self.gateways)


def first_host(network: IPv4Network) -> IPv4Interface:
    """host-local's default gateway: the address after the network address (ip.NextIP)."""
    return IPv4Interface(f"{network.network_address + 1}/{network.prefixlen}")


def gateway_from_subnet_env(text: str) -> IPv4Interface | None:
    """flanneld's FLANNEL_SUBNET (e.g. 10.244.3.1/24): flannel hands host-local its network
    (10.244.3.0/24), and the bridge gets that network's first host, 10.244.3.1/24."""
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "FLANNEL_SUBNET":
            try:
                return first_host(IPv4Interface(value.strip()).network)
            except ValueError:
                return None
    return None


def _ipam_gateways(ipam: Mapping[str, Any]) -> tuple[IPv4Interface, ...]:
    """IPv4 gateways host-local gives the bridge: per range its `gateway` or the subnet's first
    host; also the old single-range form (`ipam.subnet`, `ipam.gateway`). IPv6 ranges are left
    out: the conflict is about the bridge's IPv4 address."""
    ranges: list[Mapping[str, Any]] = []
    for rangeset in ipam.get("ranges") or []:
        ranges.extend(r for r in rangeset if isinstance(r, Mapping))
    if ipam.get("subnet"):
        ranges.append({"subnet": ipam["subnet"], "gateway": ipam.get("gateway")})
    out: list[IPv4Interface] = []
    for r in ranges:
        try:
            network = ipaddress.ip_network(str(r.get("subnet", "")), strict=False)
        except ValueError:
            continue
        if not isinstance(network, IPv4Network):
            continue
        gateway = r.get("gateway")
        try:
            gw = IPv4Interface(f"{gateway}/{network.prefixlen}") if gateway else first_host(network)
        except ValueError:  # an operator's typo must not crash the probe; containerd rejects it too
            continue
        if gw not in out:
            out.append(gw)
    return tuple(out)


def expectation_from_config(conf: Mapping[str, Any], subnet_env: str | None,
                            source: str = "") -> BridgeExpectation | None:
    """What the first loaded CNI config makes of the bridge; None when it sets no gateway address
    on a bridge we know (no bridge plugin, isGateway off, forceAddress on — the plugin then fixes
    the address itself — or flannel without its subnet.env)."""
    plugins = conf.get("plugins") if "plugins" in conf else [conf]
    network = str(conf.get("name") or "")
    for plugin in plugins or []:
        if not isinstance(plugin, Mapping):
            continue
        if plugin.get("type") == "flannel":
            # flannel delegates to the bridge plugin with isGateway on and its subnet from
            # subnet.env; the host-local reservations are kept under the flannel network's name.
            delegate = plugin.get("delegate") or {}
            if subnet_env is None or delegate.get("forceAddress"):
                return None
            gateway = gateway_from_subnet_env(subnet_env)
            if gateway is None:
                return None
            return BridgeExpectation(str(delegate.get("bridge") or DEFAULT_BRIDGE), (gateway,),
                                     network or FLANNEL_NETWORK, source=SUBNET_ENV)
        if plugin.get("type") == "bridge":
            gateway_on = plugin.get("isGateway") or plugin.get("isDefaultGateway")
            ipam = plugin.get("ipam") or {}
            if not gateway_on or plugin.get("forceAddress") or ipam.get("type") != "host-local":
                return None
            gateways = _ipam_gateways(ipam)
            if not gateways:
                return None
            return BridgeExpectation(str(plugin.get("bridge") or DEFAULT_BRIDGE), gateways, network,
                                     str(ipam.get("dataDir") or IPAM_DATA_DIR), source=source)
    return None


def loaded_config(conf_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The config the CRI loads: the lexically first *.conf/*.conflist/*.json (go-cni with one
    network). A first file that does not parse fails containerd's load too: None, unknown."""
    try:
        files = sorted(e for e in conf_dir.iterdir() if e.suffix in CNI_SUFFIXES and e.is_file())
    except OSError:
        return None
    if not files:
        return None
    try:
        data = json.loads(files[0].read_text())
    except (OSError, ValueError):
        return None
    return (files[0], data) if isinstance(data, dict) else None


def expected_bridge(ctx: RepairContext) -> BridgeExpectation | None:
    try:
        subnet_env: str | None = ctx.node_path(SUBNET_ENV).read_text()
    except OSError:
        subnet_env = None
    loaded = loaded_config(ctx.node_path(ctx.settings.paths.cni_conf_dir))
    if loaded is not None:
        path, conf = loaded
        return expectation_from_config(conf, subnet_env, source=str(path))
    if subnet_env is not None:
        # flanneld runs but its CNI config is not (yet) readable: its defaults say the rest.
        gateway = gateway_from_subnet_env(subnet_env)
        if gateway is not None:
            return BridgeExpectation(DEFAULT_BRIDGE, (gateway,), FLANNEL_NETWORK, source=SUBNET_ENV)
    return None
