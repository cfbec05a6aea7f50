"""Column types shared by Delta and Postgres, and the check that the two schemas line up.

`ColumnType` names the Delta primitive types SPEC supports; each maps to one Postgres type and
one Arrow type, so the writer, the digest and the diff all agree on what a column is.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from replicator.config import TableSpec
from replicator.errors import InputError

PARTITION_COLUMN = "year_month"


class Kind(enum.Enum):
    STRING = "string"
    LONG = "long"
    INTEGER = "integer"
    SHORT = "short"
    BYTE = "byte"
    DOUBLE = "double"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMP_NTZ = "timestamp_ntz"
    DECIMAL = "decimal"
    BINARY = "binary"


_DECIMAL = re.compile(r"decimal\((\d+),\s*(\d+)\)")


@dataclass(frozen=True)
class ColumnType:
    kind: Kind
    precision: int = 0
    scale: int = 0

    @classmethod
    def from_delta(cls, name: str) -> ColumnType:
        match = _DECIMAL.fullmatch(name)
        if match:
            return cls(Kind.DECIMAL, int(match.group(1)), int(match.group(2)))
        try:
            return cls(Kind(name))
        except ValueError:
            raise InputError(f"Delta type {name!r} is not supported") from None

    @property
    def postgres(self) -> str:
        """The type as Postgres's `format_type` spells it."""
        if self.kind is Kind.DECIMAL:
            return f"numeric({self.precision},{self.scale})"
        return _POSTGRES[self.kind]

    @property
    def arrow(self) -> pa.DataType:
        if self.kind is Kind.DECIMAL:
            return pa.decimal128(self.precision, self.scale)
        return _ARROW[self.kind]

    def __str__(self) -> str:
        if self.kind is Kind.DECIMAL:
            return f"decimal({self.precision},{self.scale})"
        return str(self.kind.value)


_POSTGRES: dict[Kind, str] = {
    Kind.STRING: "text",
    Kind.LONG: "bigint",
    Kind.INTEGER: "integer",
    Kind.SHORT: "smallint",
    Kind.BYTE: "smallint",  # Postgres has no one-byte integer
    Kind.DOUBLE: "double precision",
    Kind.FLOAT: "real",
    Kind.BOOLEAN: "boolean",
    Kind.DATE: "date",
    Kind.TIMESTAMP: "timestamp with time zone",
    Kind.TIMESTAMP_NTZ: "timestamp without time zone",
    Kind.BINARY: "bytea",
}
_ARROW: dict[Kind, pa.DataType] = {
    Kind.STRING: pa.string(),
    Kind.LONG: pa.int64(),
    Kind.INTEGER: pa.int32(),
    Kind.SHORT: pa.int16(),
    Kind.BYTE: pa.int16(),  # widened to match smallint for binary COPY
    Kind.DOUBLE: pa.float64(),
    Kind.FLOAT: pa.float32(),
    Kind.BOOLEAN: pa.bool_(),
    Kind.DATE: pa.date32(),
    Kind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    Kind.TIMESTAMP_NTZ: pa.timestamp("us"),
    Kind.BINARY: pa.binary(),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool


@dataclass(frozen=True)
class TableSchema:
    """The columns of one signal table as both sides agree on them (year_month first)."""

    spec: TableSpec
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def value_columns(self) -> tuple[Column, ...]:
        """Every column except the month, in name order: the order the digest encodes them in."""
        return tuple(
            sorted((c for c in self.columns if c.name != PARTITION_COLUMN), key=lambda c: c.name)
        )

    @property
    def key_columns(self) -> tuple[Column, ...]:
        by_name = {c.name: c for c in self.columns}
        return tuple(by_name[name] for name in self.spec.key_columns)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type.arrow, c.nullable) for c in self.columns])

    @property
    def qualified_table(self) -> sql.Identifier:
        return sql.Identifier(self.spec.postgres_schema, self.spec.postgres_table)


def delta_columns(delta_schema: Any) -> list[Column]:
    """Columns of a deltalake `Schema`; nested types are refused by name."""
    columns = []
    for fld in delta_schema.fields:
        type_name = getattr(fld.type, "type", None)
        if not isinstance(type_name, str):
            raise InputError(f"column {fld.name!r} has a nested Delta type, which is not supported")
        columns.append(Column(fld.name, ColumnType.from_delta(type_name), bool(fld.nullable)))
    return columns


def reconcile_schemas(
    spec: TableSpec, delta: list[Column], postgres: list[tuple[str, str, bool]]
) -> TableSchema:
    """The shared schema, or `InputError` naming every column that does not line up.

    `postgres` holds (name, format_type, nullable) for each column of the Postgres table.
    """
    where = f"table {spec.name}"
    if not postgres:
        raise InputError(
            f"{where}: Postgres table {spec.postgres_schema}.{spec.postgres_table} does not "
            "exist (run `reconciler migrate`)"
        )
    pg_types = {name: type_name for name, type_name, _ in postgres}
    problems = []
    for column in delta:
        if column.name not in pg_types:
            problems.append(f"column {column.name!r} is in Delta but not in Postgres")
        elif pg_types[column.name] != column.type.postgres:
            problems.append(
                f"column {column.name!r} is {column.type} in Delta, which needs Postgres "
                f"{column.type.postgres}, but Postgres has {pg_types[column.name]}"
            )
    delta_names = {c.name for c in delta}
    problems += [
        f"column {name!r} is in Postgres but not in Delta"
        for name, _, _ in postgres
        if name not in delta_names
    ]
    for name in (PARTITION_COLUMN, *spec.key_columns):
        if name not in delta_names:
            problems.append(f"required column {name!r} is missing from Delta")
    if problems:
        raise InputError(f"{where}: Delta and Postgres schemas differ: " + "; ".join(problems))
    order = {name: i for i, (name, _, _) in enumerate(postgres)}
    columns = sorted(delta, key=lambda c: order[c.name])
    return TableSchema(spec, tuple(columns))


_POSTGRES_COLUMNS = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def postgres_columns(conn: psycopg.Connection[Any], spec: TableSpec) -> list[tuple[str, str, bool]]:
    """(name, format_type, nullable) of each column of the table's Postgres side, in order."""
    rows = conn.execute(_POSTGRES_COLUMNS, (spec.postgres_schema, spec.postgres_table)).fetchall()
    return [(str(name), str(type_name), bool(nullable)) for name, type_name, nullable in rows]
