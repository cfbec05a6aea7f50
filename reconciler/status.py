"""`reconciler status`: every month of every table in the window, from metadata only: sync
state, what the Delta log says each month did since its sync, and the daemon's last finding
(`ranking.month_check`).

A month shows `in_sync` only when everything vouches for it: the daemon found it in sync after
its latest sync, and Delta has not changed it since. A newer sync than the finding shows
`unknown`; a change in Delta shows `lagging`, with its age; a Delta table that cannot be read
shows `error` for its months, never `in_sync`.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from reconciler.findings import Finding, read_findings
from reconciler.verdict import Status
from replicator.config import Settings, TableSpec
from replicator.delta import ChangeKind, DeltaTableReader
from replicator.errors import ReplicationError
from replicator.options import age, render_table
from replicator.postgres import Database
from replicator.syncstate import SyncState, read_all_sync_states
from replicator.yearmonth import YearMonth, current_month, retention_window


@dataclass
class MonthStatus:
    table: str
    year_month: str
    status: Status
    in_delta: bool
    synced_version: int | None = None
    synced_at: str | None = None
    synced_rows: int | None = None
    consecutive_failures: int = 0
    last_failure: str | None = None  # only while replications keep failing
    delta_change: str | None = None  # unchanged | changed | unknown, since the sync
    changed_version: int | None = None  # the Delta version that changed the month
    lag_seconds: float = 0.0
    checked_at: str | None = None
    note: str = ""

    @property
    def in_sync(self) -> bool:
        return self.status is Status.IN_SYNC

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "status": str(self.status)}


@dataclass
class StatusReport:
    months: list[MonthStatus] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def all_in_sync(self) -> bool:
        return not self.errors and all(m.in_sync for m in self.months)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "in_sync" if self.all_in_sync else "error" if self.errors else "not_in_sync",
            "all_in_sync": self.all_in_sync,
            "errors": self.errors,
            "months": [m.as_dict() for m in self.months],
        }

    def render(self) -> str:
        header = ("table", "month", "status", "synced", "rows", "checked", "note")
        rows = [header]
        now = time.time()
        for m in self.months:
            synced = "-"
            if m.synced_version is not None:
                synced = f"v{m.synced_version}"
                if m.synced_at:
                    synced += f", {_ago(m.synced_at, now)} ago"
            rows.append(
                (
                    m.table,
                    m.year_month,
                    str(m.status),
                    synced,
                    "-" if m.synced_rows is None else f"{m.synced_rows:,}",
                    f"{_ago(m.checked_at, now)} ago" if m.checked_at else "never",
                    m.note,
                )
            )
        lines = [line.rstrip() for line in render_table(rows)]
        lines += [f"error: {e}" for e in self.errors]
        not_in_sync = sum(1 for m in self.months if not m.in_sync)
        lines.append(
            "all months in sync"
            if self.all_in_sync
            else f"{not_in_sync} of {len(self.months)} month(s) not in sync"
        )
        return "\n".join(lines)


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds") if value else None


def _ago(iso: str, now: float) -> str:
    return age(now - dt.datetime.fromisoformat(iso).timestamp())


def build_status(db: Database, settings: Settings) -> StatusReport:
    window = [str(m) for m in retention_window(current_month(), settings.daemon.retention_months)]
    report = StatusReport()
    with db.connect() as conn, db.errors("Postgres failed"):
        states = {(s.table, s.year_month): s for s in read_all_sync_states(conn)}
        findings = read_findings(conn)
    for spec in settings.tables:
        reader: DeltaTableReader | None = None
        try:
            reader = DeltaTableReader(
                spec, settings.table_uri(spec), settings.delta.storage_options
            )
        except ReplicationError as exc:
            report.errors.append(str(exc))
        for month in window:
            key = (spec.name, month)
            entry = _month(spec, YearMonth.parse(month), reader, states.get(key), findings.get(key))
            if entry is not None:
                report.months.append(entry)
    return report


def _month(
    spec: TableSpec,
    month: YearMonth,
    reader: DeltaTableReader | None,
    state: SyncState | None,
    finding: Finding | None,
) -> MonthStatus | None:
    in_delta = bool(reader and reader.has_month(month))
    if not in_delta and state is None and finding is None:
        return None
    entry = MonthStatus(spec.name, str(month), Status.UNKNOWN, in_delta)
    notes: list[str] = []
    if finding is not None:
        entry.status = finding.status
        entry.checked_at = _iso(finding.checked_at)
        if finding.reason and finding.status is not Status.IN_SYNC:
            notes.append(finding.reason)
    if state is not None:
        entry.synced_version, entry.synced_rows = state.delta_version, state.row_count
        entry.synced_at = _iso(state.synced_at)
        entry.consecutive_failures = state.consecutive_failures
        if state.consecutive_failures:  # a later success clears the failure
            entry.last_failure = state.last_failure_reason
            notes.append(
                f"the last {state.consecutive_failures} replication(s) failed: "
                f"{state.last_failure_reason}"
            )
        # A new sync makes the finding old news (a re-anchor does not: the finding proved it).
        if finding is not None and state.synced_at and finding.checked_at < state.synced_at:
            entry.status = Status.UNKNOWN
            notes = ["synced since the daemon's last check", *notes[1:]]
    if reader is None:
        entry.status = Status.ERROR
        notes.insert(0, "the Delta table cannot be read")
    elif state is not None and state.delta_version is not None:
        change = reader.month_change(
            month,
            version=state.delta_version,
            table_id=state.delta_table_id,
            files=state.delta_files,
        )
        entry.delta_change, entry.changed_version = change.kind.value, change.since_version
        if change.kind is ChangeKind.CHANGED and entry.status is not Status.DRIFT:
            entry.status = Status.LAGGING
            entry.lag_seconds = change.lag_seconds()
            notes = [
                f"Delta changed the month at version {change.since_version} "
                f"(Postgres holds version {state.delta_version}), {age(entry.lag_seconds)} ago"
            ]
        elif change.kind is ChangeKind.UNKNOWN and entry.status is Status.IN_SYNC:
            entry.status = Status.UNKNOWN
            notes.insert(0, f"{change.reason}: the daemon will recompute it")
    entry.note = "; ".join(dict.fromkeys(notes))  # each note once
    return entry
