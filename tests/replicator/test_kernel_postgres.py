"""The contract kernel's row and field hashes equal what Postgres computes for the same values:
`hashtextextended(<contract SQL encoding> COLLATE "C", 0)` with the SQL of
`replicator.contract.POSTGRES`, for every type (the widest decimals too), NULLs, NaN, -0.0,
infinities, subnormals, dates and timestamps of years 1 to 9999, under several time zones."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from replicator.config import TableSpec
from replicator.contract import POSTGRES, as_signed, kernel, postgres_hash
from replicator.schema import Column, ColumnType, TableSchema
from tests.reconciler.test_hash_contract import decimals, doubles, singles, texts, timestamps

D = decimal.Decimal
WIDE = 10**38 - 1


def scaled(scale: int) -> st.SearchStrategy[decimal.Decimal]:
    """numeric(38, scale) values, exact (built from their digits, not through a context)."""
    edges = st.sampled_from([WIDE, -WIDE, 0, 1, -1, 2**64, -(2**64), 10**scale, -(10**scale)])
    unscaled = edges.filter(lambda v: abs(v) <= WIDE) | st.integers(-WIDE, WIDE)
    return unscaled.map(
        lambda v: D((1 if v < 0 else 0, tuple(int(c) for c in str(abs(v))), -scale))
    )


# name, Delta type, Arrow type of the Delta column, values
COLUMNS: list[tuple[str, str, pa.DataType, st.SearchStrategy[Any]]] = [
    ("s", "string", pa.string(), texts),
    ("ls", "string", pa.large_string(), texts),
    ("l", "long", pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    ("i", "integer", pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    ("sh", "short", pa.int16(), st.integers(-(2**15), 2**15 - 1)),
    ("by", "byte", pa.int8(), st.integers(-128, 127)),
    ("d", "double", pa.float64(), doubles),
    ("f", "float", pa.float32(), singles),
    ("b", "boolean", pa.bool_(), st.booleans()),
    ("dt", "date", pa.date32(), st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31))),
    (
        "ts",
        "timestamp",
        pa.timestamp("us", tz="UTC"),
        timestamps.map(lambda t: t.replace(tzinfo=dt.UTC)),
    ),
    ("tsn", "timestamp_ntz", pa.timestamp("us"), timestamps),
    ("dec", "decimal(18,6)", pa.decimal128(18, 6), decimals),
    ("d38", "decimal(38,0)", pa.decimal128(38, 0), scaled(0)),
    ("d3838", "decimal(38,38)", pa.decimal128(38, 38), scaled(38)),
    ("d3810", "decimal(38,10)", pa.decimal128(38, 10), scaled(10)),
    ("bin", "binary", pa.binary(), st.binary(max_size=40)),
    ("lbin", "binary", pa.large_binary(), st.binary(min_size=10, max_size=300)),
]
SCHEMA = TableSchema(
    TableSpec("kernel_values", ("s",)),
    tuple(Column(name, ColumnType.from_delta(t), True) for name, t, _, _ in COLUMNS),
)
ARROW = pa.schema([pa.field(name, arrow) for name, _, arrow, _ in COLUMNS])
VALUES = SCHEMA.value_columns  # in digest order (by name)

rows_strategy = st.lists(
    st.fixed_dictionaries({name: st.one_of(st.none(), values) for name, _, _, values in COLUMNS}),
    min_size=1,
    max_size=12,
)


@pytest.fixture
def values_table(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type.postgres))
        for c in SCHEMA.columns
    )
    pg.execute(sql.SQL("CREATE TEMP TABLE kernel_values (ord int, {})").format(definition))
    return pg


def postgres_hashes(
    conn: psycopg.Connection[Any], rows: list[dict[str, Any]]
) -> list[tuple[int, ...]]:
    conn.execute("TRUNCATE kernel_values")
    names = [c.name for c in SCHEMA.columns]
    insert = sql.SQL("INSERT INTO kernel_values (ord, {}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * (len(names) + 1)),
    )
    with conn.cursor() as cur:
        cur.executemany(insert, [(n, *(row[c] for c in names)) for n, row in enumerate(rows)])
    hashes = [postgres_hash(POSTGRES.row(VALUES))] + [
        postgres_hash(POSTGRES.field(c)) for c in VALUES
    ]
    query = sql.SQL("SELECT {} FROM kernel_values ORDER BY ord").format(
        sql.SQL(", ").join(sql.SQL(h) for h in hashes)
    )
    return [tuple(int(v) for v in row) for row in conn.execute(query).fetchall()]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=rows_strategy,
    offset=st.integers(0, 5),
    zone=st.sampled_from(["UTC", "Pacific/Chatham", "America/St_Johns", "Asia/Kathmandu"]),
)
def test_kernel_hashes_equal_postgres(
    values_table: psycopg.Connection[Any], rows: list[dict[str, Any]], offset: int, zone: str
) -> None:
    values_table.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(zone)))
    expected = postgres_hashes(values_table, rows)
    padding = [dict.fromkeys(ARROW.names)] * offset  # the batch is a slice at an odd offset
    batch = pa.RecordBatch.from_pylist(padding + rows, schema=ARROW).slice(offset)
    assert kernel.available()
    row_hashes = as_signed(kernel.row_hashes(batch, VALUES)).tolist()
    field_hashes = as_signed(kernel.field_hashes(batch, VALUES)).tolist()
    for n, row in enumerate(rows):
        assert row_hashes[n] == expected[n][0], (row, kernel.field_encodings(batch, VALUES)[n])
        assert tuple(field_hashes[n]) == expected[n][1:], row
