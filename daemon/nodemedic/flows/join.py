"""`nodemedic join -- kubeadm join …`: preflight, run, recognise, clean up, retry within a budget.

The join command runs exactly as given (argv, no shell); only what nodemedic shows of it is
masked. Its output (stdout and stderr, in order) is streamed to the terminal and matched line by
line against the catalogue as unit "kubeadm"; after a failed attempt kubelet's and containerd's
journal since the attempt began is matched too, because kubeadm's "[kubelet-check]" timeout only
says that kubelet is unhealthy, and kubelet's own lines say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodemedic.config import Settings
from nodemedic.detector.matcher import Matcher
from nodemedic.detector.signatures import KUBEADM, Signature, load_catalogue
from nodemedic.flows import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, join_cleanup, join_preflight
from nodemedic.flows.join_cleanup import Level, aggressive_refusal, choose_level
from nodemedic.flows.pause import daemon_paused
from nodemedic.flows.report import FlowReport
from nodemedic.flows.services import CONTAINERD, KUBELET
from nodemedic.flows.systemd import FlowBus
from nodemedic.hostroot import HostRoot
from nodemedic.journal import ERR, NOTICE, WARNING, Kind
from nodemedic.probes.cri import CriClient
from nodemedic.repairs.commands import child_environment
from nodemedic.repairs.context import RepairContext
from nodemedic.safety import Guard
from nodemedic.state import EngineState

TAIL_LINES = 20
LINE_LIMIT = 1 << 20


@dataclass
class Attempt:
    number: int
    returncode: int = -1
    timed_out: bool = False
    signatures: dict[str, Signature] = field(default_factory=dict)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def problems(self) -> list[str]:
        return sorted({s.problem for s in self.signatures.values()})


def backoff(settings: Settings, failed_attempt: int) -> float:
    return min(settings.join.backoff * 2 ** (failed_attempt - 1), settings.join.backoff_max)


class Join:
    def __init__(self, settings: Settings, root: HostRoot, argv: Sequence[str], report: FlowReport) -> None:
        self.settings = settings
        self.root = root
        self.argv = list(argv)
        self.report = report
        self.guard = Guard.from_paths(root.path(p) for p in settings.policy.protected_paths)
        self.matcher = Matcher(load_catalogue(root).signatures)
        self.bus = FlowBus()

    def context(self, cri: CriClient) -> RepairContext:
        return RepairContext(self.settings, self.root, self.guard, self.bus, cri, self._daemon_state())

    def _daemon_state(self) -> EngineState:
        """The daemon's memory of a real CNI config (the placeholder policy needs it), read only:
        a join never rewrites or renames the daemon's state file."""
        path = self.root.path(self.settings.daemon.state_dir) / "state.json"
        try:
            seen = bool(json.loads(path.read_text()).get("real_cni_seen", False))
        except (OSError, ValueError, AttributeError):
            seen = False
        return EngineState(real_cni_seen=seen)

    # -- the flow ---------------------------------------------------------------------------------
    async def run(self, dry_run: bool) -> int:
        try:
            await self.bus.connect((CONTAINERD, KUBELET), lambda _unit: None)
        except Exception as err:  # noqa: BLE001 - nothing was done
            self.report.event(Kind.JOIN_REFUSED, f"refused: cannot reach systemd over D-Bus: {err}", ERR,
                              reason=str(err))
            return EXIT_REFUSED
        try:
            async with CriClient(str(self.root.path(self.settings.paths.containerd_socket))) as cri:
                ctx = self.context(cri)
                if dry_run:
                    return await self.plan(ctx)
                async with daemon_paused(self.report):
                    return await self.attempts(ctx)
        finally:
            self.bus.close()

    async def preflight(self, ctx: RepairContext, fix: bool) -> bool:
        for check in join_preflight.CHECKS:
            result = await check(ctx, fix)
            if fix:
                self.report.event(Kind.JOIN_PREFLIGHT, f"preflight {result.name}: {result.result}: {result.detail}",
                                  WARNING if result.refused else NOTICE, check=result.name, result=result.result)
            else:
                self.report.say(f"preflight {result.name}: {result.result}: {result.detail}")
            if result.refused:
                if fix:
                    self.report.event(Kind.JOIN_REFUSED, f"refused: {result.detail}", ERR, check=result.name,
                                      reason=result.detail)
                return False
        return True

    async def plan(self, ctx: RepairContext) -> int:
        join = self.settings.join
        self.report.say(f"plan (dry run, nothing changed) for: {self.report.masker.command(self.argv)}")
        ok = await self.preflight(ctx, fix=False)
        self.report.say(f"up to {join.attempts} attempt(s), each within {join.attempt_timeout:.0f}s; after a failed "
                        "attempt, with backoff, before the next:")
        refusal = aggressive_refusal(ctx, self.argv)
        for failed in range(1, join.attempts):
            level, held = choose_level(failed, join.gentle_cleanups, self.settings.policy.allow_destructive)
            if level is Level.AGGRESSIVE and refusal:
                level, held = Level.GENTLE, f"aggressive cleanup held back: {refusal}"
            self.report.say(f"  after attempt {failed}: {level} cleanup, wait {backoff(self.settings, failed):.0f}s"
                            + (f" ({held})" if held else ""))
        return EXIT_OK if ok else EXIT_REFUSED

    async def attempts(self, ctx: RepairContext) -> int:
        if not await self.preflight(ctx, fix=True):
            return EXIT_REFUSED
        budget = self.settings.join.attempts
        for number in range(1, budget + 1):
            try:
                attempt = await self.attempt(number)
            except asyncio.CancelledError:
                self.report.event(Kind.JOIN_ATTEMPT_FAILED, f"join attempt {number} of {budget} interrupted; the "
                                  "join command was stopped", WARNING, attempt=number, returncode="interrupted")
                raise
            if attempt.returncode == 0:
                self.report.event(Kind.JOIN_SUCCEEDED, f"join succeeded on attempt {number} of {budget}", NOTICE,
                                  attempt=number)
                return EXIT_OK
            why = "timed out" if attempt.timed_out else f"exited {attempt.returncode}"
            self.report.event(Kind.JOIN_ATTEMPT_FAILED, f"join attempt {number} of {budget} {why}" + (
                f"; recognised: {', '.join(attempt.problems)}" if attempt.problems else ""), WARNING,
                attempt=number, returncode=attempt.returncode, problems=",".join(attempt.problems),
                signatures=",".join(sorted(attempt.signatures)), output_tail="\n".join(attempt.tail))
            if number < budget:
                await self.cleanup(ctx, number)
                delay = backoff(self.settings, number)
                self.report.say(f"retrying in {delay:.0f}s")
                await asyncio.sleep(delay)
        self.report.event(Kind.JOIN_EXHAUSTED, f"join failed {budget} time(s); giving up (join.attempts = {budget}). "
                          "See `journalctl -xeu kubelet`", ERR, attempt=budget)
        return EXIT_FAILED

    async def cleanup(self, ctx: RepairContext, failed: int) -> None:
        join = self.settings.join
        level, held = choose_level(failed, join.gentle_cleanups, self.settings.policy.allow_destructive)
        if level is Level.AGGRESSIVE and (refusal := aggressive_refusal(ctx, self.argv)):
            level, held = Level.GENTLE, f"aggressive cleanup held back: {refusal}"
        self.report.say(f"cleanup after attempt {failed}: {level}" + (f" ({held})" if held else ""))
        try:
            done = await (join_cleanup.aggressive(ctx) if level is Level.AGGRESSIVE else join_cleanup.gentle(ctx))
            result, priority = "done", NOTICE
        except Exception as err:  # noqa: BLE001 - report it; the retry shows whether it mattered
            done, result, priority = [f"failed: {err}"], "failed", WARNING
        self.report.event(Kind.JOIN_CLEANUP, f"{level} cleanup after attempt {failed}: {'; '.join(done)}", priority,
                          level=level, attempt=failed, result=result, held_back=held or None,
                          actions="\n".join(done))

    # -- one attempt -------------------------------------------------------------------------------
    async def attempt(self, number: int) -> Attempt:
        attempt = Attempt(number)
        timeout = self.settings.join.attempt_timeout
        self.report.event(Kind.JOIN_ATTEMPT_STARTED, f"join attempt {number} of {self.settings.join.attempts}: "
                          f"{self.report.masker.command(self.argv)}", NOTICE, attempt=number,
                          command=self.report.masker.command(self.argv))
        started = time.time()
        process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=child_environment(), start_new_session=True, limit=LINE_LIMIT)
        try:
            # the whole attempt is timed: output, and the exit after its output ends
            attempt.returncode = await asyncio.wait_for(self._stream(process, attempt), timeout)
        except TimeoutError:
            attempt.timed_out = True
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                attempt.returncode = await process.wait()
        if attempt.returncode != 0:
            self._journal_symptoms(attempt, started)
        return attempt

    async def _stream(self, process: asyncio.subprocess.Process, attempt: Attempt) -> int:
        assert process.stdout is not None
        while raw := await self._line(process.stdout):
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.report.output(line)
            attempt.tail.append(self.report.masker.text(line))
            self._recognise(attempt, line, KUBEADM)
        return await process.wait()

    @staticmethod
    async def _line(stream: asyncio.StreamReader) -> bytes:
        try:
            return await stream.readline()
        except ValueError:  # a line longer than LINE_LIMIT: pass it on in pieces
            return await stream.read(LINE_LIMIT)

    def _recognise(self, attempt: Attempt, line: str, unit: str) -> None:
        for signature in self.matcher.match(line, unit):
            if signature.id not in attempt.signatures:
                attempt.signatures[signature.id] = signature
                self.report.event(Kind.JOIN_SYMPTOM, f"recognised {signature.id} ({signature.problem}) in "
                                  f"{unit}: {line}", WARNING, attempt=attempt.number, signature=signature.id,
                                  problem=signature.problem, source=unit)

    def _journal_symptoms(self, attempt: Attempt, since: float) -> None:
        """kubelet's and containerd's own lines during the attempt say why kubeadm gave up."""
        if self.root.base != Path("/"):
            return
        try:
            from systemd import journal
        except ImportError:
            return
        try:
            reader = journal.Reader()
            reader.this_boot()
            for unit in (KUBELET, CONTAINERD):
                reader.add_match(_SYSTEMD_UNIT=unit)  # two values of one field: either matches
            reader.seek_realtime(dt.datetime.fromtimestamp(since))
            for count, entry in enumerate(reader):
                if count >= 5000:
                    break
                message = entry.get("MESSAGE", "")
                unit = entry.get("_SYSTEMD_UNIT", "")
                if isinstance(message, str) and unit:
                    self._recognise(attempt, message, unit)
            reader.close()
        except OSError:
            return


async def join(settings: Settings, root: HostRoot, argv: Sequence[str], dry_run: bool, report: FlowReport) -> int:
    if not dry_run and root.base != Path("/"):
        report.event(Kind.JOIN_REFUSED, "refused: --root is for --dry-run only; a join acts on the running system",
                     WARNING, reason="--root without --dry-run")
        return EXIT_REFUSED
    return await Join(settings, root, argv, report).run(dry_run)
