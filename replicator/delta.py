"""Reading Delta tables: one table pinned at one version, its months as logical files, whether a
month changed since a version (by the Delta protocol), and the month's rows in batches.

A month's content is its set of *logical files*: a data file's path plus the deletion vector
(DV) that hides some of its rows (PROTOCOL.md, "Add File and Remove File"). Its row count is the
files' `numRecords` minus the rows their DVs hide. Whether the month changed after a version is
read from the commits since that version: only `add`/`remove` actions with `dataChange: true`
change data; OPTIMIZE, Z-order and compaction commit `dataChange: false`. Where those commits
cannot be read (log cleaned up, table recreated), the answer is "unknown", never a guess.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import DeltaError as _DeltaLibError
from deltalake.exceptions import TableNotFoundError
from deltalake.fs import DeltaStorageHandler

from replicator.config import TableSpec
from replicator.errors import DeltaError, ReplicationError
from replicator.schema import PARTITION_COLUMN, Column, datafusion_identifier, delta_columns
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)

EMPTY_MONTH = "empty"  # the fingerprint of a month without files


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


class ChangeKind(enum.Enum):
    UNCHANGED = "unchanged"  # the month's data is what it was at the version
    CHANGED = "changed"  # a commit since the version changed the month's data
    UNKNOWN = "unknown"  # the commits since the version cannot be read: do not guess


@dataclass(frozen=True)
class MonthChange:
    """What happened to a month's data after a version, by the Delta protocol."""

    kind: ChangeKind
    reason: str = ""
    since_version: int | None = None  # the first version that changed the month's data
    pending_since: float | None = None  # when that happened (epoch seconds), for the lag

    @property
    def changed(self) -> bool:
        return self.kind is not ChangeKind.UNCHANGED

    def lag_seconds(self, now: float | None = None) -> float:
        if self.pending_since is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.pending_since)


@dataclass(frozen=True)
class CommitSummary:
    """What one commit did, as far as months are concerned (commits never change)."""

    timestamp_ms: int | None
    table_id: str | None  # the table id of a metaData action in the commit
    data_changed: frozenset[str]  # months whose data the commit changed
    unplaced: bool  # it changed data of a file whose month cannot be told


class _CommitCache:
    """Parsed commits by (table uri, table id, version); bounded, shared by every reader."""

    def __init__(self, size: int = 50_000) -> None:
        self._entries: OrderedDict[tuple[str, str, int], CommitSummary] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> CommitSummary | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, int], summary: CommitSummary) -> None:
        with self._lock:
            self._entries[key] = summary
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


COMMITS = _CommitCache()


