"""Which rows differ, and how: a month narrowed to differing buckets, then to keys and values.

`reconciler.localize` finds the rows of the differing buckets on both sides (two passes,
memory bounded by those rows); here they are matched by key as multisets, so each differing key
is reported as what it is: only in Delta, only in Postgres, duplicated (with the copies on each
side), or changed (with each differing column's Delta and Postgres values, rendered as the
column's type). Totals always count everything; `limit` only limits what is listed; `output`
writes every difference to Parquet or CSV.
"""

from __future__ import annotations

import csv
import enum
import logging
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from reconciler.check import open_snapshot_transaction
from reconciler.localize import (
    Localizer,
    PassOptions,
    Scalar,
    SideRow,
    buckets_for,
    chunks_of,
    side_rows,
)
from reconciler.sides import PostgresSide, QueryLimits
from replicator.config import Settings, load_settings
from replicator.contract import verify_server_hash
from replicator.delta import ChangeKind, DeltaTableReader
from replicator.errors import DeltaError, InputError, ReplicationError
from replicator.month import Month
from replicator.postgres import Database, Session
from replicator.schema import TableSchema, postgres_columns, reconcile_schemas
from replicator.syncstate import SyncState, read_sync_state
from replicator.yearmonth import YearMonth

if TYPE_CHECKING:
    import pandas

logger = logging.getLogger(__name__)


class Kind(enum.StrEnum):
    """How one key differs."""

    ONLY_IN_DELTA = "only_in_delta"
    ONLY_IN_POSTGRES = "only_in_postgres"
    DUPLICATED = "duplicated"  # a different number of copies on each side
    CHANGED = "changed"  # the same key, other values

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Kind.ONLY_IN_DELTA: "only in Delta",
    Kind.ONLY_IN_POSTGRES: "only in Postgres",
    Kind.DUPLICATED: "duplicated",
    Kind.CHANGED: "changed",
}


