"""Reading `ranking.signal_sync_state` and the writers' advisory locks (the writer writes both)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from reconciler.digest import MonthDigest
from replicator.config import TableSpec


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


_COLUMNS = (
    "table_name, year_month, delta_version, row_count, synced_at, run_id, last_failure_at,"
    " last_failure_reason, consecutive_failures, content_digest"
)


def read_sync_state(conn: psycopg.Connection[Any], table: str, year_month: str) -> SyncState | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM ranking.signal_sync_state"  # noqa: S608 (constant columns)
        " WHERE table_name = %s AND year_month = %s",
        (table, year_month),
        binary=True,  # timestamps parse the same under any DateStyle
    ).fetchone()
    return SyncState(*row) if row else None


def read_all_sync_states(conn: psycopg.Connection[Any]) -> list[SyncState]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM ranking.signal_sync_state ORDER BY 1, 2",  # noqa: S608
        binary=True,
    ).fetchall()
    return [SyncState(*row) for row in rows]


def replication_in_flight(conn: psycopg.Connection[Any], spec: TableSpec, lock_key: int) -> bool:
    """Whether a writer holds the month's advisory lock (see `replicator.writer.month_lock_sql`)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
        " AND granted AND objsubid = 2 AND database = (SELECT oid FROM pg_catalog.pg_database"
        " WHERE datname = pg_catalog.current_database())"
        " AND classid = pg_catalog.hashtext(%s)::oid AND objid = %s::integer::oid)",
        (f"{spec.postgres_schema}.{spec.postgres_table}", lock_key),
    ).fetchone()
    return bool(row and row[0])
