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
import psycopg
import pyarrow as pa
from psycopg import sql
from pyarrow import ipc

from replicator.contract import (
    POSTGRES,
    DeltaHasher,
    DigestAccumulator,
    MonthDigest,
    as_signed,
    bucket_of,
    postgres_bucket,
    postgres_hash,
    verify_server_hash,
)
from replicator.delta import DeltaTableReader
from replicator.schema import TableSchema
from replicator.syncstate import SyncState
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SideRow:
    """One row of one side, as the diff sees it."""

    key_hash: int
    row_hash: int
    values: tuple[Any, ...]  # typed values of the schema's value columns, in digest order
    fields: tuple[str, ...]  # their contract encodings: equal encodings, equal values


class MonthSide(ABC):
    """One side of the comparison of one month of one table."""

    name: str

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def digest(self, buckets: int) -> MonthDigest: ...

    @abstractmethod
    def rows(self, buckets: int, selected: Sequence[int]) -> Iterator[SideRow]:
        """The rows whose key falls in one of the `selected` buckets."""


class PostgresSide(MonthSide):
    """Postgres, inside the caller's (REPEATABLE READ) transaction on `conn`."""

    name = "postgres"

    def __init__(
        self, conn: psycopg.Connection[Any], schema: TableSchema, year_month: YearMonth
    ) -> None:
        self.schema, self.year_month = schema, year_month
        self.conn = conn
        self._key = POSTGRES.row(schema.key_columns)
        self._row = POSTGRES.row(schema.value_columns)

    def verify_hash_function(self) -> None:
        """Refuses to compare when the server's hash differs from ours (a big-endian server)."""
        verify_server_hash(self.conn)

    def count(self) -> int:
        query = sql.SQL("SELECT count(*) FROM {} WHERE year_month = %s").format(
            self.schema.qualified_table
        )
        row = self.conn.execute(query, (str(self.year_month),)).fetchone()
        return int(row[0]) if row else 0

    def digest(self, buckets: int) -> MonthDigest:
        query = sql.SQL(
            "SELECT bucket, count(*), sum(h) FROM (SELECT {bucket} AS bucket, {hash} AS h"
            " FROM {table} WHERE year_month = %s) rows GROUP BY bucket"
        ).format(
            bucket=sql.SQL(postgres_bucket(self._key, buckets)),
            hash=sql.SQL(postgres_hash(self._row)),
            table=self.schema.qualified_table,
        )
        # JIT compiling this expression costs more than it saves on a month's rows.
        self.conn.execute("SET LOCAL jit = off")
        rows = self.conn.execute(query, (str(self.year_month),)).fetchall()
        return MonthDigest.from_pairs(buckets, [(int(b), int(c), int(s)) for b, c, s in rows])

    def rows(self, buckets: int, selected: Sequence[int]) -> Iterator[SideRow]:
        columns = self.schema.value_columns
        query = sql.SQL(
            "SELECT {key}, {row}, {values}, {fields} FROM {table}"
            " WHERE year_month = %s AND {bucket} = ANY(%s)"
        ).format(
            key=sql.SQL(postgres_hash(self._key)),
            row=sql.SQL(postgres_hash(self._row)),
            values=sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
            fields=sql.SQL(", ").join(sql.SQL(POSTGRES.field(c)) for c in columns),
            table=self.schema.qualified_table,
            bucket=sql.SQL(postgres_bucket(self._key, buckets)),
        )
        width = len(columns)
        # Binary results: values exactly as stored, whatever the session's output settings.
        for row in self.conn.execute(query, (str(self.year_month), list(selected)), binary=True):
            yield SideRow(row[0], row[1], tuple(row[2 : 2 + width]), tuple(row[2 + width :]))


