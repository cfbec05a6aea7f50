"""What the daemon knows of each month of each table, between cycles.

`MonthState` holds the month's last `MonthRecord` (what the last comparison found, or what the
leader found, for a follower) and what only the daemon needs besides: the metadata the record
was made from (so the planner can tell whether anything changed since), the anchor's time, and
since when the month needs repair. `MonthStates` is the collection, which follows the
configuration (a table removed on reload takes its months with it) and the retention window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from reconciler.record import MonthRecord
from reconciler.verdict import REPAIRABLE, Status
from replicator.delta import ChangeKind
from replicator.month import Month
from replicator.syncstate import SyncState
from replicator.yearmonth import YearMonth


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

    record: MonthRecord
    anchored_at: dt.datetime | None = None  # the anchor's time: a sync digests what it copies
    compared: MonthInputs | None = None  # what the last completed comparison saw
    planned: MonthInputs | None = None  # what this cycle's plan saw
    bad_since: dt.datetime | None = None  # when it became drift or missing (repair grace)

    @property
    def month(self) -> Month:
        return self.record.month

    @property
    def status(self) -> Status:
        return self.record.status

    @property
    def last_proof(self) -> dt.datetime | None:
        """When both sides were last digested from their data: a deep check, or the sync
        (which digests the rows it copies, in the transaction that writes them)."""
        times = [t for t in (self.record.proven_at, self.anchored_at) if t is not None]
        return max(times) if times else None

    def view(self, now: dt.datetime) -> MonthRecord:
        """What the exporter and the planner see: the record, its lag as of now, its proof."""
        return dataclasses.replace(
            self.record, lag_seconds=self.record.lag_at(now), proven_at=self.last_proof
        )

    def observe(self, sync: SyncState | None) -> None:
        """What this cycle's sync state says, before any comparison."""
        if sync is None:
            return
        anchored = sync.verified_at or sync.synced_at
        self.anchored_at = anchored
        self.record = dataclasses.replace(
            self.record,
            consecutive_failures=sync.consecutive_failures,
            last_failure=sync.last_failure_reason,
            last_sync_at=sync.synced_at or self.record.last_sync_at,
        )

    def adopt(self, record: MonthRecord, sync: SyncState | None) -> None:
        """What the leader found (a follower's view of the month), as is. The inputs it compared
        are the leader's, not ours: should this process lead, it compares the month itself."""
        self.set(record, record.checked_at or dt.datetime.now(dt.UTC))
        self.observe(sync)
        self.compared = self.planned = None

    def set(self, record: MonthRecord, now: dt.datetime) -> None:
        """A new record of the month (a comparison's, or the leader's)."""
        if record.status in REPAIRABLE and self.record.status not in REPAIRABLE:
            self.bad_since = now if self.bad_since is None else self.bad_since
        elif record.status not in REPAIRABLE:
            self.bad_since = None
        self.record = dataclasses.replace(
            record,
            proven_at=record.proven_at or self.record.proven_at,
            postgres_checked_at=record.postgres_checked_at or self.record.postgres_checked_at,
            repair_failures=self.record.repair_failures,
        )

    def checked(self, record: MonthRecord, *, deep: bool) -> None:
        """The outcome of a completed comparison of this process (its inputs are the ones
        planned): the clocks of the periodic checks move unless it failed."""
        now = record.checked_at or dt.datetime.now(dt.UTC)
        if record.status.completed:
            record = dataclasses.replace(
                record, postgres_checked_at=now, proven_at=now if deep else record.proven_at
            )
        self.set(record, now)
        self.compared = self.planned

    def remember(self, found: MonthRecord) -> None:
        """What an earlier process recorded: the clocks of the periodic checks."""
        self.record = dataclasses.replace(
            self.record,
            postgres_checked_at=found.postgres_checked_at or self.record.postgres_checked_at,
            proven_at=found.proven_at or self.record.proven_at,
        )


class MonthStates(Mapping[Month, MonthState]):
    """Every month the daemon knows of."""

    def __init__(self) -> None:
        self._months: dict[Month, MonthState] = {}

    def __iter__(self) -> Iterator[Month]:
        return iter(self._months)

    def __len__(self) -> int:
        return len(self._months)

    def __getitem__(self, key: Month) -> MonthState:
        return self._months[key]

    def ensure(self, month: Month) -> MonthState:
        if month not in self._months:
            self._months[month] = MonthState(MonthRecord(month))
        return self._months[month]

    def forget(self, month: Month) -> None:
        self._months.pop(month, None)

    def keep_tables(self, tables: Iterable[str]) -> None:
        """Forgets the months of every table not in `tables` (after a reload removed one)."""
        keep = set(tables)
        for month in [m for m in self._months if m.table not in keep]:
            del self._months[month]

    def views(self, window: Iterable[YearMonth], now: dt.datetime) -> tuple[MonthRecord, ...]:
        """The exporter's view of the months inside the retention window."""
        inside = set(window)
        return tuple(
            state.view(now)
            for month, state in sorted(self._months.items())
            if month.year_month in inside
        )
