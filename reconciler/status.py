"""`reconciler status`: every month of every table in the window, from metadata only: sync
state, the Delta log (lag) and the daemon's last comparison (`ranking.month_check`)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from reconciler.check import MonthComparer
from reconciler.daemon import retention_window
from reconciler.syncstate import read_all_sync_states
from replicator.delta import DeltaTableReader
from replicator.errors import ReplicationError
from replicator.options import render_table
from replicator.yearmonth import YearMonth


@dataclass
class MonthStatus:
    table: str
    year_month: str
    status: str  # the daemon's last finding, or unknown
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
        return self.status == "in_sync" and not self.delta_changed_since_sync


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


def build_status(comparer: MonthComparer) -> StatusReport:
    settings = comparer.settings
    now = time.gmtime()
    window = [
        str(m)
        for m in retention_window(
            YearMonth(now.tm_year, now.tm_mon), settings.daemon.retention_months
        )
    ]
    report = StatusReport()
    with comparer.connect() as conn:
        states = {(s.table, s.year_month): s for s in read_all_sync_states(conn)}
        checks = {
            (row[0], row[1]): row
            for row in conn.execute(
                "SELECT table_name, year_month, status, reason, checked_at"
                " FROM ranking.month_check",
                binary=True,
            )
        }
    for spec in settings.tables:
        reader: DeltaTableReader | None
        try:
            reader = comparer.latest(spec)
        except ReplicationError as exc:
            report.errors.append(str(exc))
            reader = None
        held_cache: dict[int, DeltaTableReader | None] = {}
        for month in window:
            key = (spec.name, month)
            files = (
                {f.path: f for f in reader.month_files(YearMonth.parse(month))} if reader else {}
            )
            state, check = states.get(key), checks.get(key)
            if not files and state is None and check is None:
                continue
            entry = MonthStatus(spec.name, month, "unknown", bool(files))
            if check is not None:
                entry.status, entry.reason, entry.checked_at = check[2], check[3], _iso(check[4])
            if state is not None:
                entry.synced_version, entry.synced_rows = state.delta_version, state.row_count
                entry.synced_at = _iso(state.synced_at)
                entry.consecutive_failures = state.consecutive_failures
                entry.last_failure = state.last_failure_reason
                if check is not None and state.synced_at and check[4] < state.synced_at:
                    entry.status, entry.reason = "unknown", "synced again since the last check"
            if reader is not None and state is not None and state.delta_version is not None:
                version = state.delta_version
                if version not in held_cache:
                    try:
                        held_cache[version] = reader.at_version(version)
                    except ReplicationError:
                        held_cache[version] = None
                held = held_cache[version]
                held_paths = (
                    {f.path for f in held.month_files(YearMonth.parse(month))} if held else set()
                )
                pending = [f.modification_time_ms for p, f in files.items() if p not in held_paths]
                entry.delta_changed_since_sync = held is None or set(files) != held_paths
                if pending:
                    entry.lag_seconds = max(0.0, time.time() - min(pending) / 1000.0)
            report.months.append(entry)
    return report
