"""The sides of a comparison behind one interface: each gives a month's count and its digest,
computed where its data lives.

`PostgresSide` runs one server-side query per question (no rows transferred for a digest);
`DeltaSide` streams the snapshot in bounded batches through the contract kernel, on
`digest.delta_parallelism` threads; `RecordedSide` is the digest the writer recorded at sync (no
data read at all). Finding the rows that differ is `reconciler.localize`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from psycopg import sql

from replicator.config import DigestSettings
from replicator.contract import (
    POSTGRES,
    MonthDigest,
    ParallelHasher,
    postgres_hash,
    verify_server_hash,
)
from replicator.delta import DeltaTableReader
from replicator.month import Month
from replicator.postgres import Session
from replicator.schema import TableSchema
from replicator.syncstate import SyncState

logger = logging.getLogger(__name__)


class MonthSide(ABC):
    """One side of the comparison of one month of one table: its row count and its month
    digest (the hash contract's)."""

    name: str

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def digest(self) -> MonthDigest: ...


@dataclass(frozen=True)
class QueryLimits:
    """How hard a digest query may work the serving database."""

    parallelism: int = 2  # the backend plus up to parallelism - 1 parallel workers
    statement_timeout_seconds: float = 0.0  # 0: no limit

    @classmethod
    def of(cls, digest: DigestSettings) -> QueryLimits:
        return cls(digest.postgres_parallelism, digest.statement_timeout_seconds)

    def statements(self) -> list[sql.Composed]:
        """The settings, as statements for the rest of a transaction."""
        workers = max(0, self.parallelism - 1)
        statements = [
            sql.SQL("SET LOCAL max_parallel_workers_per_gather = {}").format(sql.Literal(workers))
        ]
        if self.statement_timeout_seconds > 0:  # 0: the role's or database's own setting
            timeout = max(1, round(self.statement_timeout_seconds * 1000))
            statements.append(
                sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(timeout))
            )
        return statements

    def apply(self, conn: Session) -> None:
        """For the rest of the caller's transaction."""
        for statement in self.statements():
            conn.execute(statement)


class PostgresSide(MonthSide):
    """Postgres, inside the caller's (REPEATABLE READ) transaction on `conn`.

    The digest is one aggregate query; Postgres's parallel query splits its scan over
    `limits.parallelism` processes (partial sums combined by the leader), which measured
    faster than several bucket-range queries on connections sharing a snapshot: each of those
    would read the whole month to pick its rows (docs/operations.md, "Big months")."""

    name = "postgres"

    def __init__(
        self,
        conn: Session,
        schema: TableSchema,
        month: Month,
        limits: QueryLimits | None = None,
    ) -> None:
        self.schema, self.month = schema, month
        self.conn = conn
        self.limits = limits or QueryLimits()
        self._row = POSTGRES.row(schema.value_columns)

    def verify_hash_function(self) -> None:
        """Refuses to compare when the server's hash differs from ours (a big-endian server)."""
        verify_server_hash(self.conn)

    def count(self) -> int:
        query = sql.SQL("SELECT count(*) FROM {} WHERE year_month = %s").format(
            self.schema.qualified_table
        )
        return int(self.conn.scalar(query, (self.month.ym,)) or 0)

    def digest_query(self) -> sql.Composed:
        """The month digest as one aggregate (its plan is what parallelism acts on)."""
        return sql.SQL(
            "SELECT count(*), sum({hash}) FROM {table} WHERE year_month = {month}"
        ).format(
            hash=sql.SQL(postgres_hash(self._row)),
            table=self.schema.qualified_table,
            month=sql.Literal(self.month.ym),
        )

    def digest(self) -> MonthDigest:
        # JIT compiling this expression costs more than it saves on a month's rows.
        self.conn.execute("SET LOCAL jit = off")
        self.limits.apply(self.conn)
        row = self.conn.fetchone(self.digest_query())
        count, total = (int(row[0]), int(row[1] or 0)) if row else (0, 0)
        return MonthDigest.from_pairs(1, [(0, count, total)])


class DeltaSide(MonthSide):
    """The Delta snapshot at the reader's pinned version, hashed batch by batch on `workers`
    threads."""

    name = "delta"

    def __init__(
        self,
        reader: DeltaTableReader,
        schema: TableSchema,
        month: Month,
        batch_rows: int,
        *,
        workers: int = 1,
    ) -> None:
        self.schema, self.month = schema, month
        self.reader = reader
        self.batch_rows = batch_rows
        self.parallel = ParallelHasher(schema, workers)

    def count(self) -> int:
        counted = self.reader.month_row_count(self.month.year_month)
        if counted is not None:
            return counted
        return sum(b.num_rows for b in self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        names = [c.name for c in self.schema.value_columns]
        return self.reader.scan_month(self.month.year_month, names, self.batch_rows)

    def digest(self) -> MonthDigest:
        return self.parallel.digest(self._batches())


class RecordedSide(MonthSide):
    """What the writer recorded at sync: the digest of the rows it copied from Delta."""

    name = "recorded"

    def __init__(self, state: SyncState) -> None:
        recorded = state.recorded_digest()
        if recorded is None:
            raise ValueError(f"{state.month}: no digest recorded at sync")
        self._digest = recorded

    @classmethod
    def of(cls, state: SyncState | None) -> RecordedSide | None:
        """The recorded side of a sync, or None when the sync recorded no usable digest."""
        if state is None or state.recorded_digest() is None:
            return None
        return cls(state)

    def count(self) -> int:
        return self._digest.rows

    def digest(self) -> MonthDigest:
        return self._digest
