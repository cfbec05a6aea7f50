"""A month-partitioned table with a column of every supported type, for the contract tests."""

from __future__ import annotations

import psycopg
import pyarrow as pa

from replicator.config import TableSpec

SPEC = TableSpec("all_types", ("k_text", "k_int"))

ARROW = pa.schema(
    [
        pa.field("year_month", pa.string(), False),
        pa.field("k_text", pa.string(), False),
        pa.field("k_int", pa.int64(), False),
        pa.field("s", pa.string()),
        pa.field("l", pa.int64()),
        pa.field("i", pa.int32()),
        pa.field("sh", pa.int16()),
        pa.field("by", pa.int8()),
        pa.field("d", pa.float64()),
        pa.field("f", pa.float32()),
        pa.field("b", pa.bool_()),
        pa.field("dt", pa.date32()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("tsn", pa.timestamp("us")),
        pa.field("dec", pa.decimal128(18, 6)),
        pa.field("bin", pa.binary()),
    ]
)

DDL = """
CREATE TABLE IF NOT EXISTS ranking.all_types (
    year_month text NOT NULL, k_text text NOT NULL, k_int bigint NOT NULL,
    s text, l bigint, i integer, sh smallint, "by" smallint, d double precision, f real,
    b boolean, dt date, ts timestamptz, tsn timestamp, "dec" numeric(18,6), bin bytea
);
CREATE INDEX IF NOT EXISTS all_types_month ON ranking.all_types (year_month);
"""


def create(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(DDL)
    conn.execute("TRUNCATE ranking.all_types")
