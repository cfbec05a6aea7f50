"""`ranking.month_check`: the leader's last `MonthRecord` of each month, for `reconciler status`
and for the daemons that follow it.

The leader writes a finding after every comparison; followers export what it found, and
`status` (and any other reader) reads them. Losing a finding only loses a report: a failed write
is logged, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from psycopg import sql

from reconciler.check import CheckResult
from reconciler.record import MonthRecord
from reconciler.verdict import Status
from replicator.config import TableSpec
from replicator.errors import PostgresError
from replicator.month import Month
from replicator.postgres import Session

logger = logging.getLogger(__name__)

MONTH_CHECK = sql.Identifier("ranking", "month_check")

_UPSERT = sql.SQL(
    "INSERT INTO {} AS m (table_name, year_month, status, reason, checked_at,"
    " delta_version, synced_version, delta_rows, postgres_rows, lag_seconds,"
    " last_postgres_check_at, last_deep_check_at, duration_seconds)"
    " VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s, %s,"
    " CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END, %s)"
    " ON CONFLICT (table_name, year_month) DO UPDATE SET status = EXCLUDED.status,"
    " reason = EXCLUDED.reason, checked_at = EXCLUDED.checked_at,"
    " delta_version = EXCLUDED.delta_version,"
    " synced_version = EXCLUDED.synced_version, delta_rows = EXCLUDED.delta_rows,"
    " postgres_rows = EXCLUDED.postgres_rows, lag_seconds = EXCLUDED.lag_seconds,"
    " duration_seconds = EXCLUDED.duration_seconds,"
    " last_postgres_check_at ="
    " coalesce(EXCLUDED.last_postgres_check_at, m.last_postgres_check_at),"
    " last_deep_check_at = coalesce(EXCLUDED.last_deep_check_at, m.last_deep_check_at)"
).format(MONTH_CHECK)


def record_finding(conn: Session, result: CheckResult) -> None:
    """Upserts the month's last comparison; commits on `conn`. A completed check re-digested
    Postgres (and, if deep, Delta): their clocks move; an error moves neither."""
    record = result.record
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
                completed and result.deep,
                record.duration_seconds,
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
