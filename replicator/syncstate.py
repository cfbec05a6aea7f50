"""`ranking.signal_sync_state` and the month lock: what Postgres holds of each (table, month).

The writer records a sync in the same transaction as the rows (so sync state always describes
what is there) and a failure in a transaction of its own; everyone else reads. The month lock is
a transaction-scoped advisory lock that serializes writers of one (table, month); a reader of
`pg_locks` can tell a replication in flight.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.config import TableSpec
from replicator.contract import MonthDigest
from replicator.yearmonth import YearMonth

SYNC_STATE = sql.Identifier("ranking", "signal_sync_state")


@dataclass(frozen=True)
class SyncState:
    table: str
    year_month: str
    delta_version: int | None
    row_count: int | None
    synced_at: dt.datetime | None
    run_id: str | None
    last_failure_at: dt.datetime | None
    last_failure_reason: str | None
    consecutive_failures: int
    content_digest: str | None

    def recorded_digest(self) -> MonthDigest | None:
        """The writer's digest of what it copied, if it recorded one of this contract."""
        if not self.content_digest:
            return None
        try:
            return MonthDigest.parse(self.content_digest)
        except ValueError:
            return None


_COLUMNS = sql.SQL(
    "table_name, year_month, delta_version, row_count, synced_at, run_id, last_failure_at,"
    " last_failure_reason, consecutive_failures, content_digest"
)


def read_sync_state(conn: psycopg.Connection[Any], table: str, year_month: str) -> SyncState | None:
    row = conn.execute(
        sql.SQL("SELECT {} FROM {} WHERE table_name = %s AND year_month = %s").format(
            _COLUMNS, SYNC_STATE
        ),
        (table, year_month),
        binary=True,  # timestamps parse the same under any DateStyle
    ).fetchone()
    return SyncState(*row) if row else None


def read_all_sync_states(conn: psycopg.Connection[Any]) -> list[SyncState]:
    rows = conn.execute(
        sql.SQL("SELECT {} FROM {} ORDER BY 1, 2").format(_COLUMNS, SYNC_STATE), binary=True
    ).fetchall()
    return [SyncState(*row) for row in rows]


def synced_run_id(conn: psycopg.Connection[Any], table: str, year_month: str) -> str | None:
    """The run id of the month's last successful sync (to resolve a lost COMMIT answer)."""
    row = conn.execute(
        sql.SQL("SELECT run_id FROM {} WHERE table_name = %s AND year_month = %s").format(
            SYNC_STATE
        ),
        (table, year_month),
    ).fetchone()
    return None if row is None else row[0]


# -- the writer's statements (ADBC: $n placeholders) ------------------------------------------
def month_lock_sql(table_param: str, month_param: str) -> sql.Composed:
    """The transaction-scoped advisory lock that serializes writers of one (table, month).

    The key is (hashtext(qualified table), YYYYMM); `replication_in_flight` looks for it.
    """
    return sql.SQL("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext({}), {})").format(
        sql.SQL(table_param), sql.SQL(month_param)
    )


HELD_VERSION = sql.SQL(
    "SELECT delta_version FROM {} WHERE table_name = $1 AND year_month = $2 FOR UPDATE"
).format(SYNC_STATE)

RECORD_SYNC = sql.SQL(
    "INSERT INTO {} AS s (table_name, year_month, delta_version, row_count,"
    " synced_at, run_id, consecutive_failures, content_digest)"
    " VALUES ($1, $2, $3, $4, now(), $5, 0, $6)"
    " ON CONFLICT (table_name, year_month) DO UPDATE SET"
    " delta_version = EXCLUDED.delta_version, row_count = EXCLUDED.row_count,"
    " synced_at = EXCLUDED.synced_at, run_id = EXCLUDED.run_id,"
    " consecutive_failures = 0, content_digest = EXCLUDED.content_digest"
).format(SYNC_STATE)


def record_failure(
    conn: psycopg.Connection[Any], table: str, year_month: str, reason: str, run_id: str
) -> None:
    """Counts one more consecutive failure of the month, with its (sanitized) reason."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} AS s (table_name, year_month, last_failure_at,"
            " last_failure_reason, last_failure_run_id, consecutive_failures)"
            " VALUES (%s, %s, now(), %s, %s, 1)"
            " ON CONFLICT (table_name, year_month) DO UPDATE SET"
            " last_failure_at = now(),"
            " last_failure_reason = EXCLUDED.last_failure_reason,"
            " last_failure_run_id = EXCLUDED.last_failure_run_id,"
            " consecutive_failures = s.consecutive_failures + 1"
        ).format(SYNC_STATE),
        (table, year_month, reason[:2000], run_id),
    )


def replication_in_flight(
    conn: psycopg.Connection[Any], spec: TableSpec, year_month: YearMonth
) -> bool:
    """Whether a writer holds the month's lock (see `month_lock_sql`)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
        " AND granted AND objsubid = 2 AND database = (SELECT oid FROM pg_catalog.pg_database"
        " WHERE datname = pg_catalog.current_database())"
        " AND classid = pg_catalog.hashtext(%s)::oid AND objid = %s::integer::oid)",
        (spec.qualified_name, year_month.lock_key),
    ).fetchone()
    return bool(row and row[0])
