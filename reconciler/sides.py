"""The sides of a comparison behind one interface: each gives a month's count, its digest, and
the fingerprints of the rows in chosen buckets, computed where its data lives.

`PostgresSide` runs one server-side query per question (no rows transferred for a digest);
`DeltaSide` streams the snapshot through DataFusion in bounded batches; `RecordedSide` is the
digest the writer recorded at sync of the rows it copied (no data read at all).
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from replicator.contract import (
    DATAFUSION,
    POSTGRES,
    DeltaHasher,
    DigestAccumulator,
    MonthDigest,
    as_signed,
    hash_bytes_extended,
    postgres_bucket,
    postgres_hash,
    prepare_batch,
    verify_server_hash,
)
from replicator.delta import DeltaTableReader
from replicator.schema import TableSchema
from replicator.syncstate import SyncState
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowFingerprint:
    """One row as the diff sees it: its key for people, and encodings to compare."""

    key: tuple[Any, ...]
    key_hash: int
    row_hash: int
    fields: tuple[str, ...]


def display_value(value: Any) -> Any:
    """A key value as JSON shows it, the same whichever side it came from."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MonthSide(ABC):
    """One side of the comparison of one month of one table."""

    name: str

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def digest(self, buckets: int) -> MonthDigest: ...

    @abstractmethod
    def fingerprints(self, buckets: int, selected: list[int]) -> list[RowFingerprint]:
        """Rows whose key falls in one of the `selected` buckets."""


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

    def fingerprints(self, buckets: int, selected: list[int]) -> list[RowFingerprint]:
        keys = [sql.Identifier(c.name) for c in self.schema.key_columns]
        fields = [sql.SQL(POSTGRES.field(c)) for c in self.schema.value_columns]
        query = sql.SQL(
            "SELECT {keys}, {key}, {row}, {fields} FROM {table}"
            " WHERE year_month = %s AND {bucket} = ANY(%s)"
        ).format(
            keys=sql.SQL(", ").join(keys),
            key=sql.SQL(postgres_hash(self._key)),
            row=sql.SQL(postgres_hash(self._row)),
            fields=sql.SQL(", ").join(fields),
            table=self.schema.qualified_table,
            bucket=sql.SQL(postgres_bucket(self._key, buckets)),
        )
        width = len(keys)
        return [
            RowFingerprint(
                tuple(display_value(v) for v in row[:width]),
                row[width],
                row[width + 1],
                tuple(row[width + 2 :]),
            )
            for row in self.conn.execute(query, (str(self.year_month), selected))
        ]


class DeltaSide(MonthSide):
    """The Delta snapshot at the reader's pinned version, hashed batch by batch."""

    name = "delta"

    def __init__(
        self, reader: DeltaTableReader, schema: TableSchema, year_month: YearMonth, batch_rows: int
    ) -> None:
        self.schema, self.year_month = schema, year_month
        self.reader = reader
        self.batch_rows = batch_rows
        self.hasher = DeltaHasher(schema)
        self._columns = self.hasher.columns

    def count(self) -> int:
        counted = self.reader.month_row_count(self.year_month)
        if counted is not None:
            return counted
        return sum(b.num_rows for b in self._batches())

    def _batches(self) -> Any:
        names = [c.name for c in self._columns]
        return self.reader.scan_month(self.year_month, names, self.batch_rows)

    def digest(self, buckets: int) -> MonthDigest:
        accumulator = DigestAccumulator(buckets)
        for batch in self._batches():
            self.hasher.add(accumulator, batch)
        return accumulator.result()

    def fingerprints(self, buckets: int, selected: list[int]) -> list[RowFingerprint]:
        wanted = np.array(sorted(selected), dtype=np.uint64)
        mask = np.uint64(buckets - 1)
        fields = ", ".join(f"{DATAFUSION.field(c)} AS f{i}" for i, c in enumerate(self._columns))
        # DataFusion may reorder rows across partitions: every result carries its row number.
        select_keys = f"SELECT __row, {self.hasher.key_sql} AS k FROM b"  # noqa: S608
        select_rows = (
            f"SELECT __row, {self.hasher.key_sql} AS k, {self.hasher.row_sql} AS r, {fields} FROM b"  # noqa: S608
        )
        key_names = [c.name for c in self.schema.key_columns]
        found: list[RowFingerprint] = []
        for batch in self._batches():
            prepared = prepare_batch(batch, self._columns)
            prepared = prepared.append_column("__row", pa.array(np.arange(batch.num_rows)))
            keyed = self.hasher.query(prepared, select_keys)
            in_selected = np.isin(hash_bytes_extended(keyed.column("k")) & mask, wanted)
            if not in_selected.any():
                continue
            rows = pa.array(keyed.column("__row").to_numpy()[in_selected])
            key_values = batch.select(key_names).take(rows).to_pylist()
            encoded = self.hasher.query(prepared.take(rows), select_rows)
            key_hashes = as_signed(hash_bytes_extended(encoded.column("k"))).tolist()
            row_hashes = as_signed(hash_bytes_extended(encoded.column("r"))).tolist()
            encodings = zip(
                *(encoded.column(f"f{i}").to_pylist() for i in range(len(self._columns))),
                strict=True,
            )
            by_row = {
                position: (key_hash, row_hash, tuple(values))
                for position, key_hash, row_hash, values in zip(
                    encoded.column("__row").to_pylist(),
                    key_hashes,
                    row_hashes,
                    encodings,
                    strict=True,
                )
            }
            for position, key in zip(rows.to_pylist(), key_values, strict=True):
                key_hash, row_hash, values = by_row[position]
                found.append(
                    RowFingerprint(
                        tuple(display_value(key[n]) for n in key_names), key_hash, row_hash, values
                    )
                )
        return found


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

    def fingerprints(self, buckets: int, selected: list[int]) -> list[RowFingerprint]:
        raise ValueError("the recorded side holds a digest, not rows")
