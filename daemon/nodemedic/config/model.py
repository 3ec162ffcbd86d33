"""The settings nodemedic runs with. Defaults live in the vendor nodemedic.toml, not here:
one source of truth, which `nodemedic config show --origins` can point at.

Every number has bounds and every path or file name a shape (constraints.py): what the schema
accepts is what the daemon can work with. docs/man/nodemedic.toml.5 lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from nodemedic.config.constraints import (
    FILESYSTEM_TYPE,
    NODE_NAME,
    UNIT_NAME,
    AbsolutePath,
    Count,
    Each,
    FileName,
    Length,
    Matches,
    Span,
    absolute_path,
    ip_network,
)
from nodemedic.config.schema import Seconds

HOUR = 3600.0
DAY = 86400.0

AbsPath = Annotated[str, AbsolutePath()]


@dataclass(frozen=True)
class Daemon:
    mode: Literal["repair", "observe"]
    units: Annotated[tuple[str, ...], Length(1, 64), Each(UNIT_NAME)]
    state_dir: AbsPath
    runtime_dir: AbsPath


@dataclass(frozen=True)
class Journal:
    # Entries older than daemon start minus this grace are replayed for counting only.
    replay_grace: Annotated[Seconds, Span(0, HOUR)]
    # How far back to read when there is no saved cursor.
    replay_window: Annotated[Seconds, Span(0, 7 * DAY)]
    # At least 1: a batch of 0 reads nothing and wakes the loop forever.
    batch_size: Annotated[int, Count(1, 100_000)]


@dataclass(frozen=True)
class Paths:
    cni_conf_dir: AbsPath
    cni_bin_dir: AbsPath
    containerd_root: AbsPath
    containerd_config: AbsPath
    containerd_socket: AbsPath


@dataclass(frozen=True)
class Policy:
    allow_destructive: bool
    protected_paths: Annotated[tuple[str, ...], Length(0, 256), Each(absolute_path)]
    attempt_budget: Annotated[int, Count(1, 100)]
    cooldown: Annotated[Seconds, Span(0, DAY)]
    cooldown_max: Annotated[Seconds, Span(0, 7 * DAY)]
    quiet_period: Annotated[Seconds, Span(0, 7 * DAY)]
    step_timeout: Annotated[Seconds, Span(1, 6 * HOUR)]
    verify_attempts: Annotated[int, Count(1, 1000)]
    verify_interval: Annotated[Seconds, Span(0, HOUR)]


@dataclass(frozen=True)
class Cni:
    placeholder: Literal["never", "until-first-real", "always"]
    placeholder_subnet: Annotated[str, ip_network]
    # A name inside paths.cni_conf_dir, never a path: nodemedic writes and deletes it. The file
    # holds a network list, which containerd's CNI loads only from a .conflist.
    placeholder_file: Annotated[str, FileName(".conflist")]


@dataclass(frozen=True)
class ImageFs:
    warmup_attempts: Annotated[int, Count(1, 1000)]
    warmup_interval: Annotated[Seconds, Span(0, HOUR)]


@dataclass(frozen=True)
class Ingest:
    # Not 0: a pull in progress rewrites its ingest all the time; an age of 0 would judge by
    # "open for writing" alone.
    stale_age: Annotated[Seconds, Span(1, 30 * DAY)]


@dataclass(frozen=True)
class Metrics:
    # node-exporter's textfile collector reads *.prom only; "" writes no metrics.
    textfile: Annotated[str, AbsolutePath(suffix=".prom", empty_ok=True)]


@dataclass(frozen=True)
class Kubernetes:
    """The cluster side (nodemedic-kube.service): Node conditions and Events. The repair daemon
    itself never reads these: it stays off the network."""

    enabled: bool
    # The kubelet's own is enough for conditions and Events (docs/kubernetes.md).
    kubeconfig: AbsPath
    # "" = the hostname, lower-cased: what the kubelet registers without --hostname-override.
    node_name: Annotated[str, NODE_NAME]
    # EKS-convention ContainerRuntimeReady/NetworkingReady/StorageReady False once a problem is
    # exhausted, for the fleet's node replacers. Off: replacing nodes is the fleet's decision.
    handoff: bool


@dataclass(frozen=True)
class Repoint:
    """`nodemedic repoint`: moving containerd's root to other storage."""

    # Filesystem types the target may be on (overlayfs needs d_type and trusted.* xattrs).
    filesystems: Annotated[tuple[str, ...], Length(1, 32), Each(FILESYSTEM_TYPE)]
    copy_timeout: Annotated[Seconds, Span(1, 7 * DAY)]
    progress_interval: Annotated[Seconds, Span(0.1, HOUR)]


@dataclass(frozen=True)
class Join:
    """`nodemedic join`: kubeadm join with preflight, cleanup and retries."""

    attempts: Annotated[int, Count(1, 100)]
    attempt_timeout: Annotated[Seconds, Span(1, DAY)]
    # Gentle cleanups before an aggressive one is tried (aggressive needs policy.allow_destructive).
    gentle_cleanups: Annotated[int, Count(0, 100)]
    backoff: Annotated[Seconds, Span(0, HOUR)]
    backoff_max: Annotated[Seconds, Span(0, DAY)]


# -- the fleet guard (issue 15; nodemedic-kube.service holds the slots, engine/fleet.py asks) --

@dataclass(frozen=True)
class Fleet:
    """At most `max_concurrent` nodes of the fleet in a disruptive or destructive step at once:
    each such step first takes one of that many Leases (nodemedic-slot-0..N-1) in `namespace`."""

    enabled: bool
    max_concurrent: Annotated[int, Count(1, 10_000)]
    # A DNS-1123 label: what a Kubernetes namespace name may be.
    namespace: Annotated[str, Matches(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", "a Kubernetes namespace name")]
    # The Lease's leaseDurationSeconds: a holder that died frees its slot after this long. At
    # least 15s: it is renewed every third of it, and a renewal must fit in that third.
    lease_seconds: Annotated[Seconds, Span(15, HOUR)]
    # While the API server cannot be reached: hold disruptive steps (fail closed) or let them run.
    when_unreachable: Literal["hold", "proceed"]
    # The guard's own credentials ("" = kubernetes.kubeconfig): the kubelet's may use no Lease
    # but its own heartbeat, so with those the guard has no identity and holds.
    kubeconfig: Annotated[str, AbsolutePath(empty_ok=True)]


@dataclass(frozen=True)
class ProblemSettings:
    """Per-problem overrides, `[problems.<name>]`; unset keys fall back to [policy]."""

    enabled: bool | None = None
    attempt_budget: Annotated[int, Count(1, 100)] | None = None


@dataclass(frozen=True)
class Settings:
    daemon: Daemon
    journal: Journal
    paths: Paths
    policy: Policy
    cni: Cni
    imagefs: ImageFs
    ingest: Ingest
    metrics: Metrics
    kubernetes: Kubernetes
    repoint: Repoint
    join: Join
    fleet: Fleet
    problems: Mapping[str, ProblemSettings]

    def problem_enabled(self, problem: str) -> bool:
        override = self.problems.get(problem)
        return True if override is None or override.enabled is None else override.enabled

    def attempt_budget(self, problem: str) -> int:
        override = self.problems.get(problem)
        if override is None or override.attempt_budget is None:
            return self.policy.attempt_budget
        return override.attempt_budget
