"""Reading Delta tables: one table pinned at one version, its months, and their rows in batches.

A `DeltaTableReader` is one table pinned at one Delta version; everything that reads Delta goes
through it, so errors come out as `DeltaError` with a message that says which table and version
failed. It also answers whether a month changed after a given version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import DeltaError as _DeltaLibError
from deltalake.exceptions import TableNotFoundError

from replicator.config import TableSpec
from replicator.errors import DeltaError, ReplicationError
from replicator.schema import PARTITION_COLUMN, Column, datafusion_identifier, delta_columns
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonthFile:
    path: str
    num_records: int | None
    modification_time_ms: int


@dataclass(frozen=True)
class MonthChange:
    """Whether a month of the latest snapshot differs from the month at an older version."""

    changed: bool
    pending_since: float | None = None  # epoch seconds of the oldest change not in the old one

    def lag_seconds(self, now: float | None = None) -> float:
        if self.pending_since is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.pending_since)


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
        self._older: dict[int, DeltaTableReader | None] = {}

    def at_version(self, version: int) -> DeltaTableReader:
        if version == self.version:
            return self
        return DeltaTableReader(self.spec, self.uri, self._storage_options, version)

    def loadable_version(self, version: int) -> DeltaTableReader | None:
        """The table at `version`, or None when that version can no longer be loaded."""
        if version not in self._older:
            try:
                self._older[version] = self.at_version(version)
            except ReplicationError:
                self._older[version] = None
        return self._older[version]

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

    def month_written_at(self, year_month: YearMonth) -> float | None:
        """When the oldest file of the month was written (epoch seconds), None if absent."""
        times = [f.modification_time_ms for f in self.month_files(year_month)]
        return min(times) / 1000.0 if times else None

    def change_since(self, version: int, year_month: YearMonth) -> MonthChange:
        """How the month at this version differs from the month at `version` (older)."""
        held = self.loadable_version(version)
        held_paths = {f.path for f in held.month_files(year_month)} if held else set()
        files = self.month_files(year_month)
        pending = [f.modification_time_ms for f in files if f.path not in held_paths]
        changed = held is None or {f.path for f in files} != held_paths
        return MonthChange(changed, min(pending) / 1000.0 if pending else None)

    def scan_month(
        self, year_month: YearMonth, columns: list[str], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """The month's rows in batches of about `batch_rows`; memory stays bounded.

        delta-rs's DataFusion engine streams the scan (deletion vectors and column mapping
        included); its small batches are gathered up to `batch_rows` rows.
        """
        select = ", ".join(datafusion_identifier(c) for c in columns)
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
