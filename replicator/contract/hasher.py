"""Where the contract runs: `DeltaHasher` hashes Arrow batches (DataFusion builds the encodings,
numpy hashes them); the `postgres_*` helpers give the same hash and bucket as SQL for the server.
"""

from __future__ import annotations

from typing import Any

import datafusion
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from psycopg import sql

from replicator.contract.digest import DigestAccumulator
from replicator.contract.encoding import DATAFUSION, prepare_batch
from replicator.contract.lookup3 import as_signed, hash_bytes_extended
from replicator.errors import PostgresError
from replicator.schema import TableSchema

# A string whose hash both sides must agree on before any digest is trusted: Postgres's
# hash depends on the server's byte order, which the contract fixes as little-endian.
KNOWN_ANSWER_TEXT = "rh1 known answer: é中\t"


def postgres_hash(text_sql: str) -> str:
    """The 64-bit lookup3 hash of the text's bytes (see `lookup3`), as a bigint."""
    return f'hashtextextended(({text_sql}) COLLATE "C", 0)'


def postgres_bucket(key_sql: str, buckets: int) -> str:
    """The key hash masked to the bucket count (a power of two)."""
    if buckets == 1:
        return "0"
    return f"({postgres_hash(key_sql)} & {buckets - 1:d})"


def verify_server_hash(conn: Any) -> None:
    """Refuses to compare when the server's hash differs from ours (a big-endian server)."""
    row = conn.execute(
        sql.SQL("SELECT {}").format(sql.SQL(postgres_hash("%s::text"))), (KNOWN_ANSWER_TEXT,)
    ).fetchone()
    expected = int(as_signed(hash_bytes_extended(pa.array([KNOWN_ANSWER_TEXT])))[0])
    if row is None or int(row[0]) != expected:
        raise PostgresError(
            "this Postgres server's hashtextextended() differs from the hash contract "
            "(a big-endian server?); digests cannot be compared"
        )


class DeltaHasher:
    """Applies the contract to Arrow batches of one table: DataFusion builds the encodings,
    numpy hashes them. Used to digest the Delta side and by the writer, which digests what it
    copies."""

    def __init__(self, schema: TableSchema) -> None:
        self.columns = schema.value_columns
        self.key_sql = DATAFUSION.row(schema.key_columns)
        self.row_sql = DATAFUSION.row(self.columns)
        self._context = datafusion.SessionContext()

    def query(self, batch: pa.RecordBatch, select: str) -> pa.Table:
        """Runs `select` (over table `b`) on one batch, in two partitions for two cores."""
        half = max(1, batch.num_rows // 2)
        parts = [[batch.slice(0, half)], [batch.slice(half)]] if batch.num_rows > 1 else [[batch]]
        self._context.register_record_batches("b", parts)
        try:
            return pa.Table.from_batches(self._context.sql(select).collect())
        finally:
            self._context.deregister_table("b")

    def hashes(
        self, batch: pa.RecordBatch, *, keys: bool, aligned: bool = False
    ) -> tuple[npt.NDArray[np.uint64] | None, npt.NDArray[np.uint64]]:
        """(key hashes, row hashes) of a batch of raw Delta rows; no key hashes unless asked
        (a one-bucket digest needs none). A digest does not care in which order they come
        (DataFusion may return its partitions in any order); `aligned` puts them in the
        batch's row order."""
        key = self.key_sql if keys else "''"
        prepared = prepare_batch(batch, self.columns)
        position = ""
        if aligned:
            prepared = prepared.append_column("__pos", pa.array(np.arange(batch.num_rows)))
            position = ", __pos"
        select = f"SELECT {key} AS k, {self.row_sql} AS r{position} FROM b"  # noqa: S608
        result = self.query(prepared, select)
        rows = hash_bytes_extended(result.column("r"))
        key_hashes = hash_bytes_extended(result.column("k")) if keys else None
        if aligned:
            order = np.argsort(result.column("__pos").to_numpy())
            rows = rows[order]
            key_hashes = key_hashes[order] if key_hashes is not None else None
        return key_hashes, rows

    def add(self, accumulator: DigestAccumulator, batch: pa.RecordBatch) -> None:
        """Folds a batch of raw Delta rows into `accumulator`."""
        if not batch.num_rows:
            return
        keys, rows = self.hashes(batch, keys=accumulator.buckets > 1)
        accumulator.add(bucket_of(keys, accumulator.buckets, len(rows)), rows)

    def fields(self, batch: pa.RecordBatch) -> list[tuple[str, ...]]:
        """Each row's field encodings (column by column), to tell which columns differ."""
        if not batch.num_rows:
            return []
        select = ", ".join(f"{DATAFUSION.field(c)} AS f{i}" for i, c in enumerate(self.columns))
        # DataFusion may reorder rows across partitions: every result carries its position.
        prepared = prepare_batch(batch, self.columns)
        prepared = prepared.append_column("__row", pa.array(np.arange(batch.num_rows)))
        encoded = self.query(prepared, f"SELECT __row, {select} FROM b")  # noqa: S608
        order = np.argsort(encoded.column("__row").to_numpy()).tolist()
        columns = [encoded.column(f"f{i}").to_pylist() for i in range(len(self.columns))]
        return [tuple(column[i] for column in columns) for i in order]


def bucket_of(
    key_hashes: npt.NDArray[np.uint64] | None, buckets: int, rows: int
) -> npt.NDArray[np.uint64]:
    """Each row's bucket: its key hash masked to the bucket count (a power of two)."""
    if key_hashes is None or buckets == 1:
        return np.zeros(rows, dtype=np.uint64)
    return key_hashes & np.uint64(buckets - 1)
