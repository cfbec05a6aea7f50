"""What the daemon knows of each month of each table, between cycles.

`MonthState` holds the last comparison's outcome and the metadata it was made from (so the
planner can tell whether anything changed since); `MonthStates` is the collection, which follows
the configuration (a table removed on reload takes its months with it) and the retention window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from exporter.metrics import MonthView
from reconciler.check import TableCheck
from reconciler.verdict import REPAIRABLE, Status
from replicator.syncstate import SyncState

MonthKey = tuple[str, str]  # (table, YYYY-MM)


@dataclass(frozen=True)
class SyncAnchor:
    """The parts of a sync state row that identify one sync: another sync, another anchor."""

    delta_version: int | None
    run_id: str | None
    synced_at: dt.datetime | None
    content_digest: str | None

    @classmethod
    def of(cls, state: SyncState | None) -> SyncAnchor | None:
        if state is None:
            return None
        return cls(state.delta_version, state.run_id, state.synced_at, state.content_digest)


@dataclass(frozen=True)
class MonthInputs:
    """What a month's comparison depends on, read from metadata only: if none of it changed,
    comparing again would give the same answer."""

    delta_files: tuple[str, ...] | None  # None: the Delta table could not be read
    sync: SyncAnchor | None
    in_postgres: bool


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
    last_deep_check: float = 0.0
    replication_failures: int = 0
    compared: MonthInputs | None = None  # what the last completed comparison saw
    planned: MonthInputs | None = None  # what this cycle's plan saw
    bad_since: float | None = None  # when it became drift or missing (repair grace)

    @property
    def key(self) -> MonthKey:
        return (self.table, self.year_month)

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
        )

    def observe(self, sync: SyncState | None, inputs: MonthInputs, now: float) -> None:
        """What this cycle's metadata says, before any comparison."""
        if sync is not None:
            self.replication_failures = sync.consecutive_failures
            if sync.synced_at is not None:
                self.last_sync_timestamp = sync.synced_at.timestamp()
        if self.pending_since is not None:
            self.lag_seconds = max(0.0, now - self.pending_since)
        self.planned = inputs

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
        if result.last_sync_timestamp is not None:
            self.last_sync_timestamp = result.last_sync_timestamp
        self.replication_failures = result.consecutive_failures
        # The deep re-check clock starts at the first comparison of this process.
        if (deep and result.status is not Status.ERROR) or not self.last_deep_check:
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
