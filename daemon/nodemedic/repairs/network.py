"""Network leftovers: a cni0 bridge still carrying an old subnet's gateway, and the links and
iptables chains of a CNI, flannel or kube-proxy that no longer runs.

The maintainers' rule is absolute here: never delete cni0 (or host-local IPAM reservations)
while pods run on the node — it cuts their network and can hand out duplicate IPs. "No pods
run" means the runtime *answered* CRI ListPodSandbox and listed no READY sandbox; when it
cannot be asked, the answer is "unknown" and nothing is deleted — except in the reset's sweep
when containerd's unit is stopped and no containerd-shim runs, where no pod can exist.

The resident daemon only reads (links via `ip`, files, CRI). Deleting a link or an iptables
chain needs CAP_NET_ADMIN, which nodemedic.service does not have: those actions run in
nodemedic-step@NAME.service (repairs/privileged.py), where they re-check their own
precondition right before acting.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from nodemedic.probes.cri import CriError, PodSandbox
from nodemedic.probes.procs import pids_by_comm
from nodemedic.repairs import commands
from nodemedic.repairs.containerd_root import running_shims
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.privileged import run_in_step_unit
from nodemedic.repairs.remedy_probes import runtime_ready
from nodemedic.repairs.step import StepClass
from nodemedic.safety import remove_file
from nodemedic.sources.systemd_bus import BusError

SUBNET_ENV = "/run/flannel/subnet.env"
DEFAULT_BRIDGE = "cni0"  # the bridge plugin's and flannel's default
FLANNEL_NETWORK = "cbr0"  # kube-flannel's network name: host-local keeps its IPs under this name
IPAM_DATA_DIR = "/var/lib/cni/networks"  # host-local's default dataDir
FLANNEL_LINK = "flannel.1"
CNI_SUFFIXES = (".conf", ".conflist", ".json")  # what libcni's ConfFiles lists, as go-cni loads them
KUBELET = "kubelet.service"
CONTAINERD = "containerd.service"
# `ip` and iptables answer in milliseconds; the timeout only guards against a wedged netlink.
COMMAND_TIMEOUT = 30.0

IPTABLES_TABLES = ("filter", "nat", "mangle")
BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
# Chain name prefix -> whose chains they are (the owner that must not be running).
CHAIN_OWNERS = {"CNI-": "cni", "FLANNEL-": "flannel", "KUBE-": "kube-proxy"}


class Refused(RuntimeError):
    """A privileged action's precondition no longer holds; nothing was changed."""


# ---- what cni0 should carry ---------------------------------------------------------------------


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


# ---- what the node has ------------------------------------------------------------------------


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


def wrong_addresses(addresses: Iterable[IPv4Interface], expected: BridgeExpectation) -> list[IPv4Interface]:
    # The bridge plugin accepts an IPv4 address only if it is exactly a gateway (address and
    # prefix); any other IPv4 address makes it fail with "already has an IP address different".
    return [a for a in addresses if a not in expected.gateways]


async def bridge_conflict(ctx: RepairContext) -> bool:
    """Confirm probe: the bridge exists and carries an IPv4 address that is not its expected
    gateway. An unknown expectation, or a link we cannot read, is not a confirmation."""
    expected = expected_bridge(ctx)
    if expected is None:
        return False
    try:
        addresses = await link_ipv4(expected.bridge)
    except (OSError, RuntimeError, TimeoutError, ValueError):
        return False
    return addresses is not None and bool(wrong_addresses(addresses, expected))


async def no_bridge_conflict(ctx: RepairContext) -> bool:
    return not await bridge_conflict(ctx)


async def runtime_ready_without_conflict(ctx: RepairContext) -> bool:
    """What the ladder's containerd restart must achieve: a runtime that answers, and a bridge
    the plugin will accept on the next sandbox."""
    return await runtime_ready(ctx) and not await bridge_conflict(ctx)


async def ready_sandboxes(ctx: RepairContext) -> list[PodSandbox] | None:
    """The READY pod sandboxes, or None when the runtime cannot be asked (unknown: never delete)."""
    try:
        sandboxes = await ctx.cri.list_pod_sandboxes()
    except CriError:
        return None
    return [s for s in sandboxes if s.ready]


