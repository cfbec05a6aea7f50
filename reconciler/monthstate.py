"""What the daemon knows of each month of each table, between cycles.

`MonthState` holds the last comparison's outcome, the metadata it was made from (so the planner
can tell whether anything changed since) and when the month's Postgres side and Delta side were
last re-digested; `MonthStates` is the collection, which follows the configuration (a table
removed on reload takes its months with it) and the retention window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from exporter.metrics import MonthView
from reconciler.check import TableCheck
from reconciler.findings import Finding
from reconciler.verdict import REPAIRABLE, Status
from replicator.delta import ChangeKind
from replicator.syncstate import SyncState

MonthKey = tuple[str, str]  # (table, YYYY-MM)


@dataclass(frozen=True)
class SyncAnchor:
    """The parts of a sync state row that identify one anchor: another sync, another anchor."""

    delta_version: int | None
    run_id: str | None
    synced_at: dt.datetime | None
    content_digest: str | None
    verified_at: dt.datetime | None = None

    @classmethod
    def of(cls, state: SyncState | None) -> SyncAnchor | None:
        if state is None:
            return None
        return cls(
            state.delta_version,
            state.run_id,
            state.synced_at,
            state.content_digest,
            state.verified_at,
        )


@dataclass(frozen=True)
class DeltaInputs:
    """What Delta says of the month, relative to its anchor, from the log alone. An OPTIMIZE
    changes none of it; a data change, a recreated table or a cleaned-up log does."""

    table_id: str
    in_delta: bool
    change: ChangeKind | None  # None: the month has no anchor
    changed_version: int | None
    files: str | None  # the month's file-set fingerprint, for months without an anchor only


@dataclass(frozen=True)
class MonthInputs:
    """What a month's comparison depends on, read from metadata only: if none of it changed,
    comparing again would give the same answer."""

    delta: DeltaInputs | None  # None: the Delta table could not be read
    sync: SyncAnchor | None
    in_postgres: bool
    schema: str = ""  # the table's columns on both sides


@dataclass
class MonthState:
    """What this process knows of one month of one table (nothing, until its first check)."""

    table: str
    year_month: str
    status: Status = Status.UNKNOWN
    reason: str = ""
    delta_rows: int | None = None
    postgres_rows: int | None = None
    lag_seconds: float = 0.0
    pending_since: float | None = None  # oldest Delta commit Postgres lacks, for the lag
    last_sync_timestamp: float | None = None
    last_check_timestamp: float | None = None
    last_check_duration: float | None = None
    # When Postgres was last re-digested against the anchor, and Delta last recomputed (epoch
    # seconds; None: never). Persisted in `ranking.month_check`, so they survive restarts.
    last_postgres_check: float | None = None
    last_deep_check: float | None = None
    anchored_at: float | None = None  # the anchor's time: a sync digests what it reads from Delta
    replication_failures: int = 0
    repair_failures: int = 0  # failed repairs since the last successful one (repair audit)
    compared: MonthInputs | None = None  # what the last completed comparison saw
    planned: MonthInputs | None = None  # what this cycle's plan saw
    bad_since: float | None = None  # when it became drift or missing (repair grace)

    @property
    def key(self) -> MonthKey:
        return (self.table, self.year_month)

    @property
    def delta_checked_at(self) -> float | None:
        """The last time the month's Delta side was digested: a deep check, or the sync."""
        times = [t for t in (self.last_deep_check, self.anchored_at) if t is not None]
        return max(times) if times else None

    def view(self) -> MonthView:
        return MonthView(
            self.table,
            self.year_month,
            str(self.status),
            self.delta_rows,
            self.postgres_rows,
            self.lag_seconds,
            self.last_sync_timestamp,
            self.last_check_timestamp,
            self.replication_failures,
            self.last_check_duration,
            self.repair_failures,
            self.delta_checked_at,
        )

    def observe(self, sync: SyncState | None, inputs: MonthInputs, now: float) -> None:
        """What this cycle's metadata says, before any comparison."""
        if sync is not None:
            self.replication_failures = sync.consecutive_failures
            if sync.synced_at is not None:
                self.last_sync_timestamp = sync.synced_at.timestamp()
            anchored = sync.verified_at or sync.synced_at
            self.anchored_at = anchored.timestamp() if anchored is not None else None
        if self.pending_since is not None:
            self.lag_seconds = max(0.0, now - self.pending_since)
        self.planned = inputs

    def remember(self, finding: Finding) -> None:
        """What an earlier process recorded: the clocks of the periodic checks."""
        if finding.last_postgres_check_at is not None:
            self.last_postgres_check = finding.last_postgres_check_at.timestamp()
        if finding.last_deep_check_at is not None:
            self.last_deep_check = finding.last_deep_check_at.timestamp()

    def adopt(self, finding: Finding, sync: SyncState | None, now: float) -> None:
        """What the leader found (a follower's view of the month). The inputs it compared are
        the leader's, not ours: should this process lead, it compares the month itself."""
        checked = finding.checked_at.timestamp()
        if finding.status in REPAIRABLE and self.bad_since is None:
            self.bad_since = checked
        elif finding.status not in REPAIRABLE:
            self.bad_since = None
        self.status, self.reason = finding.status, finding.reason
        self.delta_rows, self.postgres_rows = finding.delta_rows, finding.postgres_rows
        # The lag grows while nothing is checked: the leader measured it at checked_at.
        self.lag_seconds = finding.lag_seconds + (now - checked) if finding.lag_seconds else 0.0
        self.last_check_timestamp = checked
        self.last_check_duration = finding.duration_seconds
        self.remember(finding)
        if sync is not None:
            self.replication_failures = sync.consecutive_failures
            if sync.synced_at is not None:
                self.last_sync_timestamp = sync.synced_at.timestamp()
        self.compared = self.planned = None

    def record(self, result: TableCheck, *, deep: bool, now: float) -> None:
        """The outcome of a completed comparison (its inputs are the ones planned)."""
        if result.status in REPAIRABLE and self.status not in REPAIRABLE:
            self.bad_since = now
        elif result.status not in REPAIRABLE:
            self.bad_since = None
        self.status, self.reason = result.status, result.reason
        self.delta_rows, self.postgres_rows = result.delta_rows, result.postgres_rows
        self.lag_seconds = result.lag_seconds
        self.pending_since = now - result.lag_seconds if result.lag_seconds > 0 else None
        self.last_check_timestamp = now
        self.last_check_duration = result.duration_seconds
        if result.last_sync_timestamp is not None:
            self.last_sync_timestamp = result.last_sync_timestamp
        self.replication_failures = result.consecutive_failures
        if result.status is not Status.ERROR:
            self.last_postgres_check = now
            if deep:
                self.last_deep_check = now
        self.compared = self.planned


class MonthStates(Mapping[MonthKey, MonthState]):
    """Every month the daemon knows of, by (table, month)."""

    def __init__(self) -> None:
        self._months: dict[MonthKey, MonthState] = {}

    def __iter__(self) -> Iterator[MonthKey]:
        return iter(self._months)

    def __len__(self) -> int:
        return len(self._months)

    def __getitem__(self, key: MonthKey) -> MonthState:
        return self._months[key]

    def ensure(self, key: MonthKey) -> MonthState:
        return self._months.setdefault(key, MonthState(*key))

    def forget(self, key: MonthKey) -> None:
        self._months.pop(key, None)

    def keep_tables(self, tables: Iterable[str]) -> None:
        """Forgets the months of every table not in `tables` (after a reload removed one)."""
        keep = set(tables)
        for key in [k for k in self._months if k[0] not in keep]:
            del self._months[key]

    def views(self, window: Iterable[str]) -> tuple[MonthView, ...]:
        """The exporter's view of the months inside the retention window."""
        inside = set(window)
        return tuple(
            state.view() for key, state in sorted(self._months.items()) if key[1] in inside
        )