class DeltaSide(MonthSide):
    """The Delta snapshot at the reader's pinned version, hashed batch by batch.

    With a `spill` directory, `digest` also writes every batch it hashed, with each row's key
    and row hash, to an Arrow IPC file there (disk, not memory); `rows` then reads the rows of
    the chosen buckets back from it instead of reading and hashing the month again.
    """

    name = "delta"

    def __init__(
        self,
        reader: DeltaTableReader,
        schema: TableSchema,
        year_month: YearMonth,
        batch_rows: int,
        *,
        spill: Path | None = None,
    ) -> None:
        self.schema, self.year_month = schema, year_month
        self.reader = reader
        self.batch_rows = batch_rows
        self.hasher = DeltaHasher(schema)
        self._spill_dir = spill
        self._spilled: Path | None = None

    def count(self) -> int:
        counted = self.reader.month_row_count(self.year_month)
        if counted is not None:
            return counted
        return sum(b.num_rows for b in self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        names = [c.name for c in self.hasher.columns]
        return self.reader.scan_month(self.year_month, names, self.batch_rows)

    def digest(self, buckets: int) -> MonthDigest:
        accumulator = DigestAccumulator(buckets)
        writer: ipc.RecordBatchFileWriter | None = None
        path = self._spill_dir / f"delta-{id(self)}.arrow" if self._spill_dir else None
        try:
            for batch in self._batches():
                if not batch.num_rows:
                    continue
                keys, rows = self.hasher.hashes(
                    batch, keys=buckets > 1 or path is not None, aligned=path is not None
                )
                accumulator.add(bucket_of(keys, buckets, len(rows)), rows)
                if path is not None and keys is not None:
                    kept = batch.append_column("__key", pa.array(keys)).append_column(
                        "__row", pa.array(rows)
                    )
                    if writer is None:
                        writer = ipc.new_file(str(path), kept.schema)
                    writer.write_batch(kept)
        finally:
            if writer is not None:
                writer.close()
        self._spilled = path if writer is not None else None
        return accumulator.result()

    def rows(self, buckets: int, selected: Sequence[int]) -> Iterator[SideRow]:
        wanted = np.array(sorted(selected), dtype=np.uint64)
        for batch in self._kept():
            keys = batch.column("__key").to_numpy()
            chosen = np.flatnonzero(np.isin(bucket_of(keys, buckets, len(keys)), wanted))
            if not len(chosen):
                continue
            picked = batch.take(pa.array(chosen))
            values = picked.select([c.name for c in self.hasher.columns])
            rows = zip(
                *(values.column(i).to_pylist() for i in range(values.num_columns)), strict=True
            )
            for key, row, typed, fields in zip(
                as_signed(picked.column("__key").to_numpy()).tolist(),
                as_signed(picked.column("__row").to_numpy()).tolist(),
                rows,
                self.hasher.fields(values),
                strict=True,
            ):
                yield SideRow(key, row, tuple(typed), fields)

    def _kept(self) -> Iterator[pa.RecordBatch]:
        """The hashed batches: from the spill when there is one, else hashed again."""
        if self._spilled is not None:
            with pa.memory_map(str(self._spilled)) as source:
                reader = ipc.open_file(source)
                for index in range(reader.num_record_batches):
                    yield reader.get_batch(index)
            return
        for batch in self._batches():
            if batch.num_rows:
                keys, rows = self.hasher.hashes(batch, keys=True, aligned=True)
                assert keys is not None
                yield batch.append_column("__key", pa.array(keys)).append_column(
                    "__row", pa.array(rows)
                )


class RecordedSide(MonthSide):
    """What the writer recorded at sync: the digest of the rows it copied from Delta."""

    name = "recorded"

    def __init__(self, state: SyncState) -> None:
        recorded = state.recorded_digest()
        if recorded is None:
            raise ValueError(f"{state.table} {state.year_month}: no digest recorded at sync")
        self._digest = recorded

    @classmethod
    def of(cls, state: SyncState | None) -> RecordedSide | None:
        """The recorded side of a sync, or None when the sync recorded no usable digest."""
        if state is None or state.recorded_digest() is None:
            return None
        return cls(state)

    def count(self) -> int:
        return self._digest.rows

    def digest(self, buckets: int) -> MonthDigest:
        if buckets != 1:
            raise ValueError("the digest recorded at sync has one bucket")
        return self._digest

    def rows(self, buckets: int, selected: Sequence[int]) -> Iterator[SideRow]:
        raise ValueError("the recorded side holds a digest, not rows")
