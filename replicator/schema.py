"""Column types shared by Delta and Postgres, and the check that the two schemas line up.

`TYPES` is the one table of facts about each supported Delta type: the Postgres type it maps to,
the Arrow type of that Postgres column (for binary COPY) and how the hash contract encodes its
values. The writer, the contract's encoders for both engines and the diff all read it.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from psycopg import sql

from replicator.config import TableSpec
from replicator.errors import InputError
from replicator.postgres import Session

PARTITION_COLUMN = "year_month"


class Kind(enum.Enum):
    """The Delta primitive types SPEC supports, named as Delta names them."""

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


class Encoding(enum.Enum):
    """How the hash contract encodes a value (docs/hash-contract.md, section 2)."""

    TEXT = "text"
    BINARY = "binary"
    DECIMAL = "decimal"
    INT64 = "int64"
    FLOAT64 = "float64"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMP_NTZ = "timestamp_ntz"


@dataclass(frozen=True)
class TypeFacts:
    postgres: str  # the Postgres type, as format_type spells it
    arrow: pa.DataType  # the Arrow type of that Postgres column, for binary COPY
    encoding: Encoding
    # Wider Postgres types that hold every value and that the contract encodes the same way:
    # a Postgres column widened (integer to bigint, real to double) is not a difference.
    wider: tuple[str, ...] = ()


TYPES: dict[Kind, TypeFacts] = {
    Kind.STRING: TypeFacts("text", pa.string(), Encoding.TEXT),
    Kind.LONG: TypeFacts("bigint", pa.int64(), Encoding.INT64),
    Kind.INTEGER: TypeFacts("integer", pa.int32(), Encoding.INT64, ("bigint",)),
    Kind.SHORT: TypeFacts("smallint", pa.int16(), Encoding.INT64, ("integer", "bigint")),
    # Postgres has no one-byte integer.
    Kind.BYTE: TypeFacts("smallint", pa.int16(), Encoding.INT64, ("integer", "bigint")),
    Kind.DOUBLE: TypeFacts("double precision", pa.float64(), Encoding.FLOAT64),
    Kind.FLOAT: TypeFacts("real", pa.float32(), Encoding.FLOAT64, ("double precision",)),
    Kind.BOOLEAN: TypeFacts("boolean", pa.bool_(), Encoding.BOOLEAN),
    Kind.DATE: TypeFacts("date", pa.date32(), Encoding.DATE),
    Kind.TIMESTAMP: TypeFacts(
        "timestamp with time zone", pa.timestamp("us", tz="UTC"), Encoding.TIMESTAMP
    ),
    Kind.TIMESTAMP_NTZ: TypeFacts(
        "timestamp without time zone", pa.timestamp("us"), Encoding.TIMESTAMP_NTZ
    ),
    # numeric(p,s) and decimal128(p,s) depend on the column: see ColumnType.
    Kind.DECIMAL: TypeFacts("numeric", pa.decimal128(38, 0), Encoding.DECIMAL),
    Kind.BINARY: TypeFacts("bytea", pa.binary(), Encoding.BINARY),
}

_DECIMAL = re.compile(r"decimal\((\d+),\s*(\d+)\)")
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")
# The Arrow type binary COPY writes for a Postgres column type.
_ARROW_OF_POSTGRES = {facts.postgres: facts.arrow for facts in TYPES.values()}


def arrow_of_postgres(postgres_type: str) -> pa.DataType:
    numeric = _NUMERIC.fullmatch(postgres_type)
    if numeric:
        return pa.decimal128(int(numeric.group(1)), int(numeric.group(2)))
    return _ARROW_OF_POSTGRES[postgres_type]


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
    def facts(self) -> TypeFacts:
        return TYPES[self.kind]

    @property
    def encoding(self) -> Encoding:
        return self.facts.encoding

    @property
    def postgres(self) -> str:
        """The Postgres type, as Postgres's `format_type` spells it."""
        if self.kind is Kind.DECIMAL:
            return f"numeric({self.precision},{self.scale})"
        return self.facts.postgres

    @property
    def arrow(self) -> pa.DataType:
        """The Arrow type of the Postgres column, as binary COPY expects it."""
        return arrow_of_postgres(self.postgres)

    def fits(self, postgres_type: str) -> bool:
        """Whether a Postgres column of that type holds this type's values, encoded alike."""
        return postgres_type == self.postgres or postgres_type in self.facts.wider

    def __str__(self) -> str:
        if self.kind is Kind.DECIMAL:
            return f"decimal({self.precision},{self.scale})"
        return str(self.kind.value)


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType  # the Delta type; it decides the contract encoding
    nullable: bool
    physical_name: str | None = None  # under Delta column mapping: the name in the files
    postgres_type: str = ""  # the Postgres column's type (default: the one type maps to)

    def __post_init__(self) -> None:
        if not self.postgres_type:
            object.__setattr__(self, "postgres_type", self.type.postgres)

    @property
    def content(self) -> str:
        """How the column enters a digest: its name and encoding (and its physical name)."""
        text = f"{self.name}:{self.type.encoding.value}"
        return f"{text}@{self.physical_name}" if self.physical_name else text


