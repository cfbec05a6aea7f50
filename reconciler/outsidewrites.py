"""Noticing that a table's Postgres side may have changed without any metadata showing it.

The cheap signal: every write by the replicator shows in sync state (the month's old rows
deleted, its new rows inserted), so a table whose row-change counters (`pg_stat_user_tables`)
moved by more than that was written around it. The signal rests on assumptions, checked every
cycle; when one fails, the table's months are compared again instead of assumed unchanged:

* the statistics were not reset (`pg_stat_database.stats_reset`, counters never go backwards;
  crash recovery resets them too);
* the table was not rewritten (`ALTER ... TYPE`, `VACUUM FULL`, `CLUSTER`: a new relfilenode);
* `track_counts` is on;
* it is the same server (system identifier where readable, and postmaster start time: a restart
  or a failover).

A session can still silence the statistics (`SET track_counts = off` as a superuser), which no
check here can see: the planner's periodic Postgres re-digest is the bound behind this signal.

A partitioned table is watched partition by partition, so a write around the replicator marks
the one month it touched: the replicator never changes an attached partition, it swaps in a new
one (a new relation) holding exactly the rows of the sync it records. Any change to a partition
that stays, and any new partition that no sync explains, is an outside write to that month.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from replicator.config import TableSpec
from replicator.errors import PostgresError
from replicator.month import Month
from replicator.postgres import INSUFFICIENT_PRIVILEGE, Session
from replicator.syncstate import SyncState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerFacts:
    system_identifier: str | None  # None: pg_control_system() is not readable by this role
    started_at: dt.datetime
    stats_reset: dt.datetime | None
    track_counts: bool


@dataclass(frozen=True)
class TableStats:
    changes: int  # n_tup_ins + n_tup_upd + n_tup_del
    filenode: int | None
    # Partitioned tables: month -> (partition oid, its changes, its filenode).
    partitions: dict[str, tuple[int, int, int | None]] | None = None


States = Mapping[Month, SyncState]


def read_server(conn: Session) -> ServerFacts:
    row = conn.fetchone(
        "SELECT pg_catalog.pg_postmaster_start_time(),"
        " (SELECT stats_reset FROM pg_catalog.pg_stat_database"
        "  WHERE datname = pg_catalog.current_database()),"
        " pg_catalog.current_setting('track_counts')::boolean",
        binary=True,
    )
    assert row is not None
    identifier: str | None = None
    try:
        with conn.transaction():
            identity = conn.scalar("SELECT system_identifier FROM pg_catalog.pg_control_system()")
            identifier = None if identity is None else str(identity)
    except PostgresError as exc:
        if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
            raise
        identifier = None
    return ServerFacts(identifier, row[0], row[1], bool(row[2]))


def read_table(conn: Session, spec: TableSpec) -> TableStats:
    row = conn.fetchone(
        "SELECT c.oid, c.relkind, coalesce((SELECT n_tup_ins + n_tup_upd + n_tup_del"
        "  FROM pg_catalog.pg_stat_user_tables WHERE relid = c.oid), 0),"
        " pg_catalog.pg_relation_filenode(c.oid)"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (spec.postgres_schema, spec.postgres_table),
    )
    if row is None:
        return TableStats(0, None)
    filenode = None if row[3] is None else int(row[3])
    if row[1] != "p":
        return TableStats(int(row[2]), filenode)
    parts = conn.fetchall(
        "SELECT substring(pg_catalog.pg_get_expr(p.relpartbound, p.oid)"
        " FROM 'IN \\(''([0-9-]+)''\\)'), p.oid,"
        " coalesce((SELECT n_tup_ins + n_tup_upd + n_tup_del"
        "  FROM pg_catalog.pg_stat_user_tables WHERE relid = p.oid), 0),"
        " pg_catalog.pg_relation_filenode(p.oid)"
        " FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhrelid"
        " WHERE i.inhparent = %s",
        (row[0],),
    )
    partitions = {  # a DEFAULT partition (no month) is not a month's: left to the checks
        str(month): (int(oid), int(changes), None if node is None else int(node))
        for month, oid, changes, node in parts
        if month is not None
    }
    return TableStats(0, filenode, partitions)


class OutsideWriteDetector:
    """Remembers the server, each table's counters and filenode, and the sync states seen at
    the previous cycle."""

    def __init__(self) -> None:
        self._server: ServerFacts | None = None
        self._tables: dict[str, TableStats] = {}
        self._sync_seen: dict[Month, SyncState] = {}
        # Partitioned tables: per month, (partition oid, changes it may show, filenode).
        self._allowance: dict[Month, tuple[int, int, int | None]] = {}

    def suspicious(
        self, conn: Session, tables: Iterable[TableSpec], states: States
    ) -> tuple[dict[str, str], dict[Month, str]]:
        """The tables whose every month must be compared again, and the single months (of
        partitioned tables), each with the reason."""
        specs = list(tables)
        server = read_server(conn)
        everything = self._server_reason(server)
        suspicious: dict[str, str] = {}
        months: dict[Month, str] = {}
        for spec in specs:
            stats = read_table(conn, spec)
            reason = everything or self._table_reason(spec, stats, states)
            if reason is not None:
                suspicious[spec.name] = reason
            elif stats.partitions is not None:
                months.update(self._partition_reasons(spec, stats, states))
            self._tables[spec.name] = stats
        for name, reason in sorted(suspicious.items()):
            logger.warning("re-checking every month of %s: %s", name, reason, extra={"table": name})
        for month, reason in sorted(months.items()):
            logger.warning("re-checking %s: %s", month, reason, extra=month.log)
        self._server = server
        self._sync_seen = dict(states)
        return suspicious, months

    def _synced_since(self, key: Month, state: SyncState | None) -> bool:
        seen = self._sync_seen.get(key)
        if state is None:
            return False
        return seen is None or (seen.run_id, seen.synced_at) != (state.run_id, state.synced_at)

    def _partition_reasons(
        self, spec: TableSpec, stats: TableStats, states: States
    ) -> dict[Month, str]:
        """A partition may change only by being swapped in by a sync holding exactly that
        sync's rows (its statistics may reach us a cycle late): anything more, a partition
        replaced or gone without a sync, or one rewritten, is a write around the replicator."""
        previous = self._tables.get(spec.name)
        assert stats.partitions is not None
        reasons: dict[Month, str] = {}
        for month, (oid, changes, filenode) in stats.partitions.items():
            key = Month.of(spec, month)
            state = states.get(key)
            synced_rows = (state.row_count or 0) if state is not None else 0
            known = self._allowance.get(key)
            if known is not None and known[0] == oid:
                allowance = known[1]
                if filenode != known[2]:
                    reasons[key] = "the month's partition was rewritten"
            elif previous is None or previous.partitions is None or self._synced_since(key, state):
                # First seen, or swapped in by a sync: its own inserts are expected.
                allowance = max(changes, synced_rows)
            else:
                reasons[key] = "the month's partition was replaced outside the replicator"
                allowance = changes
            if changes > allowance:
                reasons[key] = "the month's partition was written outside the replicator"
            self._allowance[key] = (oid, max(allowance, changes), filenode)
        if previous is not None and previous.partitions is not None:
            for month in set(previous.partitions) - set(stats.partitions):
                gone = Month.of(spec, month)
                if not self._synced_since(gone, states.get(gone)):
                    reasons[gone] = "the month's partition was detached or dropped"
        for key in [k for k in self._allowance if k.table == spec.name]:
            if key.ym not in stats.partitions:
                del self._allowance[key]
        return reasons

    def _server_reason(self, server: ServerFacts) -> str | None:
        if not server.track_counts:
            return "track_counts is off, so writes around the replicator cannot be seen"
        previous = self._server
        if previous is None:
            return None
        if (previous.system_identifier, previous.started_at) != (
            server.system_identifier,
            server.started_at,
        ):
            return "Postgres restarted or failed over (its statistics may have been lost)"
        if previous.stats_reset != server.stats_reset:
            return "the database's statistics were reset"
        return None

    def _table_reason(self, spec: TableSpec, stats: TableStats, states: States) -> str | None:
        previous = self._tables.get(spec.name)
        if previous is None:
            return None
        if (stats.partitions is None) != (previous.partitions is None):
            return "the table's layout changed (reconciler migrate --layout)"
        if stats.partitions is not None:
            return None  # watched partition by partition
        if stats.filenode != previous.filenode:
            return "the table was rewritten (ALTER TABLE, VACUUM FULL, CLUSTER or TRUNCATE)"
        if stats.changes < previous.changes:
            return "the table's statistics counters went backwards (a reset)"
        explained = 0
        for key, state in states.items():
            if key.table != spec.name:
                continue
            seen = self._sync_seen.get(key)
            if seen is None or (seen.run_id, seen.synced_at) != (state.run_id, state.synced_at):
                explained += (seen.row_count or 0 if seen else 0) + (state.row_count or 0)
        if stats.changes - previous.changes > explained:
            return "the table was written outside the replicator"
        return None
