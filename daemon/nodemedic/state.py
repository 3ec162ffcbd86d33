"""Persistent engine state: each problem's position on its ladder, written before every step.

A daemon killed mid-repair restarts from this file and resumes by verifying the step it had
started, never by applying it again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from nodemedic.safety import Guard, atomic_write


class Phase(StrEnum):
    IDLE = "idle"
    SUSPECTED = "suspected"
    CONFIRMED = "confirmed"
    REPAIRING = "repairing"
    VERIFYING = "verifying"
    HEALED = "healed"
    EXHAUSTED = "exhausted"


ACTIVE = frozenset({Phase.SUSPECTED, Phase.CONFIRMED, Phase.REPAIRING, Phase.VERIFYING})


@dataclass
class ProblemRecord:
    problem: str
    phase: Phase = Phase.IDLE
    step: int = 0  # index into the ladder of the step being (or last) run
    step_name: str = ""
    attempts: int = 0  # steps applied in the current episode
    # Episodes in a row healed by the same step (healed_by) since the problem was last quiet:
    # drives the exponential cooldown, which gates only that step as an episode's first response.
    episodes: int = 0
    healed_by: str = ""
    last_change: float = 0.0
    not_before: float = 0.0  # cooldown: healed_by is not an episode's first step before this time
    trigger: str = ""  # signature or condition that raised it
    trigger_cursor: str = ""
    detail: str = ""
    # Units the step in flight stopped and has not started again, in the order it stopped them;
    # written (fsync'd) before each stop, so a killed or failed step is undone: started in
    # reverse order (containerd before kubelet) before the ladder verifies, climbs or gives up.
    undo: list[str] = field(default_factory=list)

    def move(self, phase: Phase, detail: str = "") -> None:
        self.phase = phase
        self.detail = detail
        self.last_change = time.time()


@dataclass
class EngineState:
    problems: dict[str, ProblemRecord] = field(default_factory=dict)
    # Set once a real (non-placeholder) CNI config has been seen on this node.
    real_cni_seen: bool = False
    # The operator's (or a repoint/join flow's) pause: it outlives a restart of the daemon.
    paused: bool = False

    def record(self, problem: str) -> ProblemRecord:
        return self.problems.setdefault(problem, ProblemRecord(problem))


class StateStore:
    def __init__(self, path: Path, guard: Guard) -> None:
        self.path = path
        self.guard = guard

    def load(self) -> EngineState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return EngineState()
        except (OSError, ValueError):
            # A corrupt state file must not keep the daemon down; start clean, keep the evidence
            # (where the directory lets us: a read-only one keeps it where it is).
            try:
                self.path.rename(self.path.with_suffix(".corrupt"))
            except OSError:
                pass
            return EngineState()
        state = EngineState(real_cni_seen=bool(raw.get("real_cni_seen", False)), paused=bool(raw.get("paused", False)))
        for name, record in raw.get("problems", {}).items():
            known = {k: v for k, v in record.items() if k in ProblemRecord.__dataclass_fields__}
            known["phase"] = Phase(known.get("phase", "idle"))
            known["undo"] = [str(unit) for unit in known.get("undo", [])]
            state.problems[name] = ProblemRecord(**known)
        return state

    def save(self, state: EngineState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"real_cni_seen": state.real_cni_seen, "paused": state.paused,
                "problems": {name: asdict(record) for name, record in sorted(state.problems.items())}}
        atomic_write(self.guard, self.path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o600)
