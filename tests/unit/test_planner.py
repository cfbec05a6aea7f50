"""What a cycle compares, decided from metadata alone."""

from __future__ import annotations

from reconciler.monthstate import MonthInputs, MonthState, SyncAnchor
from reconciler.planner import CycleSnapshot, MonthMetadata, PlannedCheck, plan
from reconciler.verdict import Status
from replicator.yearmonth import YearMonth

NOW = 1_000_000.0
ANCHOR = SyncAnchor(3, "run", None, "rh1:1:00")


def meta(
    ym: str, files: tuple[str, ...] | None = ("a.parquet",), table: str = "t"
) -> MonthMetadata:
    return MonthMetadata(table, YearMonth.parse(ym), MonthInputs(files, ANCHOR, True), None)


def known(m: MonthMetadata, status: Status = Status.IN_SYNC, deep_ago: float = 60) -> MonthState:
    return MonthState(
        m.table,
        str(m.year_month),
        status=status,
        compared=m.inputs,
        last_deep_check=NOW - deep_ago,
    )


def snapshot(*months: MonthMetadata, outside: frozenset[str] = frozenset()) -> CycleSnapshot:
    return CycleSnapshot(NOW, months, frozenset({"t", "u"}), outside)


def planned(
    snap: CycleSnapshot, states: list[MonthState], period: float = 3600
) -> list[PlannedCheck]:
    return plan(
        snap,
        {s.key: s for s in states},
        interval_seconds=60,
        deep_check_period_seconds=period,
    )


def test_nothing_changed_nothing_compared() -> None:
    months = [meta("2026-10"), meta("2026-09")]
    assert planned(snapshot(*months), [known(m) for m in months]) == []


def test_new_changed_and_erroring_months_are_compared_newest_first() -> None:
    same, changed, failing, new = meta("2026-07"), meta("2026-08"), meta("2026-09"), meta("2026-10")
    states = [known(same), known(failing, Status.ERROR)]
    states.append(known(meta("2026-08", files=("old.parquet",))))
    result = planned(snapshot(same, changed, failing, new), states)
    assert [str(c.year_month) for c in result] == ["2026-10", "2026-09", "2026-08"]
    assert not any(c.deep for c in result)


def test_a_table_written_around_the_replicator_is_compared_again() -> None:
    months = [meta("2026-10"), meta("2026-10", table="u")]
    result = planned(snapshot(*months, outside=frozenset({"u"})), [known(m) for m in months])
    assert [c.table for c in result] == ["u"]


def test_months_of_an_unreadable_table_keep_their_last_status() -> None:
    m = meta("2026-10", files=None)
    snap = CycleSnapshot(NOW, (m,), frozenset(), frozenset())
    assert planned(snap, []) == []


def test_deep_checks_take_the_most_overdue_first_within_the_budget() -> None:
    months = [meta(f"2026-{i:02d}") for i in range(1, 11)]
    states = [known(m, deep_ago=3600 + i) for i, m in enumerate(months)]
    result = planned(snapshot(*months), states)
    # ten months, one cycle (60 s) of a one-hour period: ceil(10 * 60 / 3600) = 1 per cycle
    assert result == [PlannedCheck("t", YearMonth.parse("2026-10"), deep=True)]


def test_a_month_both_changed_and_due_is_compared_once_deep() -> None:
    m = meta("2026-10")
    state = known(meta("2026-10", files=("old.parquet",)), deep_ago=7200)
    assert planned(snapshot(m), [state]) == [PlannedCheck("t", YearMonth.parse("2026-10"), True)]


def test_unknown_months_are_not_due_for_a_deep_check_yet() -> None:
    m = meta("2026-10")
    state = MonthState("t", "2026-10", compared=m.inputs)  # never compared: status unknown
    assert planned(snapshot(m), [state]) == [PlannedCheck("t", YearMonth.parse("2026-10"))]
