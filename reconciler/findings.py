"""`ranking.month_check`: the leader's last comparison of each month, for `reconciler status`
and for the daemons that follow it.

The leader writes a finding after every comparison; followers export what it found, and
`status` (and any other reader) reads them. Losing a finding only loses a report: a failed write
is logged, never raised.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from reconciler.check import TableCheck
from reconciler.verdict import Status
from replicator.postgres import Database

logger = logging.getLogger(__name__)

MONTH_CHECK = sql.Identifier("ranking", "month_check")


@dataclass(frozen=True)
class Finding:
    table: str
    year_month: str
    status: Status
    reason: str
    checked_at: dt.datetime
    last_postgres_check_at: dt.datetime | None = None
    last_deep_check_at: dt.datetime | None = None
    delta_rows: int | None = None
    postgres_rows: int | None = None
    lag_seconds: float = 0.0
    duration_seconds: float | None = None


def record_finding(
    db: Database, conn: psycopg.Connection[Any], result: TableCheck, *, deep: bool
) -> None:
    """Upserts the month's last comparison; commits on `conn`. A completed check re-digested
    Postgres (and, if deep, Delta): their clocks move; an error moves neither."""
    completed = result.status is not Status.ERROR
    try:
        conn.rollback()
        conn.read_only = False
        conn.execute(
            sql.SQL(
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
            ).format(MONTH_CHECK),
            (
                result.table,
                result.year_month,
                str(result.status),
                result.reason[:2000],
                result.delta_version,
                result.synced_version,
                result.delta_rows,
                result.postgres_rows,
                result.lag_seconds,
                completed,
                completed and deep,
                result.duration_seconds,
            ),
        )
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        logger.warning(
            "could not record the check of %s %s: %s",
            result.table,
            result.year_month,
            db.scrub(str(exc)),
        )


def read_findings(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], Finding]:
    """Every recorded finding, by (table, month)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT table_name, year_month, status, reason, checked_at, last_postgres_check_at,"
            " last_deep_check_at, delta_rows, postgres_rows, lag_seconds, duration_seconds"
            " FROM {}"
        ).format(MONTH_CHECK),
        binary=True,
    ).fetchall()
    return {(row[0], row[1]): Finding(row[0], row[1], Status(row[2]), *row[3:]) for row in rows}


def forget_findings(
    db: Database, conn: psycopg.Connection[Any], keys: list[tuple[str, str]]
) -> None:
    """Deletes the findings of months that exist nowhere any more (followers export findings,
    so a stale one would live on); commits on `conn`. A failure is logged, never raised."""
    if not keys:
        return
    try:
        conn.rollback()
        conn.read_only = False
        conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE (table_name, year_month) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))"
            ).format(MONTH_CHECK),
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        logger.warning("could not forget findings: %s", db.scrub(str(exc)))