def text_of(value: Scalar) -> str | None:
    """A JSON value as the text a CSV cell or a terminal shows."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


@dataclass(frozen=True)
class ColumnDifference:
    column: str
    delta: Scalar
    postgres: Scalar


@dataclass(frozen=True)
class Difference:
    """One differing key."""

    kind: Kind
    key: dict[str, Scalar]
    delta_copies: int
    postgres_copies: int
    columns: tuple[ColumnDifference, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        if self.kind is Kind.CHANGED:
            return {
                "key": self.key,
                "columns": [c.column for c in self.columns],
                "values": {
                    c.column: {"delta": c.delta, "postgres": c.postgres} for c in self.columns
                },
            }
        if self.kind is Kind.DUPLICATED:
            return {
                "key": self.key,
                "delta_copies": self.delta_copies,
                "postgres_copies": self.postgres_copies,
            }
        return dict(self.key)

    def records(self) -> Iterator[dict[str, Any]]:
        """The rows of the `--output` file: one per differing column, or one for the key."""
        base = {
            **{name: text_of(value) for name, value in self.key.items()},
            "kind": str(self.kind),
            "delta_copies": self.delta_copies,
            "postgres_copies": self.postgres_copies,
        }
        if not self.columns:
            yield {**base, "column": None, "delta_value": None, "postgres_value": None}
        for change in self.columns:
            yield {
                **base,
                "column": change.column,
                "delta_value": text_of(change.delta),
                "postgres_value": text_of(change.postgres),
            }


@dataclass
class DiffResult:
    table: str
    year_month: str
    delta_version: int
    compared_with: str  # which Delta snapshot Postgres was compared with, in words
    key_columns: tuple[str, ...] = ()
    listed: list[Difference] = field(default_factory=list)
    totals: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))
    limit: int | None = None

    @property
    def found(self) -> int:
        return sum(self.totals.values())

    @property
    def truncated(self) -> bool:
        return len(self.listed) < self.found

    def add(self, difference: Difference) -> None:
        self.totals[difference.kind] += 1
        if self.limit is None or len(self.listed) < self.limit:
            self.listed.append(difference)

    def of_kind(self, kind: Kind) -> list[Difference]:
        return [d for d in self.listed if d.kind == kind]

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "year_month": self.year_month,
            "delta_version": self.delta_version,
            "compared_with": self.compared_with,
            **{str(kind): [d.as_dict() for d in self.of_kind(kind)] for kind in Kind},
            "totals": {str(kind): count for kind, count in self.totals.items()},
            "truncated": self.truncated,
        }

    def records(self) -> list[dict[str, Any]]:
        return [record for d in self.listed for record in d.records()]

    def to_pandas(self) -> pandas.DataFrame:
        """Every listed difference as a DataFrame, one row per differing column (or per key):
        the key columns, `kind`, `column`, `delta_value`, `postgres_value` and the copies."""
        import pandas

        columns = [
            *self.key_columns,
            "kind",
            "column",
            "delta_value",
            "postgres_value",
            "delta_copies",
            "postgres_copies",
        ]
        return pandas.DataFrame(self.records(), columns=columns)


class DiffWriter:
    """Every difference, unlimited, to a Parquet or CSV file (by extension), as it is found."""

    def __init__(self, path: Path, key_columns: tuple[str, ...]) -> None:
        suffix = path.suffix.lower()
        if suffix not in (".parquet", ".csv"):
            raise InputError(f"--output must end in .parquet or .csv, got {path.name!r}")
        self.path, self.suffix = path, suffix
        names = [*key_columns, "kind", "column", "delta_value", "postgres_value"]
        self.schema = pa.schema(
            [pa.field(n, pa.string()) for n in names]
            + [pa.field("delta_copies", pa.int64()), pa.field("postgres_copies", pa.int64())]
        )
        self.rows = 0
        self._pending: list[dict[str, Any]] = []
        self._parquet: pq.ParquetWriter | None = None
        self._csv: Any = None
        self._closed = False

    def add(self, difference: Difference) -> None:
        self._pending.extend(difference.records())
        if len(self._pending) >= 10_000:
            self._flush()

    def _flush(self) -> None:
        if self.suffix == ".parquet":
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, self.schema)
            self._parquet.write_table(pa.Table.from_pylist(self._pending, schema=self.schema))
        else:
            if self._csv is None:
                handle = self.path.open("w", newline="", encoding="utf-8")
                self._csv = (handle, csv.DictWriter(handle, fieldnames=self.schema.names))
                self._csv[1].writeheader()
            self._csv[1].writerows(self._pending)
        self.rows += len(self._pending)
        self._pending = []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._flush()
        if self._parquet is not None:
            self._parquet.close()
        if self._csv is not None:
            self._csv[0].close()

    def discard(self) -> None:
        """Closes and removes what was written (a diff started again against another version)."""
        self._pending = []
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Against:
    """The Delta snapshot Postgres is compared with, and how to say which it is."""

    snapshot: DeltaTableReader
    words: str


class Differ:
    """Diffs months of configured tables against one database."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def diff(
        self, month: Month, *, limit: int | None = 100, output: Path | None = None
    ) -> DiffResult:
        """Differences between Postgres and the Delta snapshot it should hold: the synced
        version while Delta's later changes are pending and it can still be read, else the
        latest version."""
        if limit is not None and limit < 1:
            raise InputError("--limit must be at least 1")
        writer = DiffWriter(output, month.spec.key_columns) if output is not None else None
        latest = DeltaTableReader(
            month.spec, self.settings.table_uri(month.spec), self.settings.delta.storage_options
        )
        try:
            with self.db.session() as conn:
                limits = QueryLimits.of(self.settings.digest)
                open_snapshot_transaction(conn, month.spec, limits)
                pg_columns = postgres_columns(conn, month.spec)
                state = read_sync_state(conn, month)
                against = self._snapshot(latest, state, month, pg_columns)
                result = DiffResult(
                    month.table,
                    month.ym,
                    against.snapshot.version,
                    against.words,
                    month.spec.key_columns,
                    limit=limit,
                )
                try:
                    return self._diff(conn, month, against.snapshot, result, writer)
                except DeltaError:
                    if against.snapshot is latest:
                        raise
                # The synced version's files are gone (vacuumed): the latest version instead.
                result = DiffResult(
                    month.table,
                    month.ym,
                    latest.version,
                    f"Delta version {latest.version} (the latest: the files of the synced "
                    f"version {against.snapshot.version} were vacuumed)",
                    month.spec.key_columns,
                    limit=limit,
                )
                if writer is not None:
                    writer.discard()
                    writer = DiffWriter(writer.path, month.spec.key_columns)
                return self._diff(conn, month, latest, result, writer)
        finally:
            if writer is not None:
                writer.close()

    def _diff(
        self,
        conn: Session,
        month: Month,
        snapshot: DeltaTableReader,
        result: DiffResult,
        writer: DiffWriter | None,
    ) -> DiffResult:
        schema = reconcile_schemas(
            month.spec, snapshot.columns(), postgres_columns(conn, month.spec)
        )
        expected = snapshot.month_row_count(month.year_month)
        if expected is None or expected == 0:
            expected = max(expected or 0, PostgresSide(conn, schema, month).count())
        if not snapshot.has_month(month.year_month) and expected == 0:
            raise InputError(f"{month}: the month is neither in Delta nor in Postgres")
        verify_server_hash(conn)
        buckets = buckets_for(expected, self.settings.digest.buckets)
        options = PassOptions(
            self.settings.postgres.batch_rows,
            self.settings.digest.delta_workers,
            QueryLimits.of(self.settings.digest),
        )
        exported = str(conn.scalar("SELECT pg_catalog.pg_export_snapshot()"))
        with tempfile.TemporaryDirectory(prefix="reconciler-diff-") as spill:
            located = Localizer(schema, month, options, Path(spill))
            with ThreadPoolExecutor(max_workers=1) as pool:
                on_delta = pool.submit(located.delta_pass, snapshot, buckets)
                postgres = located.postgres_pass(self.db, exported, buckets)
                delta = on_delta.result()
            chunks = chunks_of(delta.differing_buckets(postgres), postgres, delta)
            if chunks:
                located.keep_delta_rows(snapshot, buckets, chunks)
            with self.db.adbc_in_snapshot(exported) as session:
                for index, chunk in enumerate(chunks):
                    found = compare_rows(
                        schema,
                        iter(side_rows(located.delta_rows(index), schema)),
                        iter(side_rows(located.postgres_rows(session, buckets, chunk), schema)),
                    )
                    for difference in found:
                        result.add(difference)
                        if writer is not None:
                            writer.add(difference)
        return result

    def _snapshot(
        self,
        latest: DeltaTableReader,
        state: SyncState | None,
        month: Month,
        pg_columns: list[tuple[str, str, bool]],
    ) -> _Against:
        """The Delta snapshot to compare with, and how to say which it is."""
        if state is None or state.delta_version is None:
            return _Against(latest, f"Delta version {latest.version} (the latest; never synced)")
        change = latest.month_change(month.year_month, state.since())
        if change.kind is ChangeKind.CHANGED:
            held = latest.loadable_version(state.delta_version)
            if held is not None:
                try:
                    reconcile_schemas(latest.spec, held.columns(), pg_columns)
                    return _Against(
                        held, f"Delta version {held.version} (the synced one; Delta changed since)"
                    )
                except ReplicationError:
                    pass
            return _Against(
                latest,
                f"Delta version {latest.version} (the latest: the synced version "
                f"{state.delta_version} can no longer be read as Postgres holds it)",
            )
        if change.kind is ChangeKind.UNKNOWN:
            return _Against(latest, f"Delta version {latest.version} (the latest; {change.reason})")
        return _Against(latest, f"Delta version {latest.version} (unchanged since the sync)")