def month_fingerprint(files: list[LogicalFile]) -> str:
    """The identity of a month's logical file set: equal fingerprints, equal content."""
    if not files:
        return EMPTY_MONTH
    lines = sorted(f"{f.path}\0{f.deletion_vector or ''}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


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
            self.version: int = self.table.version()
            self.table_id: str = str(self.table.metadata().id)
            protocol = self.table.protocol()
        except TableNotFoundError:
            if version is not None:
                raise DeltaError(
                    f"table {spec.name}: version {version} of {uri} can no longer be loaded "
                    "(its log was cleaned up or the table recreated)"
                ) from None
            raise DeltaError(f"table {spec.name}: no Delta table at {uri}") from None
        except (_DeltaLibError, OSError, ValueError) as exc:
            what = f"version {version}" if version is not None else "latest version"
            raise DeltaError(
                f"table {spec.name}: cannot load {what} of {uri}: {storage_failure(exc)}"
            ) from None
        self._has_deletion_vectors = "deletionVectors" in (protocol.reader_features or [])
        self._files: dict[str, list[LogicalFile]] | None = None
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
    def _deletion_vectors(self) -> dict[str, tuple[int, str]]:
        """(rows hidden, identity of the DV's content) per relative path of a file with a DV.

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
            raise DeltaError(
                f"table {self.spec.name}: cannot read deletion vectors: {exc}"
            ) from None
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
                raise DeltaError(f"table {self.spec.name}: cannot list files: {exc}") from None
            column = f"partition.{PARTITION_COLUMN}"
            if column not in actions.column_names:
                raise DeltaError(
                    f"table {self.spec.name}: Delta table is not partitioned by {PARTITION_COLUMN}"
                )
            vectors = self._deletion_vectors()
            files: dict[str, list[LogicalFile]] = {}
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
                deleted, dv = vectors.get(urllib.parse.unquote(path), (0, None))
                files.setdefault(str(month), []).append(
                    LogicalFile(path, count, int(mtime), deleted, dv)
                )
            self._files = files
        return self._files

    def months(self) -> list[str]:
        """Partition values present at this version (not validated as months)."""
        return sorted(self._load_files())

    def month_files(self, year_month: YearMonth) -> list[LogicalFile]:
        return self._load_files().get(str(year_month), [])

    def month_fingerprint(self, year_month: YearMonth) -> str:
        return month_fingerprint(self.month_files(year_month))

    def month_row_count(self, year_month: YearMonth) -> int | None:
        """Logical rows of the month (numRecords minus what deletion vectors hide), from the
        log alone; None when a file has no statistics."""
        counts = [f.rows for f in self.month_files(year_month)]
        if any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    def has_month(self, year_month: YearMonth) -> bool:
        """Whether the month has rows at this version (files whose rows are all hidden by
        deletion vectors do not count)."""
        rows = self.month_row_count(year_month)
        return bool(self.month_files(year_month)) if rows is None else rows > 0

    def month_written_at(self, year_month: YearMonth) -> float | None:
        """When the oldest file of the month was written (epoch seconds), None if absent."""
        times = [f.modification_time_ms for f in self.month_files(year_month)]
        return min(times) / 1000.0 if times else None

    # -- what changed since a version -------------------------------------------------------
    def month_change(
        self,
        year_month: YearMonth,
        *,
        version: int | None,
        table_id: str | None = None,
        files: str | None = None,
    ) -> MonthChange:
        """Whether the month's data changed after `version` of the table `table_id`, whose
        month then had the logical file set `files` (a `month_fingerprint`)."""
        if table_id is not None and table_id != self.table_id:
            return MonthChange(
                ChangeKind.UNKNOWN,
                "the Delta table was recreated since the sync (its table id changed)",
            )
        if files is not None and files == self.month_fingerprint(year_month):
            return MonthChange(ChangeKind.UNCHANGED)
        if version is None or version > self.version:
            return MonthChange(ChangeKind.UNKNOWN, "the synced version is not in this table")
        month = str(year_month)
        for commit_version in range(version + 1, self.version + 1):
            summary = self._commit(commit_version)
            if summary is None:
                return MonthChange(
                    ChangeKind.UNKNOWN,
                    f"the Delta log between version {version} and {self.version} was cleaned up",
                )
            if summary.table_id is not None and summary.table_id != (table_id or self.table_id):
                return MonthChange(
                    ChangeKind.UNKNOWN, f"the Delta table was replaced at version {commit_version}"
                )
            if month in summary.data_changed or summary.unplaced:
                stamp = summary.timestamp_ms
                return MonthChange(
                    ChangeKind.CHANGED,
                    f"Delta changed the month at version {commit_version}",
                    commit_version,
                    stamp / 1000.0 if stamp is not None else self.month_written_at(year_month),
                )
        return MonthChange(ChangeKind.UNCHANGED)

    def _commit(self, version: int) -> CommitSummary | None:
        """The summary of one commit file, or None when it no longer exists."""
        key = (self.uri, self.table_id, version)
        cached = COMMITS.get(key)
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
                f"table {self.spec.name}: cannot read the Delta log at version {version}: {exc}"
            ) from None
        summary = _summarize(text, self._partition_keys())
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def storage_failure(exc: BaseException) -> str:
    """delta-rs's chain of causes (`Kernel error -> X ↳ cause ↳ cause ...`) as one line: what
    failed, and the innermost cause, which is the one that says what to fix."""
    text = _ANSI.sub("", str(exc))
    parts = [" ".join(p.split()) for p in text.split("↳")]
    parts = [p for p in parts if p]
    if not parts:
        return type(exc).__name__
    head = parts[0].removeprefix("Kernel error -> ").strip()
    if len(parts) == 1:
        return head
    return f"{head}: {parts[-1]}"


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


def _action_month(action: dict[str, object], partition_keys: tuple[str, ...]) -> str | None:
    values = action.get("partitionValues")
    if isinstance(values, dict):
        for key in partition_keys:
            if isinstance(values.get(key), str):
                return str(values[key])
    # A remove without extended file metadata: a Hive-style path still names the month.
    path = urllib.parse.unquote(str(action.get("path", "")))
    marker = f"{PARTITION_COLUMN}="
    for part in path.split("/"):
        if part.startswith(marker):
            return part[len(marker) :]
    return None


def _summarize(text: str, partition_keys: tuple[str, ...]) -> CommitSummary:
    timestamp: int | None = None
    table_id: str | None = None
    changed: set[str] = set()
    unplaced = False
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"]
            stamp = info.get("inCommitTimestamp", info.get("timestamp"))
            timestamp = int(stamp) if isinstance(stamp, int) else timestamp
        elif "metaData" in action:
            table_id = str(action["metaData"].get("id"))
        for kind in ("add", "remove"):
            file_action = action.get(kind)
            if isinstance(file_action, dict) and file_action.get("dataChange", True):
                month = _action_month(file_action, partition_keys)
                if month is None:
                    unplaced = True
                else:
                    changed.add(month)
    return CommitSummary(timestamp, table_id, frozenset(changed), unplaced)


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
