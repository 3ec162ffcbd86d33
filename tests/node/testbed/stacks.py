"""The node stacks the test bed can boot: one Debian release (plus, for one stack, two packages
of the next) per stack, each its own cached image.

A stack says what goes into its image (suite, the debootstrap script, packages taken from a later
suite) and how its node must be booted (cgroup layout, the seccomp allowances runc needs). Tests
choose stacks with the `stacks` marker (tests/node/conftest.py); everything else in the test bed
takes a `Stack` or a stack name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stack:
    name: str
    suite: str  # the apt codename of the node's release
    python: str  # the node's python3 (major.minor): which wheels its venv needs
    # "hybrid": the host's layout (cgroup v1 controllers + a v2 hierarchy without controllers);
    # "unified": cgroup2 only, for systemd >= 258, which refuses v1. The host's own mounts are
    # never touched: nspawn mounts the host's cgroup2 hierarchy inside the node, which then has
    # no controllers (they are all bound to v1 on this host): only containers without resource
    # settings run there.
    cgroup: str
    # debootstrap has no script for every codename (bookworm's has none for forky): use this one.
    script: str | None = None
    # Packages installed from `backport_suite` on top of `suite`, pinned by apt preferences so
    # nothing else comes from it.
    backports: tuple[str, ...] = ()
    backport_suite: str | None = None
    # Built from this stack's finished image (plus the backports) instead of its own debootstrap:
    # the same suite twice would only cost minutes for the same bytes.
    base: str | None = None
    # What the stack is for, as package version prefixes; the image manifest records the truth and
    # test_testbed checks the two agree.
    expect: dict[str, str] = field(default_factory=dict)

    @property
    def unified(self) -> bool:
        return self.cgroup == "unified"

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def nspawn_flags(self) -> list[str]:
        # nspawn's seccomp filter answers keyctl with EPERM, which runc treats as fatal ("unable to
        # join session keyring"); on a cgroup2 node runc also needs bpf() for its device filter.
        calls = ["@keyring", "bpf"] if self.unified else ["@keyring"]
        return [f"--system-call-filter={' '.join(calls)}"]

    def nspawn_env(self) -> dict[str, str]:
        # nspawn 252 on a hybrid host gives the node the host's layout unless told otherwise.
        return {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"} if self.unified else {}


STACKS: dict[str, Stack] = {
    s.name: s
    for s in (
        Stack(
            "bookworm",
            "bookworm",
            "3.11",
            "hybrid",
            expect={"containerd": "1.6.", "systemd": "252", "runc": "1.1.", "python3": "3.11"},
        ),
        Stack(
            "trixie",
            "trixie",
            "3.13",
            "hybrid",
            expect={"containerd": "1.7.", "systemd": "257", "runc": "1.1.", "python3": "3.13"},
        ),
        Stack(
            "trixie-containerd2",
            "trixie",
            "3.13",
            "hybrid",
            backports=("containerd", "runc"),
            backport_suite="forky",
            base="trixie",
            expect={"containerd": "2.1.", "systemd": "257", "runc": "1.3.", "python3": "3.13"},
        ),
        Stack(
            "forky",
            "forky",
            "3.14",
            "unified",
            script="/usr/share/debootstrap/scripts/sid",
            expect={"containerd": "2.1.", "systemd": "26", "runc": "1.3.", "python3": "3.14"},
        ),
    )
}

# The stack of a test module that declares none, of `boot_node()` without `stack=`, and of
# `nodebed boot`: Debian's stable release. Overridable for a whole run (e.g. to try the suite on
# another stack by hand) with NODEMEDIC_TESTBED_DEFAULT_STACK.
DEFAULT = "trixie"


def default_stack() -> Stack:
    return get(os.environ.get("NODEMEDIC_TESTBED_DEFAULT_STACK") or DEFAULT)


def get(stack: str | Stack | None) -> Stack:
    if stack is None:
        return default_stack()
    if isinstance(stack, Stack):
        return stack
    try:
        return STACKS[stack]
    except KeyError:
        raise ValueError(f"unknown test bed stack {stack!r}; known: {', '.join(STACKS)}") from None
