"""The contract's encodings and hash without a database: known answers from the docs' table and
from PostgreSQL's own `hashtextextended`, and digests that add up whatever the split."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pyarrow as pa
import pytest

from replicator.config import TableSpec
from replicator.contract import (
    DATAFUSION,
    POSTGRES,
    DeltaHasher,
    DigestAccumulator,
    MonthDigest,
    as_signed,
    hash_bytes_extended,
    prepare_batch,
)
from replicator.schema import Column, ColumnType, Kind, TableSchema

# (Delta type, Arrow value, the field as docs/hash-contract.md defines it)
FIELDS = [
    ("string", pa.array(["ab"]), "2:ab"),
    ("string", pa.array(["é"]), "2:é"),  # octets, not characters
    ("string", pa.array([""]), "0:"),
    ("string", pa.array([None], pa.string()), "N"),
    ("binary", pa.array([b"\x00\xff"]), "4:00ff"),
    ("decimal(10,2)", pa.array([decimal.Decimal("1.50")], pa.decimal128(10, 2)), "3:1.5"),
    ("decimal(10,2)", pa.array([decimal.Decimal("100.00")], pa.decimal128(10, 2)), "3:100"),
    ("long", pa.array([-1], pa.int64()), "ffffffffffffffff"),
    ("integer", pa.array([1], pa.int32()), "0000000000000001"),
    ("short", pa.array([-2], pa.int16()), "fffffffffffffffe"),
    ("byte", pa.array([127], pa.int8()), "000000000000007f"),
    ("double", pa.array([1.0]), "3ff0000000000000"),
    ("double", pa.array([-0.0]), "8000000000000000"),
    ("double", pa.array([float("nan")]), "7ff8000000000000"),
    ("float", pa.array([0.5], pa.float32()), "3fe0000000000000"),
    ("boolean", pa.array([True]), "t"),
    ("date", pa.array([dt.date(2000, 1, 2)]), "00000001"),
    ("date", pa.array([dt.date(1999, 12, 31)]), "ffffffff"),
    (
        "timestamp",
        pa.array([dt.datetime(2000, 1, 1, 0, 0, 1, tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC")),
        "00000000000f4240",
    ),
    (
        "timestamp_ntz",
        pa.array([dt.datetime(1999, 12, 31, 23, 59, 59, 999999)], pa.timestamp("us")),
        "ffffffffffffffff",
    ),
]


@pytest.mark.parametrize(("delta_type", "values", "expected"), FIELDS)
def test_datafusion_field_encoding(delta_type: str, values: pa.Array, expected: str) -> None:
    column = Column("c", ColumnType.from_delta(delta_type), True)
    spec = TableSpec("t", ("c",))
    hasher = DeltaHasher(TableSchema(spec, (column,)))
    batch = prepare_batch(pa.RecordBatch.from_arrays([values], names=["c"]), (column,))
    encoded = hasher.query(batch, f"SELECT {DATAFUSION.field(column)} AS f FROM b")
    assert encoded.column("f").to_pylist() == [expected]


def test_both_engines_encode_every_type() -> None:
    for kind in Kind:
        name = "decimal(5,1)" if kind is Kind.DECIMAL else kind.value
        column = Column("c", ColumnType.from_delta(name), True)
        for encoder in (POSTGRES, DATAFUSION):
            assert encoder.field(column).startswith("coalesce(")


# PostgreSQL 15: SELECT hashtextextended(s COLLATE "C", 0)
KNOWN_HASHES = [
    ("", -6939563903564495251),
    ("a", 3591986179850072241),
    ("abcdefghijkl", -7556637188122330412),  # exactly one 12-byte block
    ("abcdefghijklm", 8871624171452417744),
    ("rh1 known answer: é中\t", 5304620922534696326),
    ("x" * 100, -6927006773748011226),
]


def test_lookup3_matches_postgres() -> None:
    texts = pa.array([t for t, _ in KNOWN_HASHES])
    assert as_signed(hash_bytes_extended(texts)).tolist() == [h for _, h in KNOWN_HASHES]
    # Sliced and chunked input hashes the same.
    assert as_signed(hash_bytes_extended(texts.slice(2, 2))).tolist() == [
        KNOWN_HASHES[2][1],
        KNOWN_HASHES[3][1],
    ]


def test_digests_add_up_whatever_the_split() -> None:
    rng = np.random.default_rng(7)
    buckets = rng.integers(0, 16, 10_000).astype(np.uint64)
    hashes = rng.integers(0, 2**63, 10_000, dtype=np.int64).astype(np.uint64) * np.uint64(3)
    whole = DigestAccumulator(16)
    whole.add(buckets, hashes)
    pieces = DigestAccumulator(16)
    for part in np.array_split(np.arange(10_000), 7):
        pieces.add(buckets[part], hashes[part])
    assert whole.result() == pieces.result()
    one = MonthDigest.parse(whole.result().hex)
    assert (one.rows, one.hex) == (10_000, whole.result().hex)
