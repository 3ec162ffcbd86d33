"""iptables-save's output read into tables, chains and rules, and the plan (argv lists) that
removes every chain of an owner: the rules jumping to them, then flush, then delete."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

IPTABLES_TABLES = ("filter", "nat", "mangle")
BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})


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
