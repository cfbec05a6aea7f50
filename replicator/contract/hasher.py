"""Where the contract runs: `DeltaHasher` hashes Arrow batches (the compiled kernel, or when it is
off DataFusion builds the encodings and numpy hashes them), `ParallelHasher` does it on several
threads; `postgres_hash` is the same hash as SQL for the server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from psycopg import sql

from replicator.contract.digest import DigestAccumulator, MonthDigest
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


def _kernel_on() -> bool:
    """Whether this process hashes with the compiled kernel (decided, and a fallback logged,
    once per process). `replicator.contract.kernel` is imported here, on first use, so that
    `python -m replicator.contract.kernel` runs it as the entry point, not a second copy."""
    from replicator.contract import kernel

    return kernel.available()


class DeltaHasher:
    """Applies the contract to Arrow batches of one table: the compiled kernel
    (`replicator.contract.kernel`) encodes and hashes each batch in one pass; when the kernel is
    off (no numba, a failed compile or self-check, `RECONCILER_CONTRACT_KERNEL=python`),
    DataFusion builds the encodings and numpy hashes them, bit for bit the same. Used to digest
    the Delta side and by the writer, which digests what it copies.

    Each fallback query runs in one DataFusion partition, so results keep the batch's row
    order; the parallelism is the caller's (a thread per batch, `ParallelHasher`), and not
    thread-safe within one hasher: give each thread its own.
    """

    def __init__(self, schema: TableSchema) -> None:
        self.columns = schema.value_columns
        self.row_sql = DATAFUSION.row(self.columns)
        self._context: Any = None  # DataFusion's, made when the fallback first needs it

    @property
    def uses_kernel(self) -> bool:
        return _kernel_on()

    def query(self, batch: pa.RecordBatch, select: str) -> pa.Table:
        """Runs `select` (over table `b`) on one batch with DataFusion; rows come out in the
        batch's order. The fallback's engine (and the tests' reference)."""
        if self._context is None:
            import datafusion  # only here: the CLI starts without it

            config = datafusion.SessionConfig().with_target_partitions(1)
            self._context = datafusion.SessionContext(config)
        self._context.register_record_batches("b", [[batch]])
        try:
            return pa.Table.from_batches(self._context.sql(select).collect())
        finally:
            self._context.deregister_table("b")

    def hashes(self, batch: pa.RecordBatch) -> npt.NDArray[np.uint64]:
        """The row hashes of a batch of raw Delta rows, in the batch's row order."""
        if _kernel_on():
            from replicator.contract import kernel

            return kernel.row_hashes(batch, self.columns)
        return self.reference_hashes(batch)

    def reference_hashes(self, batch: pa.RecordBatch) -> npt.NDArray[np.uint64]:
        """The same hashes by the fallback: DataFusion's encodings, numpy's lookup3."""
        select = f"SELECT {self.row_sql} AS r FROM b"  # noqa: S608
        result = self.query(prepare_batch(batch, self.columns), select)
        return hash_bytes_extended(result.column("r"))

    def add(self, accumulator: DigestAccumulator, batch: pa.RecordBatch) -> None:
        """Folds a batch of raw Delta rows into `accumulator`."""
        if batch.num_rows:
            rows = self.hashes(batch)
            accumulator.add(bucket_of(rows, accumulator.buckets), rows)

    def fields(self, batch: pa.RecordBatch) -> list[tuple[str, ...]]:
        """Each row's field encodings (column by column), to tell which columns differ."""
        if not batch.num_rows:
            return []
        if _kernel_on():
            from replicator.contract import kernel

            return kernel.field_encodings(batch, self.columns)
        return self.reference_fields(batch)

    def _reference_encoded(self, batch: pa.RecordBatch) -> list[pa.ChunkedArray]:
        """Each column's field encodings, by DataFusion."""
        select = ", ".join(f"{DATAFUSION.field(c)} AS f{i}" for i, c in enumerate(self.columns))
        encoded = self.query(prepare_batch(batch, self.columns), f"SELECT {select} FROM b")  # noqa: S608
        return [encoded.column(f"f{i}") for i in range(len(self.columns))]

    def reference_fields(self, batch: pa.RecordBatch) -> list[tuple[str, ...]]:
        """The same encodings by the fallback (DataFusion)."""
        if not batch.num_rows:
            return []
        columns = [column.to_pylist() for column in self._reference_encoded(batch)]
        return list(zip(*columns, strict=True))

    def field_hashes(self, batch: pa.RecordBatch) -> npt.NDArray[np.uint64]:
        """uint64[rows, columns]: each field's hash alone, what Postgres computes as
        `hashtextextended(<field encoding> COLLATE "C", 0)` (`postgres_hash`)."""
        if _kernel_on():
            from replicator.contract import kernel

            return kernel.field_hashes(batch, self.columns)
        out = np.empty((batch.num_rows, len(self.columns)), dtype=np.uint64)
        if batch.num_rows:
            for i, column in enumerate(self._reference_encoded(batch)):
                out[:, i] = hash_bytes_extended(column)
        return out


Hashed = tuple[pa.RecordBatch, "npt.NDArray[np.uint64]"]


class ParallelHasher:
    """Hashes a stream of batches on `workers` threads (the kernel releases the GIL, as
    DataFusion and numpy do), each with its own `DeltaHasher`. Each batch is cut into `workers`
    slices hashed at once, while the next batch is read: two batches in memory whatever the
    number of workers, so memory stays bounded by batches, not by the month or the cores."""

    def __init__(self, schema: TableSchema, workers: int) -> None:
        self.schema = schema
        self.workers = max(1, workers)
        self._local = threading.local()

    def _hasher(self) -> DeltaHasher:
        hasher: DeltaHasher | None = getattr(self._local, "hasher", None)
        if hasher is None:
            hasher = self._local.hasher = DeltaHasher(self.schema)
        return hasher

    def _hash(self, batch: pa.RecordBatch) -> Hashed:
        return batch, self._hasher().hashes(batch)

    def _hashes(self, batch: pa.RecordBatch) -> npt.NDArray[np.uint64]:
        return self._hasher().hashes(batch)

    def map(self, batches: Iterator[pa.RecordBatch]) -> Iterator[Hashed]:
        """(batch, its row hashes), in the stream's order."""
        if self.workers == 1:
            for batch in batches:
                if batch.num_rows:
                    yield self._hash(batch)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="hash") as pool:
            pending: tuple[pa.RecordBatch, list[Future[npt.NDArray[np.uint64]]]] | None = None
            for batch in batches:  # read while the previous batch is hashed
                if not batch.num_rows:
                    continue
                if pending is not None:
                    yield pending[0], np.concatenate([f.result() for f in pending[1]])
                size = -(-batch.num_rows // self.workers)
                slices = [batch.slice(start, size) for start in range(0, batch.num_rows, size)]
                pending = (batch, [pool.submit(self._hashes, part) for part in slices])
            if pending is not None:
                yield pending[0], np.concatenate([f.result() for f in pending[1]])

    def digest(self, batches: Iterator[pa.RecordBatch], buckets: int = 1) -> MonthDigest:
        accumulator = DigestAccumulator(buckets)
        for _, rows in self.map(batches):
            accumulator.add(bucket_of(rows, buckets), rows)
        return accumulator.result()


def bucket_of(row_hashes: npt.NDArray[np.uint64], buckets: int) -> npt.NDArray[np.uint64]:
    """Each row's bucket (for `reconciler diff`): its row hash masked to the bucket count, a
    power of two. Two equal rows share a bucket; a changed row leaves its old bucket on one
    side and appears in another, so both differ."""
    return row_hashes & np.uint64(buckets - 1)
