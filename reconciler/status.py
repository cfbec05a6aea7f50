"""`reconciler status`: every month of every table in the window, from metadata only: sync
state, the Delta log (lag) and the daemon's last comparison (`ranking.month_check`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from reconciler.findings import read_findings
from reconciler.verdict import Status
from replicator.config import Settings
from replicator.delta import DeltaTableReader
from replicator.errors import ReplicationError
from replicator.options import render_table
from replicator.postgres import Database
from replicator.syncstate import read_all_sync_states
from replicator.yearmonth import YearMonth, current_month, retention_window


@dataclass
class MonthStatus:
    table: str
    year_month: str
    status: Status  # the daemon's last finding, or unknown
    in_delta: bool
    synced_version: int | None = None
    synced_at: str | None = None
    synced_rows: int | None = None
    consecutive_failures: int = 0
    last_failure: str | None = None
    delta_changed_since_sync: bool = False
    lag_seconds: float = 0.0
    checked_at: str | None = None
    reason: str = ""

    @property
    def in_sync(self) -> bool:
        return self.status is Status.IN_SYNC and not self.delta_changed_since_sync


@dataclass
class StatusReport:
    months: list[MonthStatus] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def all_in_sync(self) -> bool:
        return not self.errors and all(m.in_sync for m in self.months)

    def as_dict(self) -> dict[str, Any]:
        return {
            "all_in_sync": self.all_in_sync,
            "errors": self.errors,
            "months": [m.__dict__ for m in self.months],
        }

    def render(self) -> str:
        header = ("table", "month", "status", "synced v", "rows", "lag s", "checked at", "note")
        rows = [header]
        for m in self.months:
            note = m.reason or (m.last_failure or "")
            if m.delta_changed_since_sync:
                note = "Delta changed since the sync; " + note
            rows.append(
                (
                    m.table,
                    m.year_month,
                    m.status,
                    str(m.synced_version),
                    str(m.synced_rows),
                    f"{m.lag_seconds:.0f}",
                    m.checked_at or "-",
                    note,
                )
            )
        lines = render_table(rows)
        lines += [f"error: {e}" for e in self.errors]
        lines.append("all months in sync" if self.all_in_sync else "NOT all months in sync")
        return "\n".join(lines)


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds") if value else None


def build_status(db: Database, settings: Settings) -> StatusReport:
    window = [str(m) for m in retention_window(current_month(), settings.daemon.retention_months)]
    report = StatusReport()
    with db.connect() as conn, db.errors("Postgres failed"):
        states = {(s.table, s.year_month): s for s in read_all_sync_states(conn)}
        findings = read_findings(conn)
    for spec in settings.tables:
        reader: DeltaTableReader | None
        try:
            reader = DeltaTableReader(
                spec, settings.table_uri(spec), settings.delta.storage_options
            )
        except ReplicationError as exc:
            report.errors.append(str(exc))
            reader = None
        for month in window:
            key = (spec.name, month)
            in_delta = bool(reader and reader.has_month(YearMonth.parse(month)))
            state, finding = states.get(key), findings.get(key)
            if not in_delta and state is None and finding is None:
                continue
            entry = MonthStatus(spec.name, month, Status.UNKNOWN, in_delta)
            if finding is not None:
                entry.status, entry.reason = finding.status, finding.reason
                entry.checked_at = _iso(finding.checked_at)
            if state is not None:
                entry.synced_version, entry.synced_rows = state.delta_version, state.row_count
                entry.synced_at = _iso(state.synced_at)
                entry.consecutive_failures = state.consecutive_failures
                entry.last_failure = state.last_failure_reason
                if finding is not None and state.synced_at and finding.checked_at < state.synced_at:
                    entry.status = Status.UNKNOWN
                    entry.reason = "synced again since the last check"
            if reader is not None and state is not None and state.delta_version is not None:
                change = reader.month_change(
                    YearMonth.parse(month),
                    version=state.delta_version,
                    table_id=state.delta_table_id,
                    files=state.delta_files,
                )
                entry.delta_changed_since_sync = change.changed
                entry.lag_seconds = change.lag_seconds()
            report.months.append(entry)
    return report
