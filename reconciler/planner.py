"""What to compare this cycle: a pure function of a typed snapshot of metadata.

The cycle reads the metadata (Delta files per month, sync state, months present in Postgres,
tables written around the replicator) into a `CycleSnapshot`; `plan` decides from it and from
what is known of each month which months need a full comparison, newest first, and which of
them are due for the rolling deep re-check. Nothing here reads a database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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
    written_outside: frozenset[str]  # tables written around the replicator since last cycle


@dataclass(frozen=True)
class PlannedCheck:
    table: str
    year_month: YearMonth
    deep: bool = False

    @property
    def key(self) -> MonthKey:
        return (self.table, str(self.year_month))


def needs_comparison(
    meta: MonthMetadata, known: MonthState | None, snapshot: CycleSnapshot
) -> bool:
    """A month is compared when it is new, in error (possibly transient), was written around
    the replicator, or when any of its inputs changed since its last comparison."""
    if meta.table not in snapshot.readable_tables:
        return False  # without Delta nothing can be compared; the last status stands
    if known is None or known.status in (Status.UNKNOWN, Status.ERROR):
        return True
    return meta.table in snapshot.written_outside or meta.inputs != known.compared


def plan(
    snapshot: CycleSnapshot,
    known: Mapping[MonthKey, MonthState],
    *,
    interval_seconds: float,
    deep_check_period_seconds: float,
) -> list[PlannedCheck]:
    """The comparisons of this cycle: changed months newest first, then the due deep checks."""
    todo = [
        PlannedCheck(meta.table, meta.year_month)
        for meta in snapshot.months
        if needs_comparison(meta, known.get(meta.key), snapshot)
    ]
    todo.sort(key=lambda check: str(check.year_month), reverse=True)
    return _with_deep_checks(todo, known, snapshot.now, interval_seconds, deep_check_period_seconds)


def _with_deep_checks(
    todo: list[PlannedCheck],
    known: Mapping[MonthKey, MonthState],
    now: float,
    interval: float,
    period: float,
) -> list[PlannedCheck]:
    """Adds the rolling deep re-check: the months whose Delta digest was recomputed longest
    ago, a few per cycle, so that every month gets one per `period`."""
    due = sorted(
        (
            state
            for state in known.values()
            if state.status is not Status.UNKNOWN and now - state.last_deep_check >= period
        ),
        key=lambda s: s.last_deep_check,
    )
    budget = max(1, math.ceil(len(known) * interval / period))
    planned = {check.key: i for i, check in enumerate(todo)}
    for state in due[:budget]:
        deep = PlannedCheck(state.table, YearMonth.parse(state.year_month), deep=True)
        if state.key in planned:
            todo[planned[state.key]] = deep
        else:
            todo.append(deep)
    return todo
