"""The sides of a comparison behind one interface: each gives a month's count, its digest, and the
rows of chosen buckets (typed values and contract encodings), computed where its data lives.

`PostgresSide` runs one server-side query per question (no rows transferred for a digest);
`DeltaSide` streams the snapshot through DataFusion in bounded batches, and can keep what it
hashed on disk so that a second pass (the diff's) reads rows back instead of hashing the month
again; `RecordedSide` is the digest the writer recorded at sync (no data read at all).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from psycopg import sql
from pyarrow import ipc

from replicator.config import DigestSettings
from replicator.contract import (
    POSTGRES,
    DeltaHasher,
    DigestAccumulator,
    MonthDigest,
    ParallelHasher,
    as_signed,
    bucket_of,
    postgres_hash,
    verify_server_hash,
)
from replicator.delta import DeltaTableReader
from replicator.month import Month
from replicator.postgres import Database, Session
from replicator.schema import TableSchema
from replicator.syncstate import SyncState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SideRow:
    """One row of one side, as the diff sees it."""

    row_hash: int
    values: tuple[Any, ...]  # typed values of the schema's value columns, in digest order
    fields: tuple[str, ...]  # their contract encodings: equal encodings, equal values


class MonthSide(ABC):
    """One side of the comparison of one month of one table: its row count and its month
    digest (the hash contract's)."""

    name: str

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def digest(self) -> MonthDigest: ...


class RowSide(MonthSide):
    """A side that holds the rows themselves (Delta, Postgres), so `reconciler diff` can find
    them: `bucketed` splits the digest by row-hash bucket (see `bucket_of`) and keeps on disk,
    under `spill`, what a second pass needs to find each row again; `rows_in_buckets` then
    returns the rows of chosen buckets."""

    @abstractmethod
    def bucketed(self, buckets: int, spill: Path) -> MonthDigest: ...

    @abstractmethod
    def rows_in_buckets(self, buckets: int, selected: Sequence[int]) -> Iterator[SideRow]: ...


_TID = np.dtype([("block", ">u4"), ("offset", ">u2")])
# What the Postgres side keeps of each row: its hash and where it lies (its ctid).
_POSITION = np.dtype([("hash", "<u8"), ("block", "<u4"), ("offset", "<u2")])
_POSITIONS_PER_READ = 1 << 20


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


class PostgresSide(RowSide):
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
        db: Database | None = None,
        limits: QueryLimits | None = None,
    ) -> None:
        self.schema, self.month = schema, month
        self.conn = conn
        self.db = db  # for a second connection in the same snapshot (bucketed digests)
        self.limits = limits or QueryLimits()
        self._row = POSTGRES.row(schema.value_columns)
        self._positions: Path | None = None

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

    def bucketed(self, buckets: int, spill: Path) -> MonthDigest:
        """Every row's hash (computed by the server) and ctid, read as Arrow batches through
        ADBC on a second connection that shares this transaction's snapshot (about 24 bytes
        a row), digested here by bucket and kept on disk."""
        if self.db is None:
            raise RuntimeError("a bucketed Postgres digest needs the Database")
        snapshot = self.conn.scalar("SELECT pg_catalog.pg_export_snapshot()")
        query = sql.SQL("SELECT {hash} AS h, ctid FROM {table} WHERE year_month = $1").format(
            hash=sql.SQL(postgres_hash(self._row)), table=self.schema.qualified_table
        )
        accumulator = DigestAccumulator(buckets)
        path = spill / f"postgres-{id(self)}.positions"
        with path.open("wb") as out, self.db.adbc_in_snapshot(str(snapshot)) as session:
            for statement in self.limits.statements():
                session.execute(statement)
            # Every row goes to the client, so the planner prices a parallel plan's tuple
            # transfer above its gain and picks one process; but the row hash, not the transfer,
            # is the work (measured on 2,000,000 rows: 1.55 s in one process, 1.1 s in two).
            session.execute("SET LOCAL parallel_tuple_cost = 0")
            session.execute(query, (self.month.ym,))
            for batch in session.record_batches():
                self._add_rows(batch, accumulator, out)
        self._positions = path
        return accumulator.result()

    @staticmethod
    def _add_rows(batch: pa.RecordBatch, accumulator: DigestAccumulator, out: Any) -> None:
        if not batch.num_rows:
            return
        hashes = batch.column(0).to_numpy().astype("<i8").view("<u8")
        tids = batch.column(1)
        tids = tids.storage if isinstance(tids, pa.ExtensionArray) else tids
        # A tid is six bytes, big-endian: the block (4) and the item within it (2).
        raw = np.frombuffer(tids.buffers()[2], _TID, count=len(tids), offset=6 * tids.offset)
        accumulator.add(bucket_of(hashes, accumulator.buckets), hashes)
        kept = np.empty(len(hashes), _POSITION)
        kept["hash"], kept["block"], kept["offset"] = hashes, raw["block"], raw["offset"]
        kept.tofile(out)

    def rows_in_buckets(self, buckets: int, selected: Sequence[int]) -> Iterator[SideRow]:
        if self._positions is None:
            raise RuntimeError("rows_in_buckets needs bucketed() first")
        wanted = np.array(sorted(selected), dtype=np.uint64)
        tids: list[str] = []
        with self._positions.open("rb") as source:
            while len(chunk := np.fromfile(source, _POSITION, _POSITIONS_PER_READ)):
                chosen = chunk[np.isin(bucket_of(chunk["hash"], buckets), wanted)]
                tids += [
                    f"({b},{o})" for b, o in zip(chosen["block"], chosen["offset"], strict=True)
                ]
        columns = self.schema.value_columns
        query = sql.SQL(
            "SELECT {hash}, {values}, {fields} FROM {table}"
            " WHERE year_month = %s AND ctid = ANY(%s::tid[])"
        ).format(
            hash=sql.SQL(postgres_hash(self._row)),
            values=sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
            fields=sql.SQL(", ").join(sql.SQL(POSTGRES.field(c)) for c in columns),
            table=self.schema.qualified_table,
        )
        width = len(columns)
        # Binary results: values exactly as stored, whatever the session's output settings.
        for row in self.conn.execute(query, (self.month.ym, tids), binary=True):
            yield SideRow(row[0], tuple(row[1 : 1 + width]), tuple(row[1 + width :]))


