"""The auto-repair guardrails, as a pure function of the months, the repair history and a clock.

A month is repaired automatically only when it is drift or missing, has stayed so for the grace
period, fits in the per-cycle and per-hour budgets, and fewer months drift than the circuit
breaker allows (many drifting months at once smell of a systemic problem, not of a month to
rewrite). Newest months first. Executing the plan (and checking leadership before each repair)
is the cycle's job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconciler.monthstate import MonthState
from reconciler.verdict import REPAIRABLE, Status
from replicator.config import AutoRepairSettings

HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class RepairPlan:
    repair: tuple[MonthState, ...] = ()  # to repair now (or to log, in a dry run), in order
    waiting: tuple[MonthState, ...] = ()  # due, but over this cycle's or this hour's budget
    circuit_open: bool = False
    drifting: int = 0
    dry_run: bool = False


def recent(history: Iterable[dt.datetime], now: dt.datetime) -> list[dt.datetime]:
    """The repair times that still count against the hourly budget."""
    return [t for t in history if now - t <= HOUR]


def plan_repairs(
    months: Iterable[MonthState],
    history: Sequence[dt.datetime],
    guard: AutoRepairSettings,
    *,
    enabled: bool,
    now: dt.datetime,
) -> RepairPlan:
    """Which months to repair this cycle; `history` holds the times of earlier repairs."""
    states = list(months)
    drifting = sum(1 for s in states if s.record.status is Status.DRIFT)
    circuit_open = drifting > guard.circuit_breaker_months
    grace = dt.timedelta(seconds=guard.grace_period_seconds)
    due = tuple(
        sorted(
            (
                s
                for s in states
                if s.record.status in REPAIRABLE
                and s.bad_since is not None
                and now - s.bad_since >= grace
            ),
            key=lambda s: s.month.year_month,
            reverse=True,
        )
    )
    if not enabled or circuit_open:
        return RepairPlan(waiting=due, circuit_open=circuit_open, drifting=drifting)
    hour_left = guard.max_per_hour - len(recent(history, now))
    if guard.dry_run:  # a dry run repairs nothing, so it spends no budget
        chosen = due if hour_left > 0 else ()
    else:
        chosen = due[: max(0, min(guard.max_per_cycle, hour_left))]
    return RepairPlan(chosen, due[len(chosen) :], False, drifting, guard.dry_run)
