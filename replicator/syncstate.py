"""`ranking.signal_sync_state` and the month lock: what Postgres holds of each (table, month).

Each row is an *anchor*: Postgres holds the month as the Delta table `delta_table_id` had it at
`delta_version` (its logical files `delta_files`), whose rows digest to `content_digest` under the
columns `content_schema`. The writer records a sync in the same transaction as the rows (so sync
state always describes what is there) and a failure in a transaction of its own; the reconciler
re-anchors a month it proved equal to a newer Delta version (`anchor = 'verified'`). The month
lock is a transaction-scoped advisory lock that serializes writers of one (table, month); a
reader of `pg_locks` can tell a replication in flight.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from replicator.config import TableSpec
from replicator.contract import MonthDigest
from replicator.deltalog import Since
from replicator.month import Month
from replicator.postgres import Session

SYNC_STATE = sql.Identifier("ranking", "signal_sync_state")


@dataclass(frozen=True)
class SyncState:
    month: Month
    delta_version: int | None
    row_count: int | None
    synced_at: dt.datetime | None
    run_id: str | None
    last_failure_at: dt.datetime | None
    last_failure_reason: str | None
    consecutive_failures: int
    content_digest: str | None
    delta_table_id: str | None = None
    delta_files: str | None = None
    content_schema: str | None = None
    anchor: str = "written"
    verified_at: dt.datetime | None = None
    delta_schema: str | None = None
    delta_commit_ms: int | None = None

    def since(self) -> Since:
        """What the sync recorded of the Delta table, for `DeltaTableReader.month_change`."""
        return Since(
            self.delta_version,
            self.delta_table_id,
            self.delta_files,
            self.delta_schema,
            self.delta_commit_ms,
        )

    def recorded_digest(self) -> MonthDigest | None:
        """The writer's digest of what it copied, if it recorded one of this contract."""
        if not self.content_digest:
            return None
        try:
            return MonthDigest.parse(self.content_digest)
        except ValueError:
            return None


_COLUMNS = sql.SQL(
    "delta_version, row_count, synced_at, run_id, last_failure_at,"
    " last_failure_reason, consecutive_failures, content_digest, delta_table_id, delta_files,"
    " content_schema, anchor, verified_at, delta_schema, delta_commit_ms"
)


@dataclass(frozen=True)
class Anchor:
    """What a sync vouches for (see the module docstring)."""

    delta_version: int
    delta_table_id: str
    delta_files: str
    content_schema: str
    content_digest: str
    row_count: int
    delta_schema: str | None = None  # `read_identity` of the table's metadata
    delta_commit_ms: int | None = None  # the version's commitInfo timestamp


def read_sync_state(conn: Session, month: Month) -> SyncState | None:
    row = conn.fetchone(
        sql.SQL("SELECT {} FROM {} WHERE table_name = %s AND year_month = %s").format(
            _COLUMNS, SYNC_STATE
        ),
        (month.table, month.ym),
        binary=True,  # timestamps parse the same under any DateStyle
    )
    return SyncState(month, *row) if row else None


def read_all_sync_states(conn: Session, specs: Iterable[TableSpec]) -> dict[Month, SyncState]:
    """The sync state of every month of the configured tables (others are not ours to read)."""
    by_name = {spec.name: spec for spec in specs}
    rows = conn.fetchall(
        sql.SQL("SELECT table_name, year_month, {} FROM {} WHERE table_name = ANY(%s)").format(
            _COLUMNS, SYNC_STATE
        ),
        (list(by_name),),
        binary=True,
    )
    states = (SyncState(Month.of(by_name[row[0]], row[1]), *row[2:]) for row in rows)
    return {state.month: state for state in states}


def recorded_schema(conn: Session, table: str) -> str | None:
    """The content schema of the table's most recent sync (names a renamed column's old name)."""
    found = conn.scalar(
        sql.SQL(
            "SELECT content_schema FROM {} WHERE table_name = %s AND content_schema IS NOT NULL"
            " ORDER BY coalesce(verified_at, synced_at) DESC NULLS LAST LIMIT 1"
        ).format(SYNC_STATE),
        (table,),
    )
    return None if found is None else str(found)


def synced_run_id(conn: Session, month: Month) -> str | None:
    """The run id of the month's last successful sync (to resolve a lost COMMIT answer)."""
    found = conn.scalar(
        sql.SQL("SELECT run_id FROM {} WHERE table_name = %s AND year_month = %s").format(
            SYNC_STATE
        ),
        (month.table, month.ym),
    )
    return None if found is None else str(found)


