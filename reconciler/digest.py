"""The row-hash contract (docs/hash-contract.md): one canonical encoding, two engines.

Every row is encoded as text, the same text whether the row is read by Postgres or by
DataFusion from the Delta snapshot; the 64-bit lookup3 hash of that text is the row hash, and
the hash of the key's encoding gives its bucket. A month digest is, per bucket, the row count
and the sum of the row hashes modulo 2^64: order-independent, and a duplicated row changes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from replicator.delta import quote_identifier
from replicator.schema import Column, Kind

CONTRACT_VERSION = "rh1"
CANONICAL_NAN_BITS = 0x7FF8_0000_0000_0000
_MASK64 = (1 << 64) - 1

POSTGRES_EPOCH_DAYS = 10_957  # 2000-01-01 in days since 1970-01-01
POSTGRES_EPOCH_MICROS = POSTGRES_EPOCH_DAYS * 86_400_000_000

# Fixed-width payloads need no length prefix: the column's type says how long they are.
FIXED_WIDTH = frozenset(
    {
        Kind.LONG,
        Kind.INTEGER,
        Kind.SHORT,
        Kind.BYTE,
        Kind.DOUBLE,
        Kind.FLOAT,
        Kind.BOOLEAN,
        Kind.DATE,
        Kind.TIMESTAMP,
        Kind.TIMESTAMP_NTZ,
    }
)
_PG_FLOAT = (
    "CASE WHEN {c} = 'NaN' THEN '7ff8000000000000' ELSE encode(float8send({c}::float8), 'hex') END"
)

# Payload of a non-NULL value, per engine; {c} is the quoted column.
_POSTGRES_PAYLOAD: dict[Kind, str] = {
    **{
        kind: "encode(int8send({c}::bigint), 'hex')"
        for kind in (Kind.LONG, Kind.INTEGER, Kind.SHORT, Kind.BYTE)
    },
    Kind.STRING: "{c}",
    Kind.DOUBLE: _PG_FLOAT,
    Kind.FLOAT: _PG_FLOAT,
    Kind.BOOLEAN: "CASE WHEN {c} THEN 't' ELSE 'f' END",
    Kind.DATE: "encode(date_send({c}), 'hex')",
    Kind.TIMESTAMP: "encode(timestamptz_send({c}), 'hex')",
    Kind.TIMESTAMP_NTZ: "encode(timestamp_send({c}), 'hex')",
    Kind.DECIMAL: "CASE WHEN strpos({c}::text, '.') > 0 THEN rtrim(rtrim({c}::text, '0'), '.')"
    " ELSE {c}::text END",
    Kind.BINARY: "encode({c}, 'hex')",
}
# DataFusion sees floats, dates and timestamps already turned into integers (`prepare_batch`).
_DATAFUSION_PAYLOAD: dict[Kind, str] = {
    **{
        kind: "lpad(to_hex(CAST({c} AS BIGINT)), 16, '0')"
        for kind in (Kind.LONG, Kind.INTEGER, Kind.SHORT, Kind.BYTE)
    },
    Kind.STRING: "{c}",
    Kind.DOUBLE: "lpad(to_hex({c}), 16, '0')",
    Kind.FLOAT: "lpad(to_hex({c}), 16, '0')",
    Kind.BOOLEAN: "CASE WHEN {c} THEN 't' ELSE 'f' END",
    Kind.DATE: "lpad(to_hex({c}), 8, '0')",
    Kind.TIMESTAMP: "lpad(to_hex({c}), 16, '0')",
    Kind.TIMESTAMP_NTZ: "lpad(to_hex({c}), 16, '0')",
    Kind.DECIMAL: "CASE WHEN strpos(CAST({c} AS VARCHAR), '.') > 0"
    " THEN rtrim(rtrim(CAST({c} AS VARCHAR), '0'), '.') ELSE CAST({c} AS VARCHAR) END",
    Kind.BINARY: "encode({c}, 'hex')",
}


@dataclass(frozen=True)
class Encoder:
    """Builds the canonical-encoding SQL expressions for one engine."""

    payloads: dict[Kind, str]
    length: str  # {p}: octet length of a payload, as text
    quote: Callable[[str], str]

    def field(self, column: Column) -> str:
        """NULL is `N`; a fixed-width value is its payload; any other value is
        `<octet length>:<payload>`. No field can run into the next."""
        payload = self.payloads[column.type.kind].format(c=self.quote(column.name))
        if column.type.kind in FIXED_WIDTH:
            return f"coalesce({payload}, 'N')"
        return f"coalesce({self.length.format(p=payload)} || ':' || {payload}, 'N')"

    def row(self, columns: tuple[Column, ...]) -> str:
        return " || ".join([f"'{CONTRACT_VERSION}'", *(self.field(c) for c in columns)])


def _postgres_quote(name: str) -> str:
    return sql.Identifier(name).as_string(None)


POSTGRES = Encoder(_POSTGRES_PAYLOAD, "octet_length({p})::text", _postgres_quote)
DATAFUSION = Encoder(_DATAFUSION_PAYLOAD, "CAST(octet_length({p}) AS VARCHAR)", quote_identifier)


def postgres_hash(text_sql: str) -> str:
    """The 64-bit lookup3 hash of the text's bytes (see `reconciler.jenkins`), as a bigint."""
    return f'hashtextextended(({text_sql}) COLLATE "C", 0)'


