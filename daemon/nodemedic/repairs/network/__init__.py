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

The package's jobs, one module each: cniconf (what the loaded CNI config expects of the bridge),
ip (the `ip` calls), iptables (iptables-save parser and the chain removal plan), bridge (the
stale-bridge probes and step) and sweep (the node reset's leftovers sweep). This face offers
what the ladders, the step actions and the tests use.
"""

from nodemedic.repairs import commands
from nodemedic.repairs.network.bridge import (
    DeleteStaleBridge,
    Refused,
    bridge_conflict,
    delete_stale_bridge,
    no_bridge_conflict,
    no_pods_running,
    ready_sandboxes,
    runtime_ready_without_conflict,
    stale_reservations,
    wrong_addresses,
)
from nodemedic.repairs.network.cniconf import (
    DEFAULT_BRIDGE,
    SUBNET_ENV,
    BridgeExpectation,
    expectation_from_config,
    expected_bridge,
    gateway_from_subnet_env,
    loaded_config,
)
from nodemedic.repairs.network.ip import link_ipv4, parse_ip_addr
from nodemedic.repairs.network.iptables import chain_removal, parse_iptables_save
from nodemedic.repairs.network.sweep import remove_cni_leftovers

__all__ = [
    "DEFAULT_BRIDGE",
    "SUBNET_ENV",
    "BridgeExpectation",
    "DeleteStaleBridge",
    "Refused",
    "bridge_conflict",
    "chain_removal",
    "commands",  # the command runner the unit tests stand in for
    "delete_stale_bridge",
    "expectation_from_config",
    "expected_bridge",
    "gateway_from_subnet_env",
    "link_ipv4",
    "loaded_config",
    "no_bridge_conflict",
    "no_pods_running",
    "parse_ip_addr",
    "parse_iptables_save",
    "ready_sandboxes",
    "remove_cni_leftovers",
    "runtime_ready_without_conflict",
    "stale_reservations",
    "wrong_addresses",
]
