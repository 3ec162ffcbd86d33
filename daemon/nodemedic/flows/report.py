"""How a flow tells the operator what it does: a line on stdout, STATUS= to systemd when run
as a unit, and a journal entry with its MESSAGE_ID for every event that matters later.
Everything passes through the masker first, so no secret reaches any of the three."""

from __future__ import annotations

import sys
from typing import TextIO

from nodemedic.flows.masking import Masker
from nodemedic.journal import INFO, Kind, log
from nodemedic.report.notify import notify


class FlowReport:
    def __init__(self, flow: str, masker: Masker | None = None, out: TextIO | None = None) -> None:
        self.flow = flow
        self.masker = masker or Masker()
        self.out = out

    def say(self, line: str) -> None:
        """Progress: stdout and the unit's status line, not the journal."""
        text = self.masker.text(line)
        print(f"{self.flow}: {text}", file=self.out or sys.stdout, flush=True)
        notify(f"STATUS={self.flow}: {text}")

    def event(self, kind: Kind, message: str, priority: int = INFO, **fields: object) -> None:
        """A journal entry (and the same line on stdout)."""
        self.say(message)
        log(kind, self.masker.text(message), priority, flow=self.flow, **self.masker.fields(fields))

    def output(self, line: str) -> None:
        """A line of a child command's output, passed through masked, without a prefix."""
        print(self.masker.text(line), file=self.out or sys.stdout, flush=True)
