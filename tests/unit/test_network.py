"""The cni-bridge-conflict ladder's pure parts: the gateway cni0 must carry (flannel's subnet.env,
a bridge conflist), `ip -j` and iptables-save parsing, and the never rule — no deletion while a
pod sandbox is ready or the runtime cannot be asked."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nodemedic.hostroot import HostRoot
from nodemedic.probes.cri import CriUnavailable, PodSandbox
from nodemedic.repairs import network
from nodemedic.repairs.commands import Completed
from nodemedic.safety import Guard
from tests.unit.helpers import write

SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
# kube-flannel.yml's cni-conf.json
FLANNEL_CONFLIST = {
    "name": "cbr0", "cniVersion": "0.3.1",
    "plugins": [{"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
                {"type": "portmap", "capabilities": {"portMappings": True}}],
}


def bridge_conflist(name: str = "nmtest", bridge: str | None = "cni0", **ipam: Any) -> dict[str, Any]:
    plugin: dict[str, Any] = {"type": "bridge", "isGateway": True,
                              "ipam": {"type": "host-local", **ipam}}
    if bridge:
        plugin["bridge"] = bridge
    return {"cniVersion": "1.0.0", "name": name, "plugins": [plugin, {"type": "portmap"}]}


def gw(text: str) -> IPv4Interface:
    return IPv4Interface(text)


# ---- the expected gateway ---------------------------------------------------------------------------


def test_subnet_env_gives_its_subnets_first_host():
    assert network.gateway_from_subnet_env(SUBNET_ENV) == gw("10.244.3.1/24")
    assert network.gateway_from_subnet_env("FLANNEL_SUBNET=10.244.5.0/24\n") == gw("10.244.5.1/24")
    assert network.gateway_from_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\n") is None
    assert network.gateway_from_subnet_env("FLANNEL_SUBNET=garbage\n") is None


def test_flannel_config_takes_the_gateway_from_subnet_env():
    expected = network.expectation_from_config(FLANNEL_CONFLIST, SUBNET_ENV)
    assert expected == network.BridgeExpectation("cni0", (gw("10.244.3.1/24"),), "cbr0", source=network.SUBNET_ENV)
    assert expected.subnets == (IPv4Network("10.244.3.0/24"),)
    # flanneld has not written it: nothing is known, nothing is confirmed
    assert network.expectation_from_config(FLANNEL_CONFLIST, None) is None
    renamed = json.loads(json.dumps(FLANNEL_CONFLIST))
    renamed["plugins"][0]["delegate"]["bridge"] = "kbr0"
    assert network.expectation_from_config(renamed, SUBNET_ENV).bridge == "kbr0"


def test_bridge_conflist_gateway_is_explicit_or_the_first_host():
    ranges = [[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:10:244::/64"}]]
    expected = network.expectation_from_config(bridge_conflist(ranges=ranges), None, source="/x")
    assert expected == network.BridgeExpectation("cni0", (gw("10.244.7.1/24"),), "nmtest", source="/x")
    explicit = bridge_conflist(ranges=[[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.254"}]])
    assert network.expectation_from_config(explicit, None).gateways == (gw("10.88.0.254/16"),)
    legacy = bridge_conflist(bridge=None, subnet="10.22.0.0/16", dataDir="/run/ipam")
    expected = network.expectation_from_config(legacy, None)
    assert (expected.bridge, expected.gateways, expected.ipam_dir) == ("cni0", (gw("10.22.0.1/16"),), "/run/ipam")
    # a .conf file is a single plugin, not a list
    single = {"cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "bridge": "br9", "isGateway": True,
              "ipam": {"type": "host-local", "subnet": "10.9.0.0/24"}}
    assert network.expectation_from_config(single, None).bridge == "br9"


def test_a_bridge_without_a_gateway_address_cannot_conflict():
    no_gateway = bridge_conflist(ranges=[[{"subnet": "10.244.7.0/24"}]])
    no_gateway["plugins"][0]["isGateway"] = False
    forced = bridge_conflist(ranges=[[{"subnet": "10.244.7.0/24"}]])
    forced["plugins"][0]["forceAddress"] = True  # the plugin replaces the address itself
    dhcp = bridge_conflist()
    dhcp["plugins"][0]["ipam"] = {"type": "dhcp"}
    for conf in (no_gateway, forced, dhcp, {"name": "x", "plugins": [{"type": "ptp"}]}):
        assert network.expectation_from_config(conf, SUBNET_ENV) is None


def ctx_for(root: Path, **extra: Any) -> Any:
    host = HostRoot(root)
    settings = SimpleNamespace(paths=SimpleNamespace(cni_conf_dir="/etc/cni/net.d"))
    return SimpleNamespace(settings=settings, root=host, node_path=host.path, guard=Guard.from_paths([]), **extra)


def test_the_cri_loads_the_lexically_first_config(tmp_path: Path):
    ctx = ctx_for(tmp_path)
    assert network.expected_bridge(ctx) is None
    write(tmp_path, "/etc/cni/net.d/20-b.conflist", json.dumps(bridge_conflist(ranges=[[{"subnet": "10.2.0.0/24"}]])))
    write(tmp_path, "/etc/cni/net.d/10-a.conflist", json.dumps(bridge_conflist(ranges=[[{"subnet": "10.1.0.0/24"}]])))
    write(tmp_path, "/etc/cni/net.d/00-readme.txt", "not a config")
    assert network.expected_bridge(ctx).gateways == (gw("10.1.0.1/24"),)
    # the first config does not parse: containerd fails to load it too; unknown, never a guess
    write(tmp_path, "/etc/cni/net.d/05-broken.conf", "{")
    assert network.expected_bridge(ctx) is None


def test_subnet_env_alone_means_flannel_defaults(tmp_path: Path):
    write(tmp_path, network.SUBNET_ENV, SUBNET_ENV)
    assert network.expected_bridge(ctx_for(tmp_path)) == network.BridgeExpectation(
        "cni0", (gw("10.244.3.1/24"),), "cbr0", source=network.SUBNET_ENV)
    write(tmp_path, "/etc/cni/net.d/10-flannel.conflist", json.dumps(FLANNEL_CONFLIST))
    assert network.expected_bridge(ctx_for(tmp_path)).gateways == (gw("10.244.3.1/24"),)


# ---- what the node has ------------------------------------------------------------------------------

IP_ADDR_JSON = json.dumps([{
    "ifindex": 3, "ifname": "cni0", "flags": ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"], "mtu": 1500,
    "qdisc": "noqueue", "operstate": "DOWN", "group": "default", "txqlen": 1000,
    "addr_info": [{"family": "inet", "local": "10.99.0.1", "prefixlen": 24, "broadcast": "10.99.0.255",
                   "scope": "global", "label": "cni0", "valid_life_time": 4294967295,
                   "preferred_life_time": 4294967295}]}])


def test_ip_json_and_wrong_addresses():
    expected = network.BridgeExpectation("cni0", (gw("10.244.7.1/24"),), "nmtest")
    addresses = network.parse_ip_addr(IP_ADDR_JSON)
    assert addresses == [gw("10.99.0.1/24")]
    assert network.wrong_addresses(addresses, expected) == addresses
    assert network.wrong_addresses([gw("10.244.7.1/24")], expected) == []
    # the right address with another prefix is still different for the bridge plugin
    assert network.wrong_addresses([gw("10.244.7.1/16")], expected) == [gw("10.244.7.1/16")]
    assert network.parse_ip_addr("[]") == [] and network.parse_ip_addr("[{}]") == []


def test_stale_reservations_are_ip_files_outside_the_subnet(tmp_path: Path):
    d = tmp_path / "nmtest"
    for name in ("10.99.0.2", "10.99.0.3", "10.244.7.2", "last_reserved_ip.0", "lock", "fd00::2"):
        write(d, name, "id\neth0")
    (d / "10.99.0.9").mkdir()
    (d / "10.99.0.8").symlink_to("/etc/passwd")
    stale = network.stale_reservations(d, (IPv4Network("10.244.7.0/24"),))
    assert [p.name for p in stale] == ["10.99.0.2", "10.99.0.3"]


# ---- the never rule -----------------------------------------------------------------------------------


class FakeCri:
    def __init__(self, answer: list[PodSandbox] | Exception) -> None:
        self.answer = answer

    async def list_pod_sandboxes(self, timeout: float | None = None) -> list[PodSandbox]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


READY = PodSandbox("a1", "web", "default", True)
GONE = PodSandbox("b2", "old", "default", False)


@pytest.fixture
def conflicted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A node whose cni0 has 10.99.0.1/24 while its config wants 10.244.7.1/24; records the
    commands a step runs instead of running them."""
    write(tmp_path, "/etc/cni/net.d/10-nmtest.conflist",
          json.dumps(bridge_conflist(ranges=[[{"subnet": "10.244.7.0/24"}]])))
    for name in ("10.99.0.2", "10.244.7.2", "last_reserved_ip.0"):
        write(tmp_path, f"/var/lib/cni/networks/nmtest/{name}", "id\neth0")
    ran: list[list[str]] = []

    async def fake_run(argv: list[str], timeout: float) -> Completed:
        ran.append(list(argv))
        out = IP_ADDR_JSON if argv[:2] == ["ip", "-j"] else ""
        return Completed(tuple(argv), 0, out, "")

    monkeypatch.setattr(network.commands, "run", fake_run)
    return ran


