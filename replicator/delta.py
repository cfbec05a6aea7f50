"""Reading Delta tables: one table pinned at one version, its months as logical files, whether a
month changed since a sync (`replicator.deltalog`), and the month's rows in batches.

A month's content is its set of *logical files*: a data file's path plus the deletion vector
(DV) that hides some of its rows (PROTOCOL.md, "Add File and Remove File"). Its row count is the
files' `numRecords` minus the rows their DVs hide. When delta-rs cannot list the table's DVs
(a file with a DV but no `numRecords` makes it refuse the whole table), the month's rows are
counted by delta-rs's own scan instead, which reads such a file fine, and its file set can no
longer vouch for the content: the log alone decides (see `month_change`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import DeltaError as _DeltaLibError
from deltalake.exceptions import TableNotFoundError
from deltalake.fs import DeltaStorageHandler

from replicator.config import TableSpec
from replicator.deltalog import (
    COMMITS,
    ChangeKind,
    CommitSummary,
    MonthChange,
    Since,
    read_identity,
    summarize,
)
from replicator.errors import DeltaError, ReplicationError
from replicator.schema import PARTITION_COLUMN, Column, datafusion_identifier, delta_columns
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)

EMPTY_MONTH = "empty"  # the fingerprint of a month without files
PARTIAL = "partial:"  # a fingerprint made without the files' deletion vectors

__all__ = ["ChangeKind", "DeltaTableReader", "LogicalFile", "MonthChange", "Since"]


@dataclass(frozen=True)
class LogicalFile:
    """One data file of a month, with what its deletion vector hides."""

    path: str
    num_records: int | None  # rows in the data file (its statistics), None when absent
    modification_time_ms: int
    deleted: int = 0  # rows the deletion vector hides (its cardinality)
    deletion_vector: str | None = None  # identity of the DV's content; None: no DV

    @property
    def rows(self) -> int | None:
        return None if self.num_records is None else self.num_records - self.deleted


def month_fingerprint(files: list[LogicalFile], *, partial: bool = False) -> str:
    """The identity of a month's logical file set: equal fingerprints, equal content. A partial
    one (the DVs could not be read) vouches for nothing (see `month_change`)."""
    if not files:
        return EMPTY_MONTH
    lines = sorted(f"{f.path}\0{f.deletion_vector or ''}" for f in files)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]
    return PARTIAL + digest if partial else digest


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
        self.table = _open(spec, uri, self._storage_options, version)
        try:
            self.version: int = self.table.version()
            metadata = self.table.metadata()
            self.table_id: str = str(metadata.id)
            self.identity = read_identity(
                self.table.schema().to_json(),
                list(metadata.partition_columns or []),
                dict(metadata.configuration or {}),
            )
            protocol = self.table.protocol()
        except (_DeltaLibError, OSError, ValueError) as exc:
            raise DeltaError(
                f"table {spec.name}: cannot read {uri}: {storage_failure(exc)}"
            ) from None
        self._has_deletion_vectors = "deletionVectors" in (protocol.reader_features or [])
        self._dvs_readable = True
        self._files: dict[str, list[LogicalFile]] | None = None
        self._counted: dict[str, int] = {}
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

    def _partition_keys(self) -> tuple[str, ...]:
        """The keys `year_month` may have in an action's partitionValues (column mapping
        stores the physical name)."""
        for field in self.table.schema().fields:
            if field.name == PARTITION_COLUMN:
                physical = (field.metadata or {}).get("delta.columnMapping.physicalName")
                return (str(physical), PARTITION_COLUMN) if physical else (PARTITION_COLUMN,)
        return (PARTITION_COLUMN,)

    # -- the month's logical files ----------------------------------------------------------
    def _deletion_vectors(self) -> dict[str, tuple[int, str]] | None:
        """(rows hidden, identity of the DV's content) per relative path of a file with a DV;
        None when delta-rs cannot list them.

        delta-rs exposes the deletion vectors as keep-masks only (not their descriptors), so a
        DV is identified by the positions it hides: equal positions, equal logical file.
        """
        if not self._has_deletion_vectors:
            return {}
        root = self.table.table_uri.rstrip("/") + "/"
        found: dict[str, tuple[int, str]] = {}
        try:
            table = pa.table(self.table.deletion_vectors())
        except (_DeltaLibError, OSError) as exc:
            logger.warning(
                "table %s: delta-rs cannot list the deletion vectors (%s): months are counted "
                "by scanning them, and the Delta log alone tells whether they changed",
                self.spec.name,
                storage_failure(exc),
                extra={"table": self.spec.name},
            )
            return None
        for batch in table.to_batches():
            uris = batch.column("filepath").to_pylist()
            masks = batch.column("selection_vector")
            for index, uri in enumerate(uris):
                keep = masks[index].values.to_numpy(zero_copy_only=False)
                hidden = np.flatnonzero(~keep).astype("<u8")
                identity = hashlib.blake2b(hidden.tobytes(), digest_size=12).hexdigest()
                relative = urllib.parse.unquote(uri.removeprefix(root))
                found[relative] = (len(hidden), identity)
        return found

    def _load_files(self) -> dict[str, list[LogicalFile]]:
        if self._files is None:
            try:
                actions = pa.table(self.table.get_add_actions(flatten=True))
            except _DeltaLibError as exc:
                raise DeltaError(
                    f"table {self.spec.name}: cannot list files: {storage_failure(exc)}"
                ) from None
            column = f"partition.{PARTITION_COLUMN}"
            if column not in actions.column_names:
                raise DeltaError(
                    f"table {self.spec.name}: Delta table is not partitioned by {PARTITION_COLUMN}"
                )
            vectors = self._deletion_vectors()
            self._dvs_readable = vectors is not None
            records = (
                actions.column("num_records").to_pylist()
                if "num_records" in actions.column_names and vectors is not None
                else [None] * actions.num_rows  # unknown DVs: the counts are the scan's
            )
            files: dict[str, list[LogicalFile]] = {}
            for path, month, count, mtime in zip(
                actions.column("path").to_pylist(),
                actions.column(column).to_pylist(),
                records,
                actions.column("modification_time").to_pylist(),
                strict=True,
            ):
                deleted, dv = (vectors or {}).get(urllib.parse.unquote(path), (0, None))
                files.setdefault(str(month), []).append(
                    LogicalFile(path, count, int(mtime), deleted, dv)
                )
            self._files = files
        return self._files

    def months(self) -> list[str]:
        """Partition values present at this version (not validated as months)."""
        return sorted(self._load_files())

    def invalid_partitions(self) -> list[str]:
        """Partition values that are not months (`YYYY-MM`): their rows are in no month."""
        invalid = []
        for value in self.months():
            try:
                YearMonth.parse(value)
            except ValueError:
                invalid.append(value)
        return invalid

    def month_files(self, year_month: YearMonth) -> list[LogicalFile]:
        return self._load_files().get(str(year_month), [])

    def month_fingerprint(self, year_month: YearMonth) -> str:
        files = self.month_files(year_month)
        return month_fingerprint(files, partial=not self._dvs_readable)

    def month_row_count(self, year_month: YearMonth) -> int | None:
        """Logical rows of the month (numRecords minus what deletion vectors hide), from the
        log; when a file has no statistics, the scan's count if its DVs could not be listed
        (else None: a count query is the caller's to make)."""
        counts = [f.rows for f in self.month_files(year_month)]
        if not any(c is None for c in counts):
            return sum(c for c in counts if c is not None)
        if self._dvs_readable:
            return None
        return self.scan_count(year_month)

    def scan_count(self, year_month: YearMonth) -> int:
        """The month's logical rows as delta-rs's scan counts them (deletion vectors applied)."""
        key = str(year_month)
        if key not in self._counted:
            query = f"SELECT count(*) AS n FROM t WHERE year_month = '{year_month}'"  # noqa: S608
            try:
                stream = QueryBuilder().register("t", self.table).execute(query)
                table = pa.RecordBatchReader.from_stream(stream).read_all()
            except Exception as exc:  # delta-rs raises several unrelated types
                raise DeltaError(
                    f"table {self.spec.name}: cannot count {year_month} at version "
                    f"{self.version}: {_read_failure(exc)}"
                ) from None
            self._counted[key] = int(table.column(0)[0].as_py())
        return self._counted[key]

    def has_month(self, year_month: YearMonth) -> bool:
        """Whether the month has rows at this version (files whose rows are all hidden by
        deletion vectors do not count)."""
        if not self.month_files(year_month):
            return False
        rows = self.month_row_count(year_month)
        return True if rows is None else rows > 0

    def month_written_at(self, year_month: YearMonth) -> float | None:
        """When the oldest file of the month was written (epoch seconds), None if absent."""
        times = [f.modification_time_ms for f in self.month_files(year_month)]
        return min(times) / 1000.0 if times else None

    # -- what changed since a sync ------------------------------------------------------------
    def month_change(self, year_month: YearMonth, since: Since) -> MonthChange:
        """Whether the month's data changed after the sync `since` describes (see
        `replicator.deltalog` for what counts as an explanation)."""
        if since.table_id is not None and since.table_id != self.table_id:
            return MonthChange(
                ChangeKind.UNKNOWN,
                "the Delta table was recreated since the sync (its table id changed)",
            )
        if since.schema is not None and since.schema != self.identity:
            return MonthChange(
                ChangeKind.UNKNOWN,
                "the Delta metadata that maps files to rows changed since the sync (column "
                "mapping, physical names or types)",
            )
        current = self.month_fingerprint(year_month)
        trusted = not current.startswith(PARTIAL) and since.schema is not None
        if trusted and since.files == current:
            return MonthChange(ChangeKind.UNCHANGED)
        if since.version is None or since.version > self.version:
            return MonthChange(ChangeKind.UNKNOWN, "the synced version is not in this table")
        if since.commit_ms is not None:
            synced = self._commit(since.version, fresh=True)
            if synced is not None and synced.timestamp_ms != since.commit_ms:
                return MonthChange(
                    ChangeKind.UNKNOWN,
                    f"Delta version {since.version} was rewritten since the sync (its commit "
                    "timestamp differs)",
                )
        return self._walk(year_month, since, current)

    def _walk(self, year_month: YearMonth, since: Since, current: str) -> MonthChange:
        assert since.version is not None
        month, explained = str(year_month), False
        for commit_version in range(since.version + 1, self.version + 1):
            summary = self._commit(commit_version)
            if summary is None:
                return MonthChange(
                    ChangeKind.UNKNOWN,
                    f"the Delta log between version {since.version} and {self.version} was "
                    "cleaned up",
                )
            if summary.table_id is not None and summary.table_id != (
                since.table_id or self.table_id
            ):
                return MonthChange(
                    ChangeKind.UNKNOWN, f"the Delta table was replaced at version {commit_version}"
                )
            if summary.identity is not None and summary.identity != since.schema:
                return MonthChange(
                    ChangeKind.UNKNOWN,
                    f"a metaData action at version {commit_version} may change how the month's "
                    "files read",
                )
            if month in summary.data_changed or summary.unplaced:
                stamp = summary.timestamp_ms
                return MonthChange(
                    ChangeKind.CHANGED,
                    f"Delta changed the month at version {commit_version}",
                    commit_version,
                    stamp / 1000.0 if stamp is not None else self.month_written_at(year_month),
                )
            explained = explained or month in summary.rearranged
        if since.files != current and not explained and not current.startswith(PARTIAL):
            return MonthChange(
                ChangeKind.UNKNOWN,
                "the month's files differ from the sync's and no commit since explains it (a "
                "rewritten or lost commit?)",
            )
        return MonthChange(ChangeKind.UNCHANGED)

    def commit_timestamp(self, version: int) -> int | None:
        """The commitInfo timestamp of a version (recorded at sync to tell a rewrite)."""
        summary = self._commit(version, fresh=True)
        return None if summary is None else summary.timestamp_ms

    def _commit(self, version: int, *, fresh: bool = False) -> CommitSummary | None:
        """The summary of one commit file, or None when it no longer exists. `fresh` reads the
        file again even when cached (to tell a rewritten commit)."""
        key = (self.uri, self.table_id, version)
        cached = None if fresh else COMMITS.get(key)
        if cached is not None:
            return cached
        handler = DeltaStorageHandler(self.table.table_uri, self._storage_options or None)
        try:
            with handler.open_input_file(f"_delta_log/{version:020d}.json") as stream:
                text = stream.read().decode("utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DeltaError(
                f"table {self.spec.name}: cannot read the Delta log at version {version}: "
                f"{storage_failure(exc)}"
            ) from None
        summary = summarize(text, self._partition_keys())
        COMMITS.put(key, summary)
        return summary

    # -- rows --------------------------------------------------------------------------------
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
                + _read_failure(exc)
            ) from None


def _open(
    spec: TableSpec, uri: str, storage_options: dict[str, str], version: int | None
) -> DeltaTable:
    """The table at `version` (the latest by default), or a DeltaError that says what to do."""
    try:
        return DeltaTable(uri, version=version, storage_options=storage_options or None)
    except TableNotFoundError:
        if version is not None:
            raise DeltaError(
                f"table {spec.name}: version {version} of {uri} can no longer be loaded (its "
                "log was cleaned up or the table recreated)"
            ) from None
        raise DeltaError(
            f"table {spec.name}: no Delta table at {uri} (check SIGNALS_DELTA_ROOT or "
            "tables.delta_location)"
        ) from None
    except (_DeltaLibError, OSError, ValueError) as exc:
        if version is not None and "LogSegment end version" in str(exc):
            latest = _latest_version(uri, storage_options)
            raise DeltaError(
                f"table {spec.name}: Delta version {version} does not exist"
                + (f" (the latest is {latest})" if latest is not None else "")
            ) from None
        what = f"version {version}" if version is not None else "the latest version"
        raise DeltaError(
            f"table {spec.name}: cannot load {what} of {uri}: {storage_failure(exc)}"
        ) from None


def _latest_version(uri: str, storage_options: dict[str, str]) -> int | None:
    try:
        return int(DeltaTable(uri, storage_options=storage_options or None).version())
    except Exception:  # only for a message: what the latest is, if it can be told
        return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What the innermost cause of a storage failure usually means, and what to do.
_HINTS = (
    ("permission", "check the storage credentials and the identity's role on the container"),
    ("403", "check the storage credentials and the identity's role on the container"),
    ("401", "check the storage credentials"),
    ("timed out", "is the storage account reachable from here?"),
    ("connection refused", "is the storage endpoint right and reachable?"),
    ("dns", "is the storage account name right?"),
)


def storage_failure(exc: BaseException) -> str:
    """delta-rs's chain of causes (`Kernel error -> X ↳ cause ↳ cause ...`) as one line: what
    failed, and the innermost cause, which is the one that says what to fix, with a hint."""
    text = _ANSI.sub("", str(exc))
    parts = [" ".join(p.split()) for p in text.split("↳")]
    parts = [p for p in parts if p]
    if not parts:
        return type(exc).__name__
    head = parts[0].removeprefix("Kernel error -> ").strip()
    head = re.sub(r"^(Generic )?delta kernel error:\s*", "", head, flags=re.IGNORECASE)
    line = head if len(parts) == 1 else f"{head}: {parts[-1]}"
    lowered = line.lower()
    hint = next((h for key, h in _HINTS if key in lowered), None)
    return f"{line} ({hint})" if hint else line


_UNSUPPORTED = re.compile(r"Unsupported table features required: \[([^\]]*)\]")


def _read_failure(exc: Exception) -> str:
    """The first meaningful line of a scan failure, with what to do about it."""
    text = storage_failure(exc)
    unsupported = _UNSUPPORTED.search(" ".join(str(exc).split()))
    if unsupported:
        return (
            f"the table uses Delta feature(s) {unsupported.group(1)}, which the deltalake "
            "reader cannot read yet"
        )
    if "not found" in text.lower() or "no such file" in text.lower():
        return f"{text} (a file of this version was vacuumed?)"
    return text


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
