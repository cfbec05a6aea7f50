"""Finding the rows of a month that differ between Postgres and one Delta version, in memory
bounded by the differing rows (not by the month): what `reconciler diff` shows and what a
narrow repair changes.

Pass 1 splits each side's month digest by row-hash bucket (`bucket_of`), both sides at once.
Postgres computes each row's hash and sends it with the row's ctid (ADBC, in the caller's
exported snapshot); the hashes and ctids go to a file on disk, 14 bytes a row. The Delta side is
one pass of the contract kernel over the snapshot. Buckets whose count and sum agree hold the
same rows on both sides.

Pass 2 reads only the rows of the differing buckets: from Postgres by ctid, from Delta by one
more pass that keeps the rows of those buckets, in files of about `ROWS_PER_CHUNK` rows on
disk, compared chunk by chunk. (Reading Delta twice costs less than keeping it: the kernel
hashes a month faster than Postgres digests it, and the first pass runs beside Postgres's.)
Each row comes with its row hash, the hash of each field's encoding (equal field hashes: equal
values) and its values rendered as text by Arrow, the same way for both sides, without a
Python object per timestamp.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from pyarrow import ipc

from reconciler.sides import QueryLimits
from replicator.contract import (
    POSTGRES,
    DeltaHasher,
    DigestAccumulator,
    MonthDigest,
    ParallelHasher,
    bucket_of,
    postgres_hash,
)
from replicator.delta import DeltaTableReader
from replicator.month import Month
from replicator.postgres import AdbcSession, Database
from replicator.schema import Column, Encoding, TableSchema

logger = logging.getLogger(__name__)

ROWS_PER_CHUNK = 200_000  # rows of differing buckets compared at once
ROWS_PER_BUCKET = 64  # what bucket counts aim at: a few differing rows fetch little
MAX_BUCKETS = 65_536

_TID = np.dtype([("block", ">u4"), ("offset", ">u2")])
_POSITION = np.dtype([("hash", "<u8"), ("block", "<u4"), ("offset", "<u2")])
_POSITIONS_PER_READ = 1 << 20
HASH, CTID = "__hash", "__ctid"
Scalar = str | int | bool | None


def buckets_for(rows: int, configured: int) -> int:
    """The configured bucket count, doubled until buckets hold about ROWS_PER_BUCKET rows."""
    buckets = configured
    while buckets < MAX_BUCKETS and rows / buckets > ROWS_PER_BUCKET:
        buckets *= 2
    return buckets


def field_name(index: int) -> str:
    return f"__f{index}"


@dataclass(frozen=True)
class PassOptions:
    """How hard localizing may work each side."""

    batch_rows: int
    workers: int
    limits: QueryLimits


def chunks_of(
    differing: Sequence[int], postgres: MonthDigest, delta: MonthDigest
) -> list[tuple[int, ...]]:
    """The differing buckets in groups of about ROWS_PER_CHUNK rows (on the bigger side)."""
    groups: list[tuple[int, ...]] = []
    group: list[int] = []
    rows = 0
    for bucket in differing:
        group.append(bucket)
        rows += max(postgres.counts[bucket], delta.counts[bucket])
        if rows >= ROWS_PER_CHUNK:
            groups.append(tuple(group))
            group, rows = [], 0
    if group:
        groups.append(tuple(group))
    return groups


class Localizer:
    """The two passes over one month (see the module docstring); `spill` is a directory of the
    caller's, removed by it."""

    def __init__(
        self, schema: TableSchema, month: Month, options: PassOptions, spill: Path
    ) -> None:
        self.schema, self.month = schema, month
        self.options = options
        self.spill = spill
        self.columns = schema.value_columns
        self._row = POSTGRES.row(self.columns)
        self._positions = spill / "postgres.positions"
        self._chunk_files: dict[int, Path] = {}
        self._fields = DeltaHasher(schema)  # field hashes of the few rows kept

    # -- pass 1 -------------------------------------------------------------------------------
    def postgres_pass(self, db: Database, snapshot: str, buckets: int) -> MonthDigest:
        """Every row's hash (computed by the server) and ctid, in the exported snapshot."""
        query = sql.SQL("SELECT {hash} AS h, ctid FROM {table} WHERE year_month = $1").format(
            hash=sql.SQL(postgres_hash(self._row)), table=self.schema.qualified_table
        )
        accumulator = DigestAccumulator(buckets)
        with self._positions.open("wb") as out, db.adbc_in_snapshot(snapshot) as session:
            for statement in self.options.limits.statements():
                session.execute(statement)
            # Every row goes to the client, so the planner prices a parallel plan's tuple
            # transfer above its gain and picks one process; but the row hash, not the
            # transfer, is the work (2,000,000 rows: 1.55 s in one process, 1.1 s in two).
            session.execute("SET LOCAL parallel_tuple_cost = 0")
            session.execute(query, (self.month.ym,))
            for batch in session.record_batches():
                _keep_positions(batch, accumulator, out)
        return accumulator.result()

    def delta_pass(self, reader: DeltaTableReader, buckets: int) -> MonthDigest:
        """The Delta month's bucket digests, from its rows."""
        hasher = ParallelHasher(self.schema, self.options.workers)
        return hasher.digest(self._delta_batches(reader), buckets)

    # -- pass 2 -------------------------------------------------------------------------------
    def keep_delta_rows(
        self, reader: DeltaTableReader, buckets: int, chunks: Sequence[tuple[int, ...]]
    ) -> MonthDigest:
        """Keeps on disk the Delta rows of the chunks' buckets (one file per chunk, with their
        row hashes and field hashes); returns the whole month's bucket digests."""
        chunk_of = np.full(buckets, -1, dtype=np.int64)
        for index, chunk in enumerate(chunks):
            chunk_of[list(chunk)] = index
        writers: dict[int, ipc.RecordBatchFileWriter] = {}
        accumulator = DigestAccumulator(buckets)
        hasher = ParallelHasher(self.schema, self.options.workers)
        try:
            for batch, rows in hasher.map(self._delta_batches(reader)):
                bucket = bucket_of(rows, buckets)
                accumulator.add(bucket, rows)
                where = chunk_of[bucket.astype(np.intp)]
                for index in np.unique(where[where >= 0]):
                    picked = np.flatnonzero(where == index)
                    kept = self._with_hashes(batch.take(pa.array(picked)), rows[picked])
                    if index not in writers:
                        path = self.spill / f"delta-{index}.arrow"
                        writers[int(index)] = ipc.new_file(str(path), kept.schema)
                        self._chunk_files[int(index)] = path
                    writers[int(index)].write_batch(kept)
        finally:
            for writer in writers.values():
                writer.close()
        return accumulator.result()

    def delta_rows(self, chunk_index: int) -> pa.Table:
        """The kept Delta rows of one chunk (read from disk, not mapped into memory)."""
        path = self._chunk_files.get(chunk_index)
        if path is None:
            return self._empty()
        with pa.OSFile(str(path), "rb") as source:
            return ipc.open_file(source).read_all()

    def postgres_rows(self, session: AdbcSession, buckets: int, chunk: tuple[int, ...]) -> pa.Table:
        """The Postgres rows of the chunk's buckets, by ctid, with their hashes and values."""
        tids = self._tids(buckets, chunk)
        if not tids:
            return self._empty(postgres=True)
        fields = [
            sql.SQL("{} AS {}").format(
                sql.SQL(postgres_hash(POSTGRES.field(c))), sql.Identifier(field_name(i))
            )
            for i, c in enumerate(self.columns)
        ]
        query = sql.SQL(
            "SELECT ctid::text AS {ctid}, {hash} AS {h}, {fields}, {values} FROM {table}"
            " WHERE year_month = $1 AND ctid = ANY($2::tid[])"
        ).format(
            ctid=sql.Identifier(CTID),
            hash=sql.SQL(postgres_hash(self._row)),
            h=sql.Identifier(HASH),
            fields=sql.SQL(", ").join(fields),
            values=sql.SQL(", ").join(sql.Identifier(c.name) for c in self.columns),
            table=self.schema.qualified_table,
        )
        session.execute(query, (self.month.ym, "{" + ",".join(f'"{t}"' for t in tids) + "}"))
        table = pa.Table.from_batches(list(session.record_batches()))
        signed = [HASH, *(field_name(i) for i in range(len(self.columns)))]
        return _unsigned(table, signed)

    # -- helpers ------------------------------------------------------------------------------
    def _delta_batches(self, reader: DeltaTableReader) -> Iterator[pa.RecordBatch]:
        names = [c.name for c in self.columns]
        return reader.scan_month(self.month.year_month, names, self.options.batch_rows)

    def _with_hashes(self, batch: pa.RecordBatch, rows: npt.NDArray[np.uint64]) -> pa.RecordBatch:
        fields = self._fields.field_hashes(batch)
        arrays = [pa.array(rows, pa.uint64())]
        arrays += [pa.array(fields[:, i], pa.uint64()) for i in range(len(self.columns))]
        names = [HASH, *(field_name(i) for i in range(len(self.columns)))]
        for column in self.columns:
            arrays.append(batch.column(column.name))
            names.append(column.name)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def _empty(self, *, postgres: bool = False) -> pa.Table:
        names = [HASH, *(field_name(i) for i in range(len(self.columns)))]
        fields = [pa.field(n, pa.uint64()) for n in names]
        if postgres:
            fields.insert(0, pa.field(CTID, pa.string()))
        fields += [pa.field(c.name, c.type.arrow) for c in self.columns]
        return pa.schema(fields).empty_table()

    def _tids(self, buckets: int, chunk: tuple[int, ...]) -> list[str]:
        wanted = np.array(sorted(chunk), dtype=np.uint64)
        tids: list[str] = []
        with self._positions.open("rb") as source:
            while len(found := np.fromfile(source, _POSITION, _POSITIONS_PER_READ)):
                chosen = found[np.isin(bucket_of(found["hash"], buckets), wanted)]
                tids += [
                    f"({b},{o})" for b, o in zip(chosen["block"], chosen["offset"], strict=True)
                ]
        return tids