@pytest.mark.parametrize(("answer", "needed"), [
    ([], True), ([GONE], True), ([GONE, READY], False), (CriUnavailable("no socket"), False)])
def test_the_bridge_is_deleted_only_when_the_runtime_says_no_pod_is_ready(
        tmp_path: Path, conflicted: list[list[str]], answer: Any, needed: bool):
    ctx = ctx_for(tmp_path, cri=FakeCri(answer))
    assert asyncio.run(network.bridge_conflict(ctx))
    assert asyncio.run(network.DeleteStaleBridge().needed(ctx)) is needed
    if needed:
        done = asyncio.run(network.delete_stale_bridge(ctx))
        assert ["ip", "link", "delete", "dev", "cni0"] in conflicted
        assert done[0].startswith("deleted cni0, which carried 10.99.0.1/24 instead of 10.244.7.1/24")
        assert "10.99.0.2" in done[1]
        left = sorted(p.name for p in (tmp_path / "var/lib/cni/networks/nmtest").iterdir())
        assert left == ["10.244.7.2", "last_reserved_ip.0"]
    else:
        # the privileged half checks again by itself and refuses
        with pytest.raises(network.Refused):
            asyncio.run(network.delete_stale_bridge(ctx))
        assert not any(argv[:3] == ["ip", "link", "delete"] for argv in conflicted)
        assert (tmp_path / "var/lib/cni/networks/nmtest/10.99.0.2").exists()