class DeltaSide(RowSide):
    """The Delta snapshot at the reader's pinned version, hashed batch by batch on `workers`
    threads; `bucketed` keeps every batch it hashed, with each row's hash, in an Arrow IPC file
    (disk, not memory), from which `rows_in_buckets` reads rows back without hashing again."""

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
        self.hasher = DeltaHasher(schema)
        self.parallel = ParallelHasher(schema, workers)
        self._spilled: Path | None = None

    def count(self) -> int:
        counted = self.reader.month_row_count(self.month.year_month)
        if counted is not None:
            return counted
        return sum(b.num_rows for b in self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        names = [c.name for c in self.hasher.columns]
        return self.reader.scan_month(self.month.year_month, names, self.batch_rows)

    def digest(self) -> MonthDigest:
        return self.parallel.digest(self._batches())

    def bucketed(self, buckets: int, spill: Path) -> MonthDigest:
        accumulator = DigestAccumulator(buckets)
        path = spill / f"delta-{id(self)}.arrow"
        writer: ipc.RecordBatchFileWriter | None = None
        try:
            for batch, rows in self.parallel.map(self._batches()):
                accumulator.add(bucket_of(rows, buckets), rows)
                kept = batch.append_column("__hash", pa.array(rows))
                if writer is None:
                    writer = ipc.new_file(str(path), kept.schema)
                writer.write_batch(kept)
        finally:
            if writer is not None:
                writer.close()
        self._spilled = path if writer is not None else None
        return accumulator.result()

    def rows_in_buckets(self, buckets: int, selected: Sequence[int]) -> Iterator[SideRow]:
        if self._spilled is None:
            return
        wanted = np.array(sorted(selected), dtype=np.uint64)
        names = [c.name for c in self.hasher.columns]
        with pa.memory_map(str(self._spilled)) as source:
            reader = ipc.open_file(source)
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                hashes = batch.column("__hash").to_numpy()
                chosen = np.flatnonzero(np.isin(bucket_of(hashes, buckets), wanted))
                if not len(chosen):
                    continue
                picked = batch.take(pa.array(chosen))
                values = picked.select(names)
                typed = zip(*(c.to_pylist() for c in values.columns), strict=True)
                for row_hash, row, fields in zip(
                    as_signed(picked.column("__hash").to_numpy()).tolist(),
                    typed,
                    self.hasher.fields(values),
                    strict=True,
                ):
                    yield SideRow(row_hash, tuple(row), fields)


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
