"""Stale partial downloads in containerd's content ingest dir ("failed size validation",
"unexpected commit digest", "failed reading status of resume write").

Only entries nobody is writing are removed: every file in them older than `ingest.stale_age`
and none of them open for writing. The ingest dir itself stays. Never: blobs/, meta.db, snapshots.
Each entry is removed on its own: one the safety module refuses (a mount point in it) is kept and
reported, and the others are still removed.

Which entries are stale (and how "open for writing" is asked of the kernel): probes/ingest_dir.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nodemedic.probes.ingest_dir import INGEST, stale_entries_in
from nodemedic.repairs.context import RepairContext
from nodemedic.repairs.remedy_probes import runtime_ready
from nodemedic.repairs.step import StepClass
from nodemedic.safety import Guard, UnsafeOperation, remove_tree


def ingest_dir(ctx: RepairContext) -> Path:
    return ctx.root.path(ctx.settings.paths.containerd_root).joinpath(*INGEST)


def remove_entries(guard: Guard, entries: list[Path]) -> tuple[list[str], list[str]]:
    """Remove each entry on its own: one the safety module refuses (a mount point in it, one
    made while it is walked) is reported and kept, and the others are still removed."""
    removed, refused = [], []
    for entry in entries:
        try:
            remove_tree(guard, entry)
        except UnsafeOperation as err:
            refused.append(f"{entry.name} ({err})")
            continue
        removed.append(entry.name)
    return removed, refused


def stale_entries(ctx: RepairContext, now: float | None = None) -> list[Path]:
    return stale_entries_in(ingest_dir(ctx), ctx.settings.ingest.stale_age, now)


async def stale_ingest_present(ctx: RepairContext) -> bool:
    return bool(stale_entries(ctx))


@dataclass(frozen=True)
class RemoveStaleIngests:
    name: str = "remove-stale-ingests"
    # Partial downloads only, re-fetched by the next pull; never blobs, metadata or snapshots.
    klass: StepClass = StepClass.SAFE
    idempotent: bool = True

    async def needed(self, ctx: RepairContext) -> bool:
        return bool(stale_entries(ctx))

    async def apply(self, ctx: RepairContext) -> str:
        removed, refused = remove_entries(ctx.guard, stale_entries(ctx))
        done = f"removed {len(removed)} stale ingest entr{'y' if len(removed) == 1 else 'ies'}: {', '.join(removed)}"
        # A refused entry stays stale, so verify() fails and the ladder ends reporting it.
        return done + (f"; refused {len(refused)}: {'; '.join(refused)}" if refused else "")

    async def verify(self, ctx: RepairContext) -> bool:
        # containerd's own view: its runtime answers and no stale ingest remains under it.
        return await runtime_ready(ctx) and not stale_entries(ctx)