@dataclass(frozen=True)
class TableSchema:
    """The columns of one signal table as both sides agree on them (Postgres's order)."""

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
    def copy_schema(self) -> pa.Schema:
        """The Arrow schema binary COPY writes: each column as its Postgres type."""
        return pa.schema(
            [pa.field(c.name, arrow_of_postgres(c.postgres_type)) for c in self.columns]
        )

    @property
    def content_schema(self) -> str:
        """The columns a digest covers, as sync state records them: two digests compare only
        if this text (without physical names) is the same."""
        return ",".join(c.content for c in self.value_columns)

    def restricted_to(self, content_schema: str) -> TableSchema | None:
        """This schema cut down to the columns of an older content schema, or None when one of
        them is gone or encoded differently (then no digest under it can be recomputed)."""
        by_name = {c.name: c for c in self.columns}
        kept = [c for c in self.columns if c.name == PARTITION_COLUMN]
        for name, encoding, _ in parse_content_schema(content_schema):
            column = by_name.get(name)
            if column is None or column.type.encoding.value != encoding:
                return None
            kept.append(column)
        return TableSchema(self.spec, tuple(kept))

    @property
    def qualified_table(self) -> sql.Identifier:
        return sql.Identifier(self.spec.postgres_schema, self.spec.postgres_table)


def parse_content_schema(text: str) -> list[tuple[str, str, str | None]]:
    """(name, encoding, physical name) of each column of a recorded content schema."""
    columns = []
    for part in filter(None, text.split(",")):
        name_and_encoding, _, physical = part.partition("@")
        name, _, encoding = name_and_encoding.partition(":")
        columns.append((name, encoding, physical or None))
    return columns


def same_content(recorded: str | None, schema: TableSchema) -> bool:
    """Whether a digest recorded under `recorded` compares with one computed under `schema`."""
    if recorded is None:
        return False
    strip = [(n, e) for n, e, _ in parse_content_schema(recorded)]
    return strip == [(n, e) for n, e, _ in parse_content_schema(schema.content_schema)]


def datafusion_identifier(name: str) -> str:
    """A column name quoted for DataFusion SQL (Postgres SQL uses `psycopg.sql.Identifier`)."""
    return '"' + name.replace('"', '""') + '"'


def delta_columns(delta_schema: Any) -> list[Column]:
    """Columns of a deltalake `Schema`; nested types are refused by name."""
    columns = []
    for fld in delta_schema.fields:
        type_name = getattr(fld.type, "type", None)
        if not isinstance(type_name, str):
            raise InputError(f"column {fld.name!r} has a nested Delta type, which is not supported")
        physical = (fld.metadata or {}).get("delta.columnMapping.physicalName")
        columns.append(
            Column(
                fld.name,
                ColumnType.from_delta(type_name),
                bool(fld.nullable),
                str(physical) if physical else None,
            )
        )
    return columns


