"""The canonical text encoding of a row (docs/hash-contract.md), for both engines.

`RULES` holds, per contract encoding, the payload expression in Postgres SQL, the same payload in
DataFusion SQL, the payload's fixed width (None: length-prefixed) and the Arrow-side preparation
DataFusion needs first. `Encoder` turns a column list into one SQL expression per engine; which
encoding a column uses comes from the type table (`replicator.schema.TYPES`). On the Delta side
the compiled kernel (`kernel.py`) computes the same encodings from Arrow buffers; the DataFusion
SQL is its fallback and the tests' reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from replicator.schema import Column, ColumnType, Encoding, datafusion_identifier

# rh2: a NULL boolean is N, as every NULL is (rh1 encoded it as f, the same as false).
CONTRACT_VERSION = "rh2"
CANONICAL_NAN_BITS = 0x7FF8_0000_0000_0000
POSTGRES_EPOCH_DAYS = 10_957  # 2000-01-01 in days since 1970-01-01
POSTGRES_EPOCH_MICROS = POSTGRES_EPOCH_DAYS * 86_400_000_000

Prepare = Callable[[pa.Array, ColumnType], pa.Array]


def float_bits(array: pa.Array, _: ColumnType | None = None) -> pa.Array:
    """float32/float64 values as the int64 bits of their (exact) float64 value, NaN canonical."""
    values = pc.fill_null(array.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    bits = values.view(np.int64).copy()
    bits[np.isnan(values)] = CANONICAL_NAN_BITS
    return pa.array(bits, pa.int64(), mask=array.is_null().to_numpy(zero_copy_only=False))


def _days_since_postgres_epoch(array: pa.Array, _: ColumnType) -> pa.Array:
    days = pc.subtract(array.cast(pa.int32()).cast(pa.int64()), POSTGRES_EPOCH_DAYS)
    return pc.bit_wise_and(days, 0xFFFF_FFFF)  # int32 two's complement, 8 hex digits


def _micros_since_postgres_epoch(array: pa.Array, _: ColumnType) -> pa.Array:
    micros = array.cast(pa.timestamp("us", tz=array.type.tz)).cast(pa.int64())
    return pc.subtract(micros, POSTGRES_EPOCH_MICROS)


def _plain(array: pa.Array, column_type: ColumnType) -> pa.Array:
    return array.cast(column_type.arrow)  # DataFusion hands out string and binary views


@dataclass(frozen=True)
class EncodingRule:
    postgres: str  # payload of a non-NULL value; {c} is the quoted column
    datafusion: str  # the same payload over a batch that `prepare` made
    width: int | None  # fixed payload width in characters; None: `<octet length>:<payload>`
    prepare: Prepare | None = None  # Arrow-side step DataFusion cannot do (reinterpret bits)


_PG_FLOAT = (
    "CASE WHEN {c} = 'NaN' THEN '7ff8000000000000' ELSE encode(float8send({c}::float8), 'hex') END"
)
_HEX16 = "lpad(to_hex({c}), 16, '0')"

RULES: dict[Encoding, EncodingRule] = {
    Encoding.TEXT: EncodingRule("{c}", "{c}", None, _plain),
    Encoding.BINARY: EncodingRule("encode({c}, 'hex')", "encode({c}, 'hex')", None, _plain),
    Encoding.DECIMAL: EncodingRule(
        "CASE WHEN strpos({c}::text, '.') > 0 THEN rtrim(rtrim({c}::text, '0'), '.')"
        " ELSE {c}::text END",
        "CASE WHEN strpos(CAST({c} AS VARCHAR), '.') > 0"
        " THEN rtrim(rtrim(CAST({c} AS VARCHAR), '0'), '.') ELSE CAST({c} AS VARCHAR) END",
        None,
    ),
    Encoding.INT64: EncodingRule(
        "encode(int8send({c}::bigint), 'hex')", "lpad(to_hex(CAST({c} AS BIGINT)), 16, '0')", 16
    ),
    Encoding.FLOAT64: EncodingRule(_PG_FLOAT, _HEX16, 16, float_bits),
    Encoding.BOOLEAN: EncodingRule(
        "CASE WHEN {c} THEN 't' WHEN NOT {c} THEN 'f' END",
        "CASE WHEN {c} THEN 't' WHEN NOT {c} THEN 'f' END",
        1,
    ),
    Encoding.DATE: EncodingRule(
        "encode(date_send({c}), 'hex')", "lpad(to_hex({c}), 8, '0')", 8, _days_since_postgres_epoch
    ),
    Encoding.TIMESTAMP: EncodingRule(
        "encode(timestamptz_send({c}), 'hex')", _HEX16, 16, _micros_since_postgres_epoch
    ),
    Encoding.TIMESTAMP_NTZ: EncodingRule(
        "encode(timestamp_send({c}), 'hex')", _HEX16, 16, _micros_since_postgres_epoch
    ),
}


def _postgres_identifier(name: str) -> str:
    return sql.Identifier(name).as_string(None)


@dataclass(frozen=True)
class Encoder:
    """Builds the canonical-encoding SQL expressions for one engine."""

    engine: str  # "postgres" or "datafusion": which payload of each rule
    length: str  # {p}: octet length of a payload, as text
    quote: Callable[[str], str]

    def field(self, column: Column) -> str:
        """NULL is `N`; a fixed-width value is its payload; any other value is
        `<octet length>:<payload>`. No field can run into the next."""
        rule = RULES[column.type.encoding]
        payload = getattr(rule, self.engine).format(c=self.quote(column.name))
        if rule.width is not None:
            return f"coalesce({payload}, 'N')"
        return f"coalesce({self.length.format(p=payload)} || ':' || {payload}, 'N')"

    def row(self, columns: tuple[Column, ...]) -> str:
        return " || ".join([f"'{CONTRACT_VERSION}'", *(self.field(c) for c in columns)])


POSTGRES = Encoder("postgres", "octet_length({p})::text", _postgres_identifier)
DATAFUSION = Encoder("datafusion", "CAST(octet_length({p}) AS VARCHAR)", datafusion_identifier)


def prepare_batch(batch: pa.RecordBatch, columns: tuple[Column, ...]) -> pa.RecordBatch:
    """The batch's `columns` made ready for the DataFusion payloads (see `EncodingRule`)."""
    arrays = []
    for column in columns:
        array = batch.column(column.name)
        prepare = RULES[column.type.encoding].prepare
        arrays.append(array if prepare is None else prepare(array, column.type))
    return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in columns])
