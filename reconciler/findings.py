"""`ranking.month_check`: the leader's last `MonthRecord` of each month, for `reconciler status`
and for the daemons that follow it.

The leader writes a finding after every comparison; followers export what it found, and
`status` (and any other reader) reads them. Losing a finding only loses a report: a failed write
is logged, never raised.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from reconciler.record import MonthRecord
from reconciler.verdict import Status
from replicator.config import TableSpec
from replicator.errors import PostgresError
from replicator.month import Month
from replicator.postgres import Session
from replicator.syncstate import SyncState

logger = logging.getLogger(__name__)

MONTH_CHECK = sql.Identifier("ranking", "month_check")

_UPSERT = sql.SQL(
    "INSERT INTO {} AS m (table_name, year_month, status, reason, checked_at,"
    " delta_version, synced_version, delta_rows, postgres_rows, lag_seconds,"
    " last_postgres_check_at, last_deep_check_at, duration_seconds, anchor_key, found_deep)"
    " VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s, %s,"
    " CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END, %s, %s, %s)"
    " ON CONFLICT (table_name, year_month) DO UPDATE SET status = EXCLUDED.status,"
    " anchor_key = EXCLUDED.anchor_key,"
    # A drift a deep check found keeps its origin while it stands (same anchor, still drift),
    # so that a plain check that kept it cannot make the next one forget it.
    " found_deep = EXCLUDED.found_deep OR (m.found_deep AND m.status = 'drift'"
    " AND EXCLUDED.status = 'drift' AND m.anchor_key IS NOT DISTINCT FROM EXCLUDED.anchor_key),"
    " reason = EXCLUDED.reason, checked_at = EXCLUDED.checked_at,"
    " delta_version = EXCLUDED.delta_version,"
    " synced_version = EXCLUDED.synced_version, delta_rows = EXCLUDED.delta_rows,"
    " postgres_rows = EXCLUDED.postgres_rows, lag_seconds = EXCLUDED.lag_seconds,"
    " duration_seconds = EXCLUDED.duration_seconds,"
    " last_postgres_check_at ="
    " coalesce(EXCLUDED.last_postgres_check_at, m.last_postgres_check_at),"
    " last_deep_check_at = coalesce(EXCLUDED.last_deep_check_at, m.last_deep_check_at)"
).format(MONTH_CHECK)


def anchor_key(state: SyncState | None) -> str | None:
    """What identifies the anchor a finding judged: another sync or re-anchoring, another key."""
    if state is None:
        return None
    moments = (state.synced_at, state.verified_at)
    return "|".join([state.run_id or "", *(m.isoformat() if m else "" for m in moments)])


@dataclass(frozen=True)
class Standing:
    """A drift a deep check found, which stands until a repair, a new sync or a new deep check
    of the month says otherwise (`verdict.classify` keeps it over a plain check's in_sync)."""

    reason: str
    found_at: dt.datetime


def read_standing(conn: Session, month: Month, state: SyncState | None) -> Standing | None:
    """The month's standing drift for the anchor it still has, if any."""
    row = conn.fetchone(
        sql.SQL(
            "SELECT reason, checked_at FROM {} WHERE table_name = %s AND year_month = %s"
            " AND status = 'drift' AND found_deep AND anchor_key IS NOT DISTINCT FROM %s"
        ).format(MONTH_CHECK),
        (month.table, month.ym, anchor_key(state)),
        binary=True,
    )
    return None if row is None else Standing(str(row[0]), row[1])


def record_finding(conn: Session, record: MonthRecord, *, deep: bool, anchor: str | None) -> None:
    """Upserts the month's last comparison; commits on `conn`. A completed check re-digested
    Postgres (and, if deep, Delta): their clocks move; an error moves neither."""
    completed = record.status is not Status.ERROR
    try:
        conn.begin_default()
        conn.execute(
            _UPSERT,
            (
                record.table,
                record.year_month,
                str(record.status),
                record.reason[:2000],
                record.delta_version,
                record.synced_version,
                record.delta_rows,
                record.postgres_rows,
                record.lag_seconds,
                completed,
                completed and deep,
                record.duration_seconds,
                anchor,
                deep,
            ),
        )
        conn.commit()
    except PostgresError as exc:
        conn.rollback()
        logger.warning("could not record the check of %s: %s", record.month, exc)


def read_findings(conn: Session, specs: Iterable[TableSpec]) -> dict[Month, MonthRecord]:
    """Every recorded finding of the configured tables, by month."""
    by_name = {spec.name: spec for spec in specs}
    rows = conn.fetchall(
        sql.SQL(
            "SELECT table_name, year_month, status, reason, checked_at, last_postgres_check_at,"
            " last_deep_check_at, delta_rows, postgres_rows, lag_seconds, duration_seconds,"
            " delta_version, synced_version FROM {} WHERE table_name = ANY(%s)"
        ).format(MONTH_CHECK),
        (list(by_name),),
        binary=True,
    )
    found = {}
    for row in rows:
        month = Month.of(by_name[row[0]], row[1])
        found[month] = MonthRecord(
            month,
            Status(row[2]),
            row[3],
            checked_at=row[4],
            postgres_checked_at=row[5],
            proven_at=row[6],
            delta_rows=row[7],
            postgres_rows=row[8],
            lag_seconds=float(row[9]),
            duration_seconds=row[10],
            delta_version=row[11],
            synced_version=row[12],
        )
    return found


def forget_findings(conn: Session, months: list[Month]) -> None:
    """Deletes the findings of months that exist nowhere any more (followers export findings,
    so a stale one would live on); commits on `conn`. A failure is logged, never raised."""
    if not months:
        return
    try:
        conn.begin_default()
        conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE (table_name, year_month) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))"
            ).format(MONTH_CHECK),
            ([m.table for m in months], [m.ym for m in months]),
        )
        conn.commit()
    except PostgresError as exc:
        conn.rollback()
        logger.warning("could not forget findings: %s", exc)
