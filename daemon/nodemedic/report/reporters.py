"""The reporters, assembled in one place. A new reporter (Node conditions, Events) is a module
implementing engine/reporting.py's Reporter and one entry in this list."""

from __future__ import annotations

from nodemedic.engine.reporting import Reporter
from nodemedic.report.dbus_api import ApiServer
from nodemedic.report.dbus_signals import DbusSignals
from nodemedic.report.journal_reporter import JournalReporter
from nodemedic.report.metrics import MetricsReporter
from nodemedic.report.status import StatusReporter


def assemble(metrics: MetricsReporter, status: StatusReporter, api: ApiServer) -> list[Reporter]:
    # In this order, as before the interface: the views first (metrics file, STATUS=), then the
    # ProblemChanged signal, then the journal entry.
    return [metrics, status, DbusSignals(api), JournalReporter()]
