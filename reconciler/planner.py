"""What to compare this cycle: a pure function of a typed snapshot of metadata.

The cycle reads the metadata (what Delta did to each month since its anchor, sync state, months
present in Postgres, tables whose Postgres side may have changed unseen) into a `CycleSnapshot`;
`plan` decides from it and from what is known of each month:

* months whose inputs changed, are new, in error, or belong to a table the Postgres watch no
  longer vouches for: compared now, newest first;
* the periodic bound behind the cheap signals: every month's Postgres side re-digested against
  its anchor once per `postgres_check_period_seconds`, a few months per cycle (most overdue
  first) so the load is flat;
* the proofs: months whose last proof (both digests recomputed from the data) is half of
  `deep_check_period_seconds` old, oldest first, which the cycle proves as its Delta budget
  (`daemon.deep_check_budget`) allows.

Nothing here reads a database.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.monthstate import MonthInputs, MonthState
from reconciler.verdict import Status
from replicator.month import Month
from replicator.syncstate import SyncState


@dataclass(frozen=True)
class MonthMetadata:
    """One month of one table as this cycle's metadata shows it."""

    month: Month
    inputs: MonthInputs
    sync: SyncState | None


@dataclass(frozen=True)
class CycleSnapshot:
    """The metadata one cycle plans from."""

    now: dt.datetime
    months: tuple[MonthMetadata, ...]  # every month in the window that exists anywhere
    readable_tables: frozenset[str]  # tables whose Delta table could be read this cycle
    # Tables whose Postgres side may have changed without any metadata showing it, and why
    # (written around the replicator, rewritten, statistics reset, failover, ...).
    suspicious: Mapping[str, str] = field(default_factory=dict)
    # Single months of partitioned tables written around the replicator, and why.
    suspicious_months: Mapping[Month, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedCheck:
    month: Month
    deep: bool = False
    why: str = "changed"


@dataclass(frozen=True)
class Periods:
    interval_seconds: float
    postgres_check_period_seconds: float
    deep_check_period_seconds: float


def why_compare(
    meta: MonthMetadata, known: MonthState | None, snapshot: CycleSnapshot
) -> str | None:
    """Why the month must be compared this cycle, or None when nothing says so."""
    table = meta.month.table
    if table not in snapshot.readable_tables:
        return None  # without Delta nothing can be compared; the last status stands
    if known is None or known.record.status is Status.UNKNOWN:
        return "not compared yet"
    if known.record.status is Status.ERROR:
        return "retrying an error"  # the failed read may have been transient
    if table in snapshot.suspicious:
        return snapshot.suspicious[table]
    if meta.month in snapshot.suspicious_months:
        return snapshot.suspicious_months[meta.month]
    if meta.inputs != known.compared:
        return "changed"
    return None


@dataclass(frozen=True)
class Plan:
    """This cycle's comparisons, and the months to prove when the Delta budget allows."""

    checks: list[PlannedCheck]
    proofs: list[Month]  # oldest proof first


def plan(snapshot: CycleSnapshot, known: Mapping[Month, MonthState], periods: Periods) -> Plan:
    """The comparisons of this cycle (changed months newest first, then the Postgres
    re-checks due) and the proofs wanted (`proofs_wanted`)."""
    todo = []
    for meta in snapshot.months:
        why = why_compare(meta, known.get(meta.month), snapshot)
        if why is not None:
            todo.append(PlannedCheck(meta.month, why=why))
    todo.sort(key=lambda check: check.month.year_month, reverse=True)
    comparable = _comparable(snapshot, known)
    postgres = _Due(periods.postgres_check_period_seconds, lambda s: s.record.postgres_checked_at)
    postgres.add(todo, comparable, snapshot.now, periods.interval_seconds)
    return Plan(todo, proofs_wanted(comparable, snapshot.now, periods.deep_check_period_seconds))


def _comparable(
    snapshot: CycleSnapshot, known: Mapping[Month, MonthState]
) -> dict[Month, MonthState]:
    """Anchored months of readable tables, compared before or not (a restarted process compares
    every month first: a due proof takes that turn)."""
    return {
        meta.month: known[meta.month]
        for meta in snapshot.months
        if meta.month in known
        and meta.month.table in snapshot.readable_tables
        and meta.sync is not None
    }


def proofs_wanted(
    months: Mapping[Month, MonthState], now: dt.datetime, max_age: float
) -> list[Month]:
    """The months to prove again (both digests from the data), oldest proof first: those whose
    proof is half the maximum age old or more. The daemon proves them as its Delta budget
    allows, so a month's proof stays younger than the maximum age as long as a sweep of all of
    them fits in half of it (docs/operations.md, "Continuous proof")."""

    def last(state: MonthState) -> dt.datetime:
        return state.last_proof or _NEVER

    due = [s for s in months.values() if (now - last(s)).total_seconds() >= max_age / 2]
    return [s.month for s in sorted(due, key=last)]


_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class _Due:
    """A periodic check: every month once per `period`, counted from `last`."""

    period: float
    last: Callable[[MonthState], dt.datetime | None]

    def add(
        self,
        todo: list[PlannedCheck],
        months: Mapping[Month, MonthState],
        now: dt.datetime,
        interval: float,
    ) -> None:
        """Adds the months whose last check of this kind is older than the period: at most a
        share of them per cycle (every month once per period), the most overdue first."""

        def last(state: MonthState) -> dt.datetime:
            return self.last(state) or _NEVER

        due = sorted(
            (s for s in months.values() if (now - last(s)).total_seconds() >= self.period),
            key=last,
        )
        budget = max(1, math.ceil(len(months) * interval / self.period))
        planned = {check.month: i for i, check in enumerate(todo)}
        for state in due[:budget]:
            if state.month not in planned:
                todo.append(PlannedCheck(state.month, why="Postgres re-check due"))
