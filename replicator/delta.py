"""Reading one month of a Delta table at a pinned version, in bounded batches.

A `DeltaTableReader` is one table pinned at one Delta version; everything that reads Delta goes
through it, so errors come out as `DeltaError` with a message that says which table and version
failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import DeltaError as _DeltaLibError
from deltalake.exceptions import TableNotFoundError

from replicator.config import TableSpec
from replicator.errors import DeltaError
from replicator.schema import PARTITION_COLUMN, Column, delta_columns
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonthFile:
    path: str
    num_records: int | None
    modification_time_ms: int


class DeltaTableReader:
    """An opened Delta table pinned at one version."""

    def __init__(
        self,
        spec: TableSpec,
        uri: str,
        storage_options: Mapping[str, str],
        version: int | None = None,
    ) -> None:
        self.spec = spec
        self.uri = uri
        self._storage_options = dict(storage_options)
        try:
            self.table = DeltaTable(
                uri, version=version, storage_options=self._storage_options or None
            )
        except TableNotFoundError:
            raise DeltaError(f"table {spec.name}: no Delta table at {uri}") from None
        except (_DeltaLibError, OSError, ValueError) as exc:
            what = f"version {version}" if version is not None else "latest version"
            raise DeltaError(f"table {spec.name}: cannot load {what} of {uri}: {exc}") from None
        self.version: int = self.table.version()
        self._files: dict[str, list[MonthFile]] | None = None

    def at_version(self, version: int) -> DeltaTableReader:
        if version == self.version:
            return self
        return DeltaTableReader(self.spec, self.uri, self._storage_options, version)

    def columns(self) -> list[Column]:
        return delta_columns(self.table.schema())

    def _load_files(self) -> dict[str, list[MonthFile]]:
        if self._files is None:
            try:
                actions = pa.table(self.table.get_add_actions(flatten=True))
            except _DeltaLibError as exc:
                raise DeltaError(f"table {self.spec.name}: cannot list files: {exc}") from None
            column = f"partition.{PARTITION_COLUMN}"
            if column not in actions.column_names:
                raise DeltaError(
                    f"table {self.spec.name}: Delta table is not partitioned by {PARTITION_COLUMN}"
                )
            files: dict[str, list[MonthFile]] = {}
            records = (
                actions.column("num_records").to_pylist()
                if "num_records" in actions.column_names
                else [None] * actions.num_rows
            )
            for path, month, count, mtime in zip(
                actions.column("path").to_pylist(),
                actions.column(column).to_pylist(),
                records,
                actions.column("modification_time").to_pylist(),
                strict=True,
            ):
                files.setdefault(str(month), []).append(MonthFile(path, count, int(mtime)))
            self._files = files
        return self._files

    def months(self) -> list[str]:
        """Partition values present at this version (not validated as months)."""
        return sorted(self._load_files())

    def month_files(self, year_month: YearMonth) -> list[MonthFile]:
        return self._load_files().get(str(year_month), [])

    def has_month(self, year_month: YearMonth) -> bool:
        return bool(self.month_files(year_month))

    def month_row_count(self, year_month: YearMonth) -> int | None:
        """Rows of the month from the log's file statistics, or None when they are absent."""
        counts = [f.num_records for f in self.month_files(year_month)]
        if any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    def scan_month(
        self, year_month: YearMonth, columns: list[str], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """The month's rows in batches of about `batch_rows`; memory stays bounded.

        delta-rs's DataFusion engine streams the scan (deletion vectors and column mapping
        included); its small batches are gathered up to `batch_rows` rows.
        """
        select = ", ".join(quote_identifier(c) for c in columns)
        # The month is a validated YearMonth (digits and one dash), safe as a literal here.
        query = f"SELECT {select} FROM month_source WHERE year_month = '{year_month}'"  # noqa: S608
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        try:
            stream = QueryBuilder().register("month_source", self.table).execute(query)
            for batch in pa.RecordBatchReader.from_stream(stream):
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= batch_rows:
                    yield _concat(pending)
                    pending, pending_rows = [], 0
            if pending_rows:
                yield _concat(pending)
        except Exception as exc:  # delta-rs raises several unrelated types for unreadable files
            raise DeltaError(
                f"table {self.spec.name}: cannot read {year_month} at version {self.version}: "
                f"{exc} (was this version vacuumed?)"
            ) from None


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_PLAIN = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch of plain Arrow types (DataFusion hands out string views in small batches)."""
    batch = (
        batches[0]
        if len(batches) == 1
        else pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
    )
    if any(f.type in _PLAIN for f in batch.schema):
        schema = pa.schema([f.with_type(_PLAIN.get(f.type, f.type)) for f in batch.schema])
        batch = batch.cast(schema)
    return batch