# -- the writer's statements (ADBC: $n placeholders) ------------------------------------------
def month_lock_sql(table_param: str, month_param: str) -> sql.Composed:
    """The transaction-scoped advisory lock that serializes writers of one (table, month).

    The key is (hashtext(qualified table), YYYYMM); `replication_in_flight` looks for it.
    """
    return sql.SQL("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext({}), {})").format(
        sql.SQL(table_param), sql.SQL(month_param)
    )


HELD_VERSION = sql.SQL(
    "SELECT delta_version, delta_table_id FROM {}"
    " WHERE table_name = $1 AND year_month = $2 FOR UPDATE"
).format(SYNC_STATE)

# $1 table, $2 month, $3 run id, then the anchor's fields in `Anchor` order ($4 to $11).
RECORD_SYNC = sql.SQL(
    "INSERT INTO {} AS s (table_name, year_month, run_id, delta_version, delta_table_id,"
    " delta_files, content_schema, content_digest, row_count, delta_schema, delta_commit_ms,"
    " synced_at, consecutive_failures, anchor, verified_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now(), 0, 'written', NULL)"
    " ON CONFLICT (table_name, year_month) DO UPDATE SET"
    " run_id = EXCLUDED.run_id, delta_version = EXCLUDED.delta_version,"
    " delta_table_id = EXCLUDED.delta_table_id, delta_files = EXCLUDED.delta_files,"
    " content_schema = EXCLUDED.content_schema, content_digest = EXCLUDED.content_digest,"
    " row_count = EXCLUDED.row_count, delta_schema = EXCLUDED.delta_schema,"
    " delta_commit_ms = EXCLUDED.delta_commit_ms, synced_at = EXCLUDED.synced_at,"
    " consecutive_failures = 0, anchor = 'written', verified_at = NULL"
).format(SYNC_STATE)


def record_sync_params(month: Month, run_id: str, anchor: Anchor) -> tuple[Any, ...]:
    return (
        month.table,
        month.ym,
        run_id,
        anchor.delta_version,
        anchor.delta_table_id,
        anchor.delta_files,
        anchor.content_schema,
        anchor.content_digest,
        anchor.row_count,
        anchor.delta_schema,
        anchor.delta_commit_ms,
    )


def reanchor(conn: Session, state: SyncState, anchor: Anchor) -> dt.datetime | None:
    """Moves a month's anchor to a newer Delta identity that the caller proved Postgres holds;
    commits on `conn` and returns the new `verified_at`. None (and nothing written) when a
    writer holds the month or synced it since `state` was read: its own record then stands."""
    with conn.transaction():
        locked = conn.scalar(
            "SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext(%s), %s)",
            state.month.lock_key,
        )
        if not locked:
            return None
        row = conn.fetchone(
            sql.SQL(
                "UPDATE {} SET delta_version = %s, delta_table_id = %s, delta_files = %s,"
                " content_schema = %s, content_digest = %s, row_count = %s,"
                " delta_schema = %s, delta_commit_ms = %s,"
                " anchor = 'verified', verified_at = now()"
                " WHERE table_name = %s AND year_month = %s"
                " AND run_id IS NOT DISTINCT FROM %s AND synced_at IS NOT DISTINCT FROM %s"
                " AND delta_version IS NOT DISTINCT FROM %s"
                " AND content_digest IS NOT DISTINCT FROM %s"
                " RETURNING verified_at"
            ).format(SYNC_STATE),
            (
                anchor.delta_version,
                anchor.delta_table_id,
                anchor.delta_files,
                anchor.content_schema,
                anchor.content_digest,
                anchor.row_count,
                anchor.delta_schema,
                anchor.delta_commit_ms,
                state.month.table,
                state.month.ym,
                state.run_id,
                state.synced_at,
                state.delta_version,
                state.content_digest,
            ),
        )
        return None if row is None else row[0]


def record_failure(conn: Session, month: Month, reason: str, run_id: str) -> None:
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
        (month.table, month.ym, reason[:2000], run_id),
    )


def replication_in_flight(conn: Session, month: Month) -> bool:
    """Whether a writer holds the month's lock (see `month_lock_sql`)."""
    return bool(
        conn.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
            " AND granted AND objsubid = 2 AND database = (SELECT oid FROM pg_catalog.pg_database"
            " WHERE datname = pg_catalog.current_database())"
            " AND classid = pg_catalog.hashtext(%s)::oid AND objid = %s::integer::oid)",
            month.lock_key,
        )
    )