async def no_pods_running(ctx: RepairContext) -> bool:
    return await ready_sandboxes(ctx) == []


# ---- delete the stale bridge ----------------------------------------------------------------------


def stale_reservations(directory: Path, subnets: tuple[IPv4Network, ...]) -> list[Path]:
    """host-local's reservation files (named by the IPv4 address) outside the expected subnets.
    Its other files (lock, last_reserved_ip.N) and anything not a plain file are left alone."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            address = IPv4Address(entry.name)
        except ValueError:
            continue
        try:
            regular = stat.S_ISREG(os.lstat(entry).st_mode)
        except OSError:
            continue
        if regular and not any(address in s for s in subnets):
            out.append(entry)
    return out


async def _delete_link(name: str) -> None:
    done = await commands.run(["ip", "link", "delete", "dev", name], COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"ip link delete dev {name}: {done.stderr.strip()}")


def _names(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items)


async def delete_stale_bridge(ctx: RepairContext) -> list[str]:
    """The privileged half of DeleteStaleBridge, run in nodemedic-step@delete-stale-bridge: check
    again, right before acting, that the bridge is wrong and no pod sandbox is ready; then delete
    the bridge and the old subnet's host-local reservations."""
    expected = expected_bridge(ctx)
    if expected is None:
        raise Refused("the bridge's expected gateway is unknown (no usable CNI config or subnet.env)")
    addresses = await link_ipv4(expected.bridge)
    wrong = wrong_addresses(addresses or [], expected)
    if not wrong:
        return []  # gone or right already: nothing to do, and nothing done
    ready = await ready_sandboxes(ctx)
    if ready is None:
        raise Refused("the container runtime did not answer ListPodSandbox: pods may be running")
    if ready:
        raise Refused(f"{len(ready)} pod sandbox(es) ready ({_names(f'{s.namespace}/{s.name}' for s in ready)}): "
                      f"deleting {expected.bridge} would cut their network")
    await _delete_link(expected.bridge)
    done = [f"deleted {expected.bridge}, which carried {_names(addresses or [])} instead of "
            f"{_names(expected.gateways)} (from {expected.source})"]
    directory = ctx.node_path(expected.ipam_dir) / expected.network
    removed = [p.name for p in stale_reservations(directory, expected.subnets) if remove_file(ctx.guard, p)]
    if removed:
        done.append(f"removed host-local reservations outside {_names(expected.subnets)} from {directory}: "
                    f"{_names(removed)}")
    return done


@dataclass(frozen=True)
class DeleteStaleBridge:
    """cni0 carries an old subnet: delete it (the bridge plugin recreates it with the right
    gateway on the next sandbox) — only while no pod runs on the node."""

    name: str = "delete-stale-bridge"
    klass: StepClass = StepClass.DISRUPTIVE
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        # Never raises (the engine treats an exception here as "needed").
        return await bridge_conflict(ctx) and await no_pods_running(ctx)

    async def apply(self, ctx: RepairContext) -> str:
        done = await run_in_step_unit(ctx, self.name)
        return "; ".join(done) if done else "nothing removed: the bridge was already gone or right"

    async def verify(self, ctx: RepairContext) -> bool:
        # Live: the bridge is gone, or was recreated with the right address.
        return not await bridge_conflict(ctx)


# ---- iptables-save ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    chain: str
    spec: tuple[str, ...]  # the rule after "-A CHAIN", as iptables -D takes it
    target: str  # -j / -g target, "" when none


@dataclass
class Table:
    name: str
    chains: list[str] = field(default_factory=list)  # every chain declared, built-in ones too
    rules: list[Rule] = field(default_factory=list)


def parse_iptables_save(text: str) -> dict[str, Table]:
    """iptables-save's output: `*table`, `:CHAIN POLICY [p:b]`, `-A CHAIN spec…`, `COMMIT`."""
    tables: dict[str, Table] = {}
    current: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], Table(line[1:]))
        elif current is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            words = shlex.split(line)
            chain, spec = words[1], tuple(words[2:])
            target = ""
            for flag, value in zip(spec, spec[1:], strict=False):
                if flag in ("-j", "--jump", "-g", "--goto"):
                    target = value
            current.rules.append(Rule(chain, spec, target))
    return tables