def compare_rows(
    schema: TableSchema, delta: Iterator[SideRow], postgres: Iterator[SideRow]
) -> Iterator[Difference]:
    """The differences between two multisets of rows of the same buckets, key by key."""
    columns = schema.value_columns
    position = {c.name: i for i, c in enumerate(columns)}
    key_positions = [position[name] for name in schema.spec.key_columns]  # the configured order
    key_columns = [columns[i] for i in key_positions]

    def key_of(row: SideRow) -> tuple[Scalar, ...]:
        return tuple(row.values[i] for i in key_positions)

    by_key: dict[tuple[Scalar, ...], tuple[list[SideRow], list[SideRow]]]
    by_key = defaultdict(lambda: ([], []))
    for row in delta:
        by_key[key_of(row)][0].append(row)
    for row in postgres:
        by_key[key_of(row)][1].append(row)
    for group in sorted(by_key, key=lambda k: tuple(text_of(v) or "" for v in k)):
        in_delta, in_postgres = by_key[group]
        key = {c.name: v for c, v in zip(key_columns, group, strict=True)}
        copies = (len(in_delta), len(in_postgres))
        unmatched_delta = list(in_delta)
        unmatched_postgres = list(in_postgres)
        for row in in_delta:
            match = next((p for p in unmatched_postgres if p.row_hash == row.row_hash), None)
            if match is not None:
                unmatched_delta.remove(row)
                unmatched_postgres.remove(match)
        if not unmatched_delta and not unmatched_postgres:
            continue  # every row has its twin: the bucket differed elsewhere
        if not in_postgres:
            yield Difference(Kind.ONLY_IN_DELTA, key, *copies)
        elif not in_delta:
            yield Difference(Kind.ONLY_IN_POSTGRES, key, *copies)
        elif copies[0] != copies[1]:
            yield Difference(Kind.DUPLICATED, key, *copies)
        for d, p in zip(unmatched_delta, unmatched_postgres, strict=False):
            changed = tuple(
                ColumnDifference(c.name, a, b)
                for c, a, b, fa, fb in zip(
                    columns, d.values, p.values, d.fields, p.fields, strict=True
                )
                if fa != fb
            )
            if changed and copies[0] == copies[1]:
                yield Difference(Kind.CHANGED, key, *copies, columns=changed)


def diff_month(
    table: str,
    year_month: str | YearMonth,
    *,
    settings: Settings | None = None,
    limit: int | None = None,
    output: str | Path | None = None,
) -> DiffResult:
    """The differences of one month of one configured table (settings from the environment by
    default), all of them unless `limit`; for notebooks: `diff_month(...).to_pandas()`."""
    settings = settings or load_settings()
    month = year_month if isinstance(year_month, YearMonth) else YearMonth.parse(year_month)
    differ = Differ(Database.for_settings(settings, "reconciler-diff"), settings)
    return differ.diff(
        Month.of(settings.table(table), month), limit=limit, output=Path(output) if output else None
    )


__all__ = [
    "DiffResult",
    "Differ",
    "Difference",
    "Kind",
    "diff_month",
]