def reconcile_schemas(
    spec: TableSpec,
    delta: list[Column],
    postgres: list[tuple[str, str, bool]],
    *,
    recorded: str | None = None,
) -> TableSchema:
    """The shared schema, or `InputError` naming every column that does not line up, with the
    statement that would fix it.

    `postgres` holds (name, format_type, nullable) for each column of the Postgres table;
    `recorded` is a content schema recorded at an earlier sync, which names the Delta columns
    a column-mapping rename came from.
    """
    where = f"table {spec.name}"
    table = spec.qualified_name  # plain identifiers (checked in the configuration)
    if not postgres:
        raise InputError(
            f"{where}: Postgres table {spec.qualified_name} does not exist "
            "(run `reconciler migrate`)"
        )
    pg_types = {name: type_name for name, type_name, _ in postgres}
    delta_names = {c.name for c in delta}
    renamed = _renames(delta, recorded, set(pg_types) - delta_names)
    problems = []
    for column in delta:
        ident = sql.Identifier(column.name).as_string(None)
        if column.name in renamed:
            old = renamed[column.name]
            problems.append(
                f"column {old!r} was renamed to {column.name!r} in Delta (column mapping): run "
                f"`ALTER TABLE {table} RENAME COLUMN {sql.Identifier(old).as_string(None)} "
                f"TO {ident}`"
            )
        elif column.name not in pg_types:
            nullable = "nullable" if column.nullable else "not null"
            problems.append(
                f"column {column.name!r} ({column.type}, {nullable}) is in Delta but not in "
                f"Postgres: run `ALTER TABLE {table} ADD COLUMN {ident} {column.type.postgres}`"
            )
        elif not column.type.fits(pg_types[column.name]):
            problems.append(
                f"column {column.name!r} is {column.type} in Delta, which needs Postgres "
                f"{column.type.postgres}, but Postgres has {pg_types[column.name]}: run "
                f"`ALTER TABLE {table} ALTER COLUMN {ident} TYPE {column.type.postgres}`"
            )
    problems += [
        f"column {name!r} is in Postgres but not in Delta"
        for name, _, _ in postgres
        if name not in delta_names and name not in renamed.values()
    ]
    for name in (PARTITION_COLUMN, *spec.key_columns):
        if name not in delta_names:
            problems.append(f"required column {name!r} is missing from Delta")
    if problems:
        raise InputError(f"{where}: Delta and Postgres schemas differ: " + "; ".join(problems))
    order = {name: i for i, (name, _, _) in enumerate(postgres)}
    columns = sorted(
        (dataclasses.replace(c, postgres_type=pg_types[c.name]) for c in delta),
        key=lambda c: order[c.name],
    )
    return TableSchema(spec, tuple(columns))


def _renames(
    delta: list[Column], recorded: str | None, only_in_postgres: set[str]
) -> dict[str, str]:
    """New Delta name -> old name, for columns that kept their physical name (column mapping)
    but changed their logical name since `recorded`, where Postgres still has the old name."""
    if not recorded:
        return {}
    old_names = {physical: name for name, _, physical in parse_content_schema(recorded) if physical}
    return {
        column.name: old_names[column.physical_name]
        for column in delta
        if column.physical_name in old_names
        and old_names[column.physical_name] != column.name
        and old_names[column.physical_name] in only_in_postgres
    }


_POSTGRES_COLUMNS = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def postgres_columns(conn: Session, spec: TableSpec) -> list[tuple[str, str, bool]]:
    """(name, format_type, nullable) of each column of the table's Postgres side, in order."""
    rows = conn.execute(_POSTGRES_COLUMNS, (spec.postgres_schema, spec.postgres_table)).fetchall()
    return [(str(name), str(type_name), bool(nullable)) for name, type_name, nullable in rows]
