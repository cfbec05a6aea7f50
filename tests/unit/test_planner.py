"""What a cycle compares, decided from metadata alone."""

from __future__ import annotations

import datetime as dt

from reconciler.monthstate import DeltaInputs, MonthInputs, MonthState, SyncAnchor
from reconciler.pacing import ProofBudget
from reconciler.planner import CycleSnapshot, MonthMetadata, Periods, PlannedCheck, plan
from reconciler.record import MonthRecord
from reconciler.verdict import Status
from replicator.delta import ChangeKind
from replicator.month import Month
from replicator.syncstate import SyncState
from tests.months import month_key

NOW = dt.datetime(2026, 11, 5, 12, tzinfo=dt.UTC)
SYNC = SyncState(month_key("t", "2026-10"), 3, 10, None, "run", None, None, 0, "rh1:10:00")


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


PERIODS = Periods(
    interval_seconds=60, postgres_check_period_seconds=900, deep_check_period_seconds=3600
)


def inputs(change: ChangeKind = ChangeKind.UNCHANGED, since: int | None = None) -> MonthInputs:
    delta = DeltaInputs("table-id", True, change, since, None)
    return MonthInputs(delta, SyncAnchor.of(SYNC), True, "schema")


def meta(ym: str, table: str = "t", **kw: object) -> MonthMetadata:
    return MonthMetadata(month_key(table, ym), inputs(**kw), SYNC)  # type: ignore[arg-type]


def known(
    m: MonthMetadata, status: Status = Status.IN_SYNC, pg_ago: float = 60, deep_ago: float = 60
) -> MonthState:
    record = MonthRecord(m.month, status, postgres_checked_at=ago(pg_ago), proven_at=ago(deep_ago))
    return MonthState(record, compared=m.inputs)


def check(m: Month, deep: bool = False, why: str = "changed") -> PlannedCheck:
    return PlannedCheck(m, deep, why)


def snapshot(*months: MonthMetadata, suspicious: dict[str, str] | None = None) -> CycleSnapshot:
    return CycleSnapshot(NOW, months, frozenset({"t", "u"}), suspicious or {})


def planned(
    snap: CycleSnapshot, states: list[MonthState], periods: Periods = PERIODS
) -> list[PlannedCheck]:
    return plan(snap, {s.month: s for s in states}, periods).checks


def proofs(snap: CycleSnapshot, states: list[MonthState]) -> list[str]:
    return [m.ym for m in plan(snap, {s.month: s for s in states}, PERIODS).proofs]


def months_of(checks: list[PlannedCheck]) -> list[str]:
    return [c.month.ym for c in checks]


def test_nothing_changed_nothing_compared() -> None:
    months = [meta("2026-10"), meta("2026-09")]
    assert planned(snapshot(*months), [known(m) for m in months]) == []


def test_optimize_changes_no_input_so_nothing_is_compared() -> None:
    # An OPTIMIZE rewrites files but changes no data: the month stays UNCHANGED relative to
    # its anchor, and the raw file list is not an input of an anchored month.
    before, after = meta("2026-10"), meta("2026-10")
    assert planned(snapshot(after), [known(before)]) == []


def test_new_changed_and_erroring_months_are_compared_newest_first() -> None:
    same, changed, failing, new = meta("2026-07"), meta("2026-08"), meta("2026-09"), meta("2026-10")
    states = [known(same), known(failing, Status.ERROR)]
    states.append(known(meta("2026-08"), deep_ago=60))
    changed = meta("2026-08", change=ChangeKind.CHANGED, since=5)
    result = planned(snapshot(same, changed, failing, new), states)
    assert months_of(result) == ["2026-10", "2026-09", "2026-08"]
    assert [c.why for c in result] == ["not compared yet", "retrying an error", "changed"]
    assert not any(c.deep for c in result)


def test_a_table_the_postgres_watch_no_longer_vouches_for_is_compared_again() -> None:
    months = [meta("2026-10"), meta("2026-10", table="u")]
    result = planned(
        snapshot(*months, suspicious={"u": "the table was rewritten"}), [known(m) for m in months]
    )
    assert [(c.month.table, c.why) for c in result] == [("u", "the table was rewritten")]


def test_months_of_an_unreadable_table_keep_their_last_status() -> None:
    m = meta("2026-10")
    snap = CycleSnapshot(NOW, (m,), frozenset(), {})
    assert planned(snap, []) == []


def test_postgres_re_checks_take_the_most_overdue_first_within_the_budget() -> None:
    months = [meta(f"2026-{i:02d}") for i in range(1, 11)]
    states = [known(m, pg_ago=900 + i) for i, m in enumerate(months)]
    result = planned(snapshot(*months), states)
    # ten months, a 60 s cycle, a 15-minute period: ceil(10 * 60 / 900) = 1 per cycle
    assert result == [check(month_key("t", "2026-10"), False, "Postgres re-check due")]


def test_a_month_never_re_digested_is_due() -> None:
    m = meta("2026-10")
    state = known(m)
    state.record = MonthRecord(state.month, state.status, proven_at=state.record.proven_at)
    assert months_of(planned(snapshot(m), [state])) == ["2026-10"]


def test_proofs_are_wanted_from_half_the_maximum_age_oldest_first() -> None:
    months = [meta("2026-08"), meta("2026-09"), meta("2026-10")]
    states = [
        known(months[0], deep_ago=1700),  # younger than half of 3600 s: not yet
        known(months[1], deep_ago=1900),
        known(months[2], deep_ago=7200),
    ]
    assert proofs(snapshot(*months), states) == ["2026-10", "2026-09"]
    assert planned(snapshot(*months), states) == []  # proofs are not checks: the budget decides


def test_proofs_count_from_the_sync_or_the_last_deep_check() -> None:
    m = meta("2026-10")
    state = known(m, deep_ago=7200)
    assert proofs(snapshot(m), [state]) == ["2026-10"]
    state.anchored_at = ago(10)  # a sync digested the month's Delta rows ten seconds ago
    assert proofs(snapshot(m), [state]) == []


def test_a_restarted_process_compares_first_and_proves_what_an_earlier_one_left_old() -> None:
    m = meta("2026-10")
    fresh = MonthState(MonthRecord(month_key("t", "2026-10")), anchored_at=ago(10))  # unknown here
    assert planned(snapshot(m), [fresh]) == [
        check(month_key("t", "2026-10"), why="not compared yet")
    ]
    assert proofs(snapshot(m), [fresh]) == []
    # An earlier process recorded its last proof two hours ago: wanted now, not postponed.
    overdue = MonthState(
        MonthRecord(month_key("t", "2026-10"), proven_at=ago(7200)), anchored_at=ago(9000)
    )
    assert proofs(snapshot(m), [overdue]) == ["2026-10"]


def test_the_proof_budget_is_a_share_of_one_core() -> None:
    budget = ProofBudget(0.25)
    assert budget.allows(NOW)
    budget.spent(NOW, cpu_seconds=2.0)  # 2 s of CPU at a quarter of a core: 8 s apart
    assert not budget.allows(NOW + dt.timedelta(seconds=7.9))
    assert budget.allows(NOW + dt.timedelta(seconds=8))
