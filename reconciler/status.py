"""`reconciler status`: every month of every table in the window, from metadata only: sync
state, what the Delta log says each month did since its sync, and the daemon's last finding
(`ranking.month_check`). The status rules are `verdict.reported`; this module gathers the facts
and renders the records.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from reconciler.findings import read_findings
from reconciler.record import MonthRecord, timestamp
from reconciler.verdict import ReportFacts, Status, reported
from replicator.config import Settings
from replicator.delta import DeltaTableReader
from replicator.errors import ReplicationError
from replicator.month import Month
from replicator.options import age, render_table
from replicator.postgres import Database
from replicator.syncstate import SyncState, read_all_sync_states
from replicator.yearmonth import current_month, retention_window


@dataclass(frozen=True)
class MonthStatus:
    """One month as `status` reports it: its record, and whether Delta has it."""

    record: MonthRecord
    in_delta: bool
    note: str = ""

    @property
    def in_sync(self) -> bool:
        return self.record.in_sync

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        record = self.record
        return {
            "table": record.table,
            "year_month": record.year_month,
            "status": str(record.status),
            "in_delta": self.in_delta,
            "synced_version": record.synced_version,
            "synced_at": _iso(record.last_sync_at),
            "synced_rows": record.postgres_rows,
            "consecutive_failures": record.consecutive_failures,
            "last_failure": record.last_failure if record.consecutive_failures else None,
            "delta_change": None if record.delta_change is None else record.delta_change.value,
            "changed_version": record.changed_version,
            "lag_seconds": record.lag_seconds,
            "checked_at": _iso(record.checked_at),
            "proven_at": _iso(record.proven_at),
            "proof_age_seconds": _age(record.proven_at, now),
            "note": self.note,
        }


@dataclass
class StatusReport:
    months: list[MonthStatus] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def all_in_sync(self) -> bool:
        return not self.errors and all(m.in_sync for m in self.months)

    def as_json(self) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        return {
            "status": "in_sync" if self.all_in_sync else "error" if self.errors else "not_in_sync",
            "all_in_sync": self.all_in_sync,
            "errors": self.errors,
            "months": [m.as_json(now) for m in self.months],
        }

    def render(self) -> str:
        header = ("table", "month", "status", "synced", "rows", "checked", "proof", "note")
        rows = [header]
        now = dt.datetime.now(dt.UTC)
        for m in self.months:
            record = m.record
            synced = "-"
            if record.synced_version is not None:
                synced = f"v{record.synced_version}"
                if record.last_sync_at:
                    synced += f", {_ago(record.last_sync_at, now)} ago"
            rows.append(
                (
                    record.table,
                    record.year_month,
                    str(record.status),
                    synced,
                    "-" if record.postgres_rows is None else f"{record.postgres_rows:,}",
                    f"{_ago(record.checked_at, now)} ago" if record.checked_at else "never",
                    f"{_ago(record.proven_at, now)} ago" if record.proven_at else "never",
                    m.note,
                )
            )
        lines = [line.rstrip() for line in render_table(rows)]
        lines += [f"error: {e}" for e in self.errors]
        not_in_sync = sum(1 for m in self.months if not m.in_sync)
        lines.append(
            "all months in sync"
            if self.all_in_sync
            else f"{not_in_sync} of {len(self.months)} months not in sync"
        )
        return "\n".join(lines)


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds") if value else None


def _age(value: dt.datetime | None, now: dt.datetime) -> float | None:
    stamp = timestamp(value)
    return None if stamp is None else max(0.0, now.timestamp() - stamp)


def _ago(value: dt.datetime, now: dt.datetime) -> str:
    return age((now - value).total_seconds())


def build_status(db: Database, settings: Settings) -> StatusReport:
    window = retention_window(current_month(), settings.daemon.retention_months)
    report = StatusReport()
    with db.session() as conn:
        states = read_all_sync_states(conn, settings.tables)
        findings = read_findings(conn, settings.tables)
    for spec in settings.tables:
        reader: DeltaTableReader | None = None
        try:
            reader = DeltaTableReader(
                spec, settings.table_uri(spec), settings.delta.storage_options
            )
        except ReplicationError as exc:
            report.errors.append(str(exc))
        for year_month in window:
            month = Month.of(spec, year_month)
            entry = _month(month, reader, states.get(month), findings.get(month))
            if entry is not None:
                report.months.append(entry)
    return report


def _month(
    month: Month,
    reader: DeltaTableReader | None,
    state: SyncState | None,
    finding: MonthRecord | None,
) -> MonthStatus | None:
    in_delta = bool(reader and reader.has_month(month.year_month))
    if not in_delta and state is None and finding is None:
        return None
    record = finding or MonthRecord(month)
    facts = ReportFacts(
        found=None if finding is None else finding.status,
        found_reason="" if finding is None else finding.reason,
        delta_readable=reader is not None,
    )
    notes: list[str] = []
    if state is not None:
        # A new sync makes the finding old news (a re-anchor does not: the finding proved it).
        checked = finding.checked_at if finding is not None else None
        synced_since = (
            checked is not None and state.synced_at is not None and checked < state.synced_at
        )
        facts = dataclasses.replace(facts, synced_since_finding=synced_since)
        # A sync proves the month too: it digests the rows it copies, in the transaction
        # that writes them.
        proofs = [t for t in (record.proven_at, state.verified_at or state.synced_at) if t]
        record = dataclasses.replace(
            record,
            synced_version=state.delta_version,
            postgres_rows=state.row_count,
            last_sync_at=state.synced_at,
            consecutive_failures=state.consecutive_failures,
            last_failure=state.last_failure_reason,
            proven_at=max(proofs) if proofs else None,
        )
        if state.consecutive_failures:  # a later success clears the failure
            notes.append(
                f"the last {state.consecutive_failures} replication(s) failed: "
                f"{state.last_failure_reason}"
            )
        if reader is not None and state.delta_version is not None:
            record, facts = _delta_since_sync(record, facts, reader, state)
    verdict = reported(facts)
    if verdict.reason:
        notes.insert(0, verdict.reason)
    lag = record.lag_seconds if verdict.status is Status.LAGGING else 0.0
    record = dataclasses.replace(
        record, status=verdict.status, reason=verdict.reason, lag_seconds=lag
    )
    return MonthStatus(record, in_delta, "; ".join(dict.fromkeys(notes)))


def _delta_since_sync(
    record: MonthRecord, facts: ReportFacts, reader: DeltaTableReader, state: SyncState
) -> tuple[MonthRecord, ReportFacts]:
    """What the Delta log says of the month since its sync."""
    assert state.delta_version is not None
    change = reader.month_change(record.month.year_month, state.since())
    reason = change.reason
    lag = 0.0
    if change.changed and change.since_version is not None:
        lag = change.lag_seconds()
        reason = (
            f"Delta changed the month at version {change.since_version} "
            f"(Postgres holds version {state.delta_version}), {age(lag)} ago"
        )
    record = dataclasses.replace(
        record,
        delta_change=change.kind,
        changed_version=change.since_version,
        lag_seconds=lag,
    )
    return record, dataclasses.replace(facts, change=change.kind, change_reason=reason)
