"""The auto-repair guardrails, with the clock passed in."""

from __future__ import annotations

import datetime as dt

from reconciler.autorepair import plan_repairs
from reconciler.monthstate import MonthState
from reconciler.record import MonthRecord
from reconciler.verdict import Status
from replicator.config import AutoRepairSettings
from tests.months import month_key as key

NOW = dt.datetime(2026, 11, 5, 12, tzinfo=dt.UTC)


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def month(ym: str, status: Status = Status.DRIFT, bad_for: float = 600) -> MonthState:
    record = MonthRecord(key("ranking_signal", ym), status)
    return MonthState(record, bad_since=ago(bad_for))


GUARD = AutoRepairSettings(enabled=True, grace_period_seconds=300, max_per_cycle=2, max_per_hour=3)


def planned(
    months: list[MonthState],
    history: list[dt.datetime] = [],  # noqa: B006
    **guard: object,
) -> list[str]:
    settings = AutoRepairSettings(**{**GUARD.__dict__, **guard})  # type: ignore[arg-type]
    plan = plan_repairs(months, history, settings, enabled=True, now=NOW)
    return [m.month.ym for m in plan.repair]


def test_newest_first_within_the_cycle_budget() -> None:
    months = [month("2026-08"), month("2026-10"), month("2026-09")]
    assert planned(months) == ["2026-10", "2026-09"]


def test_grace_period() -> None:
    assert planned([month("2026-10", bad_for=299)]) == []
    assert planned([month("2026-10", bad_for=300)]) == ["2026-10"]


def test_only_drift_and_missing_are_repaired() -> None:
    months = [month("2026-10", s) for s in Status if s not in (Status.DRIFT, Status.MISSING)]
    assert planned(months) == []
    assert planned([month("2026-10", Status.MISSING)]) == ["2026-10"]


def test_hourly_budget_counts_the_last_hour_only() -> None:
    months = [month("2026-10"), month("2026-09")]
    assert planned(months, history=[ago(10), ago(20), ago(30)]) == []
    assert planned(months, history=[ago(10), ago(20)]) == ["2026-10"]
    assert planned(months, history=[ago(3601), ago(3700), ago(20)]) == ["2026-10", "2026-09"]


def test_circuit_breaker_opens_above_the_limit_even_when_auto_repair_is_off() -> None:
    months = [month(f"2026-0{i}") for i in range(1, 7)]
    plan = plan_repairs(months, [], GUARD, enabled=True, now=NOW)
    assert plan.circuit_open and plan.repair == () and plan.drifting == 6
    off = plan_repairs(months, [], GUARD, enabled=False, now=NOW)
    assert off.circuit_open and off.repair == ()
    assert not plan_repairs(months[:5], [], GUARD, enabled=True, now=NOW).circuit_open


def test_dry_run_lists_every_due_month_and_spends_no_budget() -> None:
    months = [month("2026-10"), month("2026-09"), month("2026-08")]
    plan = plan_repairs(
        months, [], AutoRepairSettings(dry_run=True, enabled=True), enabled=True, now=NOW
    )
    assert plan.dry_run and [m.month.ym for m in plan.repair] == ["2026-10", "2026-09", "2026-08"]


def test_disabled_repairs_nothing_but_reports_what_waits() -> None:
    plan = plan_repairs([month("2026-10")], [], GUARD, enabled=False, now=NOW)
    assert plan.repair == () and [m.month.ym for m in plan.waiting] == ["2026-10"]
