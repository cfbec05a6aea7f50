"""What to compare this cycle: a pure function of a typed snapshot of metadata.

The cycle reads the metadata (what Delta did to each month since its anchor, sync state, months
present in Postgres, tables whose Postgres side may have changed unseen) into a `CycleSnapshot`;
`plan` decides from it and from what is known of each month:

* months whose inputs changed, are new, in error, or belong to a table the Postgres watch no
  longer vouches for: compared now, newest first;
* the periodic bounds behind the cheap signals: every month's Postgres side re-digested against
  its anchor once per `postgres_check_period_seconds`, and its Delta side recomputed once per
  `deep_check_period_seconds`, a few months per cycle (most overdue first) so the load is flat.

Nothing here reads a database.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.monthstate import MonthInputs, MonthKey, MonthState
from reconciler.verdict import Status
from replicator.syncstate import SyncState
from replicator.yearmonth import YearMonth


@dataclass(frozen=True)
class MonthMetadata:
    """One month of one table as this cycle's metadata shows it."""

    table: str
    year_month: YearMonth
    inputs: MonthInputs
    sync: SyncState | None

    @property
    def key(self) -> MonthKey:
        return (self.table, str(self.year_month))


@dataclass(frozen=True)
class CycleSnapshot:
    """The metadata one cycle plans from."""

    now: float
    months: tuple[MonthMetadata, ...]  # every month in the window that exists anywhere
    readable_tables: frozenset[str]  # tables whose Delta table could be read this cycle
    # Tables whose Postgres side may have changed without any metadata showing it, and why
    # (written around the replicator, rewritten, statistics reset, failover, ...).
    suspicious: Mapping[str, str] = field(default_factory=dict)
    # Single months of partitioned tables written around the replicator, and why.
    suspicious_months: Mapping[MonthKey, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedCheck:
    table: str
    year_month: YearMonth
    deep: bool = False
    why: str = "changed"

    @property
    def key(self) -> MonthKey:
        return (self.table, str(self.year_month))


@dataclass(frozen=True)
class Periods:
    interval_seconds: float
    postgres_check_period_seconds: float
    deep_check_period_seconds: float


def why_compare(
    meta: MonthMetadata, known: MonthState | None, snapshot: CycleSnapshot
) -> str | None:
    """Why the month must be compared this cycle, or None when nothing says so."""
    if meta.table not in snapshot.readable_tables:
        return None  # without Delta nothing can be compared; the last status stands
    if known is None or known.status is Status.UNKNOWN:
        return "not compared yet"
    if known.status is Status.ERROR:
        return "retrying an error"  # the failed read may have been transient
    if meta.table in snapshot.suspicious:
        return snapshot.suspicious[meta.table]
    if meta.key in snapshot.suspicious_months:
        return snapshot.suspicious_months[meta.key]
    if meta.inputs != known.compared:
        return "changed"
    return None


def plan(
    snapshot: CycleSnapshot, known: Mapping[MonthKey, MonthState], periods: Periods
) -> list[PlannedCheck]:
    """The comparisons of this cycle: changed months newest first, then the periodic ones."""
    todo = []
    for meta in snapshot.months:
        why = why_compare(meta, known.get(meta.key), snapshot)
        if why is not None:
            todo.append(PlannedCheck(meta.table, meta.year_month, why=why))
    todo.sort(key=lambda check: str(check.year_month), reverse=True)
    # The periodic checks concern anchored months of readable tables, compared before or not
    # (a restarted process compares every month first: a due deep check takes that turn).
    comparable = {
        meta.key: known[meta.key]
        for meta in snapshot.months
        if meta.key in known and meta.table in snapshot.readable_tables and meta.sync is not None
    }
    _add_due(
        todo,
        comparable,
        snapshot.now,
        periods.interval_seconds,
        periods.postgres_check_period_seconds,
        lambda s: s.last_postgres_check,
        deep=False,
    )
    _add_due(
        todo,
        comparable,
        snapshot.now,
        periods.interval_seconds,
        periods.deep_check_period_seconds,
        lambda s: s.delta_checked_at,
        deep=True,
    )
    return todo


def _add_due(
    todo: list[PlannedCheck],
    months: Mapping[MonthKey, MonthState],
    now: float,
    interval: float,
    period: float,
    last: Callable[[MonthState], float | None],
    *,
    deep: bool,
) -> None:
    """Adds the months whose last check of this kind is older than `period`: at most a share
    of them per cycle (every month once per period), the most overdue first."""
    due = sorted(
        (s for s in months.values() if now - (last(s) or 0.0) >= period),
        key=lambda s: last(s) or 0.0,
    )
    budget = max(1, math.ceil(len(months) * interval / period))
    planned = {check.key: i for i, check in enumerate(todo)}
    why = "deep check due" if deep else "Postgres re-check due"
    for state in due[:budget]:
        check = PlannedCheck(state.table, YearMonth.parse(state.year_month), deep=deep, why=why)
        if state.key not in planned:
            todo.append(check)
        elif deep and not todo[planned[state.key]].deep:
            todo[planned[state.key]] = check
