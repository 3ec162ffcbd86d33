"""The settings nodemedic runs with. Defaults live in the vendor nodemedic.toml, not here:
one source of truth, which `nodemedic config show --origins` can point at."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from nodemedic.config.schema import Seconds


@dataclass(frozen=True)
class Daemon:
    mode: Literal["repair", "observe"]
    units: tuple[str, ...]
    state_dir: str
    runtime_dir: str


@dataclass(frozen=True)
class Journal:
    # Entries older than daemon start minus this grace are replayed for counting only.
    replay_grace: Seconds
    # How far back to read when there is no saved cursor.
    replay_window: Seconds
    batch_size: int


@dataclass(frozen=True)
class Paths:
    cni_conf_dir: str
    cni_bin_dir: str
    containerd_root: str
    containerd_config: str
    containerd_socket: str


@dataclass(frozen=True)
class Policy:
    allow_destructive: bool
    protected_paths: tuple[str, ...]
    attempt_budget: int
    cooldown: Seconds
    cooldown_max: Seconds
    quiet_period: Seconds
    step_timeout: Seconds
    verify_attempts: int
    verify_interval: Seconds


@dataclass(frozen=True)
class Cni:
    placeholder: Literal["never", "until-first-real", "always"]
    placeholder_subnet: str
    placeholder_file: str


@dataclass(frozen=True)
class ImageFs:
    warmup_attempts: int
    warmup_interval: Seconds


@dataclass(frozen=True)
class Ingest:
    stale_age: Seconds


@dataclass(frozen=True)
class Metrics:
    textfile: str


@dataclass(frozen=True)
class Repoint:
    """`nodemedic repoint`: moving containerd's root to other storage."""

    # Filesystem types the target may be on (overlayfs needs d_type and trusted.* xattrs).
    filesystems: tuple[str, ...]
    copy_timeout: Seconds
    progress_interval: Seconds


@dataclass(frozen=True)
class Join:
    """`nodemedic join`: kubeadm join with preflight, cleanup and retries."""

    attempts: int
    attempt_timeout: Seconds
    # Gentle cleanups before an aggressive one is tried (aggressive needs policy.allow_destructive).
    gentle_cleanups: int
    backoff: Seconds
    backoff_max: Seconds


@dataclass(frozen=True)
class ProblemSettings:
    """Per-problem overrides, `[problems.<name>]`; unset keys fall back to [policy]."""

    enabled: bool | None = None
    attempt_budget: int | None = None


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
    repoint: Repoint
    join: Join
    problems: Mapping[str, ProblemSettings]

    def problem_enabled(self, problem: str) -> bool:
        override = self.problems.get(problem)
        return True if override is None or override.enabled is None else override.enabled

    def attempt_budget(self, problem: str) -> int:
        override = self.problems.get(problem)
        if override is None or override.attempt_budget is None:
            return self.policy.attempt_budget
        return override.attempt_budget