def test_no_conflict_without_a_known_gateway(tmp_path: Path, conflicted: list[list[str]]):
    (tmp_path / "etc/cni/net.d/10-nmtest.conflist").unlink()
    ctx = ctx_for(tmp_path, cri=FakeCri([]))
    assert not asyncio.run(network.bridge_conflict(ctx))
    assert not asyncio.run(network.DeleteStaleBridge().needed(ctx))


# ---- iptables-save ------------------------------------------------------------------------------------

# iptables-save (nf_tables) of a kubeadm node with kube-proxy, flannel and the portmap plugin, cut down.
IPTABLES_SAVE = """\
# Generated by iptables-save v1.8.9 (nf_tables) on Tue Nov 21 16:40:02 2023
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
# Completed on Tue Nov 21 16:40:02 2023
*filter
:INPUT ACCEPT [2204:360412]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [2210:410337]
:DOCKER-USER - [0:0]
:FLANNEL-FWD - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FORWARD -j DOCKER-USER
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A DOCKER-USER -j KUBE-FORWARD
-A DOCKER-USER -j RETURN
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" \
-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
COMMIT
"""


def test_iptables_save_is_parsed_per_table():
    tables = network.parse_iptables_save(IPTABLES_SAVE)
    assert sorted(tables) == ["filter", "mangle", "nat"]
    nat = tables["nat"]
    assert nat.chains[:4] == ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
    assert "CNI-HOSTPORT-SETMARK" in nat.chains
    rule = nat.rules[2]
    assert (rule.chain, rule.target) == ("POSTROUTING", "CNI-HOSTPORT-MASQ")
    # quoted comments stay one argument, as iptables -D needs them
    assert rule.spec == ("-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ")
    assert [r.target for r in tables["filter"].rules if r.chain == "DOCKER-USER"] == ["KUBE-FORWARD", "RETURN"]