def _keep_positions(batch: pa.RecordBatch, accumulator: DigestAccumulator, out: Any) -> None:
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


def _unsigned(table: pa.Table, names: list[str]) -> pa.Table:
    """Postgres's bigint hashes as the uint64 the contract computes (the same bits)."""
    for name in names:
        index = table.schema.get_field_index(name)
        signed = table.column(index).to_numpy().astype(np.int64)
        table = table.set_column(index, name, pa.array(signed.view(np.uint64), pa.uint64()))
    return table


# -- rendering: the same text for a value whichever side it came from ----------------------------
def render(array: pa.Array | pa.ChunkedArray, column: Column) -> list[Scalar]:
    """JSON scalars of a column's values: integers and booleans as themselves, everything
    else as text (doubles in shortest round-trip form; NaN and infinities by name; timestamps
    in ISO 8601 with microseconds), computed by Arrow rather than value by value."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if isinstance(array, pa.ExtensionArray):  # ADBC's numeric: its text
        array = array.storage
    encoding = column.type.encoding
    if encoding in (Encoding.INT64, Encoding.BOOLEAN):
        return list(array.to_pylist())
    if encoding is Encoding.FLOAT64:
        return [_double(v) for v in array.cast(pa.float64()).to_pylist()]
    if encoding is Encoding.TIMESTAMP:
        utc = array.cast(pa.timestamp("us", tz="UTC"))
        text = pc.binary_join_element_wise(pc.strftime(utc, "%Y-%m-%dT%H:%M:%S"), "+00:00", "")
        return list(text.to_pylist())
    if encoding is Encoding.TIMESTAMP_NTZ:
        return list(pc.strftime(array.cast(pa.timestamp("us")), "%Y-%m-%dT%H:%M:%S").to_pylist())
    if encoding is Encoding.BINARY:
        return [None if v is None else "\\x" + bytes(v).hex() for v in array.to_pylist()]
    return list(array.cast(pa.string()).to_pylist())


def _double(value: float | None) -> str | None:
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


@dataclass(frozen=True)
class SideRow:
    """One row of one side, as a diff sees it."""

    row_hash: int
    values: tuple[Scalar, ...]  # the schema's value columns, in digest order, rendered
    fields: tuple[int, ...]  # the hash of each value's encoding: equal hashes, equal values


def side_rows(table: pa.Table, schema: TableSchema) -> list[SideRow]:
    """The rows of a kept table (`Localizer.delta_rows` or `.postgres_rows`)."""
    columns = schema.value_columns
    if not table.num_rows:
        return []
    values = [render(table.column(c.name), c) for c in columns]
    fields = [table.column(field_name(i)).to_numpy() for i in range(len(columns))]
    hashes = table.column(HASH).to_numpy()
    return [
        SideRow(
            int(hashes[r]),
            tuple(v[r] for v in values),
            tuple(int(f[r]) for f in fields),
        )
        for r in range(table.num_rows)
    ]