def postgres_bucket(key_sql: str, buckets: int) -> str:
    """The key hash masked to the bucket count (a power of two)."""
    if buckets == 1:
        return "0"
    return f"({postgres_hash(key_sql)} & {buckets - 1:d})"


# A string whose hash both sides must agree on before any digest is trusted: Postgres's
# hash depends on the server's byte order, which the contract fixes as little-endian.
KNOWN_ANSWER_TEXT = "rh1 known answer: é中\t"


def prepare_batch(batch: pa.RecordBatch, columns: tuple[Column, ...]) -> pa.RecordBatch:
    """Arrow-side steps DataFusion cannot do: floats to their IEEE-754 bits (NaN canonical),
    dates and timestamps to integers counted from Postgres's epoch (2000-01-01)."""
    arrays = []
    for column in columns:
        array = batch.column(column.name)
        kind = column.type.kind
        if kind in (Kind.DOUBLE, Kind.FLOAT):
            array = float_bits(array)
        elif kind is Kind.DATE:
            days = pc.subtract(array.cast(pa.int32()).cast(pa.int64()), POSTGRES_EPOCH_DAYS)
            array = pc.bit_wise_and(days, 0xFFFF_FFFF)  # int32 two's complement, 8 hex digits
        elif kind in (Kind.TIMESTAMP, Kind.TIMESTAMP_NTZ):
            micros = array.cast(pa.timestamp("us", tz=array.type.tz)).cast(pa.int64())
            array = pc.subtract(micros, POSTGRES_EPOCH_MICROS)
        elif kind in (Kind.STRING, Kind.BINARY):
            array = array.cast(column.type.arrow)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in columns])


def float_bits(array: pa.Array) -> pa.Array:
    """float32/float64 values as the int64 bits of their (exact) float64 value."""
    values = pc.fill_null(array.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    bits = values.view(np.int64).copy()
    bits[np.isnan(values)] = CANONICAL_NAN_BITS
    return pa.array(bits, pa.int64(), mask=array.is_null().to_numpy(zero_copy_only=False))


@dataclass(frozen=True)
class MonthDigest:
    """Per-bucket row counts and hash sums (mod 2^64) of one month on one side."""

    counts: tuple[int, ...]
    sums: tuple[int, ...]

    @classmethod
    def empty(cls, buckets: int) -> MonthDigest:
        return cls((0,) * buckets, (0,) * buckets)

    @classmethod
    def from_pairs(cls, buckets: int, rows: list[tuple[int, int, int]]) -> MonthDigest:
        """From (bucket, count, sum) rows, as a GROUP BY returns them."""
        counts, sums = [0] * buckets, [0] * buckets
        for bucket, count, total in rows:
            counts[bucket] = int(count)
            sums[bucket] = int(total) & _MASK64
        return cls(tuple(counts), tuple(sums))

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @classmethod
    def parse(cls, text: str) -> MonthDigest:
        """The one-bucket digest printed by `hex` (as recorded in sync state)."""
        version, rows, total = text.split(":")
        if version != CONTRACT_VERSION:
            raise ValueError(f"digest of contract {version}, expected {CONTRACT_VERSION}")
        return cls((int(rows),), (int(total, 16),))

    @property
    def hex(self) -> str:
        total = sum(self.sums) & _MASK64
        return f"{CONTRACT_VERSION}:{self.rows}:{total:016x}"

    def differing_buckets(self, other: MonthDigest) -> list[int]:
        return [
            b
            for b in range(len(self.counts))
            if (self.counts[b], self.sums[b]) != (other.counts[b], other.sums[b])
        ]


class DigestAccumulator:
    """Folds batches of (bucket, row hash) into a `MonthDigest` without a per-row loop."""

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.counts = np.zeros(buckets, dtype=np.int64)
        self.sums = np.zeros(buckets, dtype=np.uint64)

    def add(self, buckets: npt.NDArray[np.uint64], hashes: npt.NDArray[np.uint64]) -> None:
        index = buckets.astype(np.intp)
        self.counts += np.bincount(index, minlength=len(self.counts))
        np.add.at(self.sums, index, hashes)  # uint64 addition wraps: the sum is mod 2^64

    def result(self) -> MonthDigest:
        return MonthDigest(tuple(int(c) for c in self.counts), tuple(int(s) for s in self.sums))