def test_chain_removal_unhooks_then_flushes_then_deletes():
    tables = network.parse_iptables_save(IPTABLES_SAVE)
    plan = {table: (argvs, chains) for table, argvs, chains in network.chain_removal(tables, ["KUBE-"])}
    assert sorted(plan) == ["filter", "mangle", "nat"]
    argvs, chains = plan["filter"]
    assert chains == ["KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-SERVICES"]
    assert argvs == [
        ["iptables", "-t", "filter", "-D", "INPUT", "-m", "comment", "--comment",
         "kubernetes health check service ports", "-j", "KUBE-NODEPORTS"],
        ["iptables", "-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["iptables", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules",
         "-j", "KUBE-FORWARD"],
        ["iptables", "-t", "filter", "-D", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment",
         "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
        # a kept user chain's jump goes too, or -X would fail with "Too many links"
        ["iptables", "-t", "filter", "-D", "DOCKER-USER", "-j", "KUBE-FORWARD"],
        ["iptables", "-t", "filter", "-F", "KUBE-FIREWALL"],
        ["iptables", "-t", "filter", "-F", "KUBE-FORWARD"],
        ["iptables", "-t", "filter", "-F", "KUBE-NODEPORTS"],
        ["iptables", "-t", "filter", "-F", "KUBE-SERVICES"],
        ["iptables", "-t", "filter", "-X", "KUBE-FIREWALL"],
        ["iptables", "-t", "filter", "-X", "KUBE-FORWARD"],
        ["iptables", "-t", "filter", "-X", "KUBE-NODEPORTS"],
        ["iptables", "-t", "filter", "-X", "KUBE-SERVICES"],
    ]
    assert plan["mangle"][1] == ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"]
    assert plan["mangle"][0][0] == ["iptables", "-t", "mangle", "-F", "KUBE-IPTABLES-HINT"]


def test_chain_removal_keeps_the_chains_of_running_owners():
    tables = network.parse_iptables_save(IPTABLES_SAVE)
    plan = network.chain_removal(tables, ["CNI-", "FLANNEL-"])
    assert [(table, chains) for table, _, chains in plan] == [
        ("filter", ["FLANNEL-FWD"]),
        ("nat", ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK", "FLANNEL-POSTRTG"])]
    nat = plan[1][1]
    assert ["iptables", "-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j",
            "CNI-HOSTPORT-DNAT"] in nat
    assert not any("KUBE-POSTROUTING" in argv for argv in nat)
    assert network.chain_removal(tables, []) == []


def test_a_gateway_that_is_not_an_address_is_skipped_not_raised():
    conf = {"name": "n", "plugins": [{"type": "bridge", "isGateway": True, "ipam": {
        "type": "host-local", "ranges": [[{"subnet": "10.244.7.0/24", "gateway": "not-an-ip"}]]}}]}
    assert network.expectation_from_config(conf, None) is None