def chain_removal(tables: Mapping[str, Table], prefixes: Iterable[str],
                  table_names: Iterable[str] = IPTABLES_TABLES) -> list[tuple[str, list[list[str]], list[str]]]:
    """Per table: the iptables argv lists that remove every chain starting with one of
    `prefixes` — first the rules of other chains jumping to them (built-in chains above all:
    PREROUTING -j KUBE-SERVICES), then flush each, then delete each — and the chains' names."""
    prefixes = tuple(prefixes)
    out = []
    for name in table_names:
        table = tables.get(name)
        if table is None:
            continue
        doomed = [c for c in table.chains if c.startswith(prefixes) and c not in BUILTIN_CHAINS]
        if not doomed:
            continue
        argvs = [["iptables", "-t", name, "-D", r.chain, *r.spec] for r in table.rules
                 if r.target in doomed and r.chain not in doomed]
        argvs += [["iptables", "-t", name, "-F", c] for c in doomed]
        argvs += [["iptables", "-t", name, "-X", c] for c in doomed]
        out.append((name, argvs, doomed))
    return out


# ---- the reusable leftovers sweep (the node-reset ladder) -------------------------------------------


async def _runtime_stopped(ctx: RepairContext) -> bool:
    """containerd's unit is down (the aggressive reset stopped it): no sandbox can be set up, and
    with no shim running (checked next) no pod runs either, though CRI cannot say so."""
    try:
        state = (await ctx.bus.unit_state(CONTAINERD)).active_state
    except BusError:
        return False
    return state in ("inactive", "failed")


async def _running_owners(ctx: RepairContext) -> dict[str, str]:
    """Owner -> why it counts as running. Anything that cannot be determined counts as running."""
    proc = ctx.node_path("/proc")
    running: dict[str, str] = {}
    ready = await ready_sandboxes(ctx)
    if ready is None and not await _runtime_stopped(ctx):
        running["cni"] = "the container runtime did not answer ListPodSandbox"
    elif ready:
        running["cni"] = f"{len(ready)} pod sandbox(es) ready"
    elif shims := running_shims(proc):
        running["cni"] = f"{len(shims)} containerd-shim process(es) running"
    if pids := pids_by_comm("flanneld".__eq__, proc):
        running["flannel"] = f"flanneld running (pid {pids[0]})"
    if pids := pids_by_comm("kube-proxy".__eq__, proc):
        running["kube-proxy"] = f"kube-proxy running (pid {pids[0]})"
    else:
        try:
            kubelet = (await ctx.bus.unit_state(KUBELET)).active_state
        except BusError as err:
            kubelet = f"unknown ({err})"
        if kubelet != "inactive" and kubelet != "failed":
            # kubelet would start kube-proxy's pod again, and it re-creates KUBE- chains itself.
            running["kube-proxy"] = f"{KUBELET} is {kubelet}"
    return running


async def remove_cni_leftovers(ctx: RepairContext) -> list[str]:
    """Delete cni0 and flannel.1 and the CNI-/FLANNEL-/KUBE- iptables chains (filter, nat,
    mangle), each only while its owner is not running. Needs CAP_NET_ADMIN: run it in a
    nodemedic-step@ unit. Returns what was removed, one sentence each."""
    running = await _running_owners(ctx)
    done: list[str] = []
    for link, owner in ((DEFAULT_BRIDGE, "cni"), (FLANNEL_LINK, "flannel")):
        if owner not in running and await link_ipv4(link) is not None:
            await _delete_link(link)
            done.append(f"deleted link {link}")
    prefixes = [prefix for prefix, owner in CHAIN_OWNERS.items() if owner not in running]
    if not prefixes:
        return done
    saved = await commands.run(["iptables-save"], COMMAND_TIMEOUT)
    if saved.returncode != 0:
        raise RuntimeError(f"iptables-save: {saved.stderr.strip()}")
    for table, argvs, chains in chain_removal(parse_iptables_save(saved.stdout), prefixes):
        for argv in argvs:
            result = await commands.run(argv, COMMAND_TIMEOUT)
            if result.returncode != 0:
                raise RuntimeError(f"{shlex.join(argv)}: {result.stderr.strip()}"
                                   + (f" (removed before: {'; '.join(done)})" if done else ""))
        done.append(f"deleted iptables chains in table {table}: {_names(chains)}")
    return done
