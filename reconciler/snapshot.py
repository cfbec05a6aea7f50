"""The metadata one leader cycle plans from (`planner.CycleSnapshot`), read without table data:
what the Delta log says of each month since its anchor, sync state, which months Postgres holds,
and which tables or months may have been written around the replicator.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from psycopg import sql

from reconciler.monthstate import DeltaInputs, MonthInputs, SyncAnchor
from reconciler.outsidewrites import OutsideWriteDetector
from reconciler.planner import CycleSnapshot, MonthMetadata
from replicator.config import TableSpec
from replicator.delta import DeltaTableReader
from replicator.errors import DeltaError
from replicator.month import Month
from replicator.postgres import Session
from replicator.schema import postgres_columns
from replicator.syncstate import SyncState, read_all_sync_states
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


@dataclass
class SnapshotRead:
    """A cycle's snapshot, which Delta tables failed while it was read, and the Delta
    partition values that are not months."""

    snapshot: CycleSnapshot
    unreadable: dict[str, str] = field(default_factory=dict)  # table -> why
    invalid_partitions: dict[str, list[str]] = field(default_factory=dict)  # table -> values


class SnapshotReader:
    """Reads the metadata of every month in the window; remembers (through its outside-write
    detector) what the previous cycle saw."""

    def __init__(self, tables: tuple[TableSpec, ...]) -> None:
        self.tables = tables
        self._outside = OutsideWriteDetector()

    def read(
        self,
        conn: Session,
        readers: Mapping[str, DeltaTableReader],
        window: list[YearMonth],
        now: dt.datetime,
    ) -> SnapshotRead:
        """Delta's failures mark only their table unreadable."""
        states = read_all_sync_states(conn, self.tables)
        suspicious, suspicious_months = self._outside.suspicious(conn, self.tables, states)
        readable = set(readers)
        unreadable: dict[str, str] = {}
        invalid: dict[str, list[str]] = {}
        months: list[MonthMetadata] = []
        for spec in self.tables:
            present, unbound = months_in_postgres(conn, spec, window)
            for year_month in unbound:
                suspicious_months[Month.of(spec, year_month)] = (
                    "rows of the month in a partition not bound to it alone (a DEFAULT partition)"
                )
            reader = readers.get(spec.name)
            deltas: dict[YearMonth, DeltaInputs] | None = None
            schema = ""
            if reader is not None:
                try:
                    deltas = {
                        m: delta_inputs(reader, m, states.get(Month.of(spec, m))) for m in window
                    }
                    schema = schema_inputs(conn, spec, reader)
                    if bad := reader.invalid_partitions():
                        invalid[spec.name] = bad
                except DeltaError as exc:
                    readable.discard(spec.name)
                    unreadable[spec.name] = str(exc)
                    deltas = None
            for year_month in window:
                month = Month.of(spec, year_month)
                state = states.get(month)
                delta = deltas.get(year_month) if deltas is not None else None
                in_delta = delta is not None and delta.in_delta
                if not in_delta and year_month not in present and state is None:
                    continue
                inputs = MonthInputs(delta, SyncAnchor.of(state), year_month in present, schema)
                months.append(MonthMetadata(month, inputs, state))
        conn.rollback()
        snapshot = CycleSnapshot(
            now, tuple(months), frozenset(readable), suspicious, suspicious_months
        )
        return SnapshotRead(snapshot, unreadable, invalid)


def delta_inputs(
    reader: DeltaTableReader, month: YearMonth, state: SyncState | None
) -> DeltaInputs:
    """What Delta says of a month relative to its anchor (commits are read only when the
    month's file set differs from the anchor's, and each commit once per process)."""
    if state is None or state.delta_version is None:
        return DeltaInputs(
            reader.table_id, reader.has_month(month), None, None, reader.month_fingerprint(month)
        )
    change = reader.month_change(month, state.since())
    return DeltaInputs(
        reader.table_id, reader.has_month(month), change.kind, change.since_version, None
    )


def schema_inputs(conn: Session, spec: TableSpec, reader: DeltaTableReader) -> str:
    """The table's columns on both sides: a schema change on either side is a change."""
    delta = ",".join(f"{c.name}:{c.type}" for c in reader.columns())
    postgres = ",".join(f"{name}:{kind}" for name, kind, _ in postgres_columns(conn, spec))
    return f"{delta}|{postgres}"


_PARTITIONS = (
    "SELECT substring(pg_catalog.pg_get_expr(p.relpartbound, p.oid)"
    " FROM '^FOR VALUES IN \\(''([0-9]{4}-[0-9]{2})''\\)$'), n.nspname, p.relname"
    " FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace"
    " WHERE i.inhparent = %s::regclass"
)


def months_in_postgres(
    conn: Session, spec: TableSpec, window: list[YearMonth]
) -> tuple[set[YearMonth], set[YearMonth]]:
    """The months of the window holding rows, and those of them with rows in a partition not
    bound to that month alone (a DEFAULT partition, or one bound to several values): one index
    probe per month on a plain table or such a partition; on a partition of one month, its
    first row (a probe through the parent would read every partition: the month is a value the
    planner cannot prune by in advance)."""
    wanted = {str(m): m for m in window}
    partitions = conn.fetchall(_PARTITIONS, (spec.qualified_name,))
    if not partitions:  # a plain table (or a partitioned one with no partition yet)
        table = sql.Identifier(spec.postgres_schema, spec.postgres_table)
        return _probed(conn, table, wanted), set()
    probes = [
        sql.SQL("SELECT {} WHERE EXISTS (SELECT 1 FROM {} LIMIT 1)").format(
            sql.Literal(month), sql.Identifier(schema, name)
        )
        for month, schema, name in partitions
        if month in wanted
    ]
    present: set[YearMonth] = set()
    if probes:
        present = {wanted[r[0]] for r in conn.fetchall(sql.SQL(" UNION ALL ").join(probes))}
    unbound: set[YearMonth] = set()
    for month, schema, name in partitions:
        if month is None:
            unbound |= _probed(conn, sql.Identifier(schema, name), wanted)
    return present | unbound, unbound


def _probed(conn: Session, table: sql.Identifier, wanted: dict[str, YearMonth]) -> set[YearMonth]:
    """The months of `wanted` holding a row of `table` (an index probe each)."""
    query = sql.SQL(
        "SELECT m FROM unnest(%s::text[]) AS m WHERE EXISTS (SELECT 1 FROM {} WHERE year_month = m)"
    ).format(table)
    return {wanted[row[0]] for row in conn.fetchall(query, (list(wanted),))}
