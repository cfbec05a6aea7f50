"""`classify` decides every status; each rule that chooses between two statuses has a row."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.verdict import (
    REPAIRABLE,
    Digest,
    MonthFacts,
    Status,
    classify,
    needs_content,
    worst,
)

SYNCED = MonthFacts(
    in_delta=True,
    postgres_rows=10,
    synced_version=3,
    latest_version=3,
    delta_changed=False,
    in_flight=False,
    expected=Digest(10, "rh1:10:aa"),
    postgres=Digest(10, "rh1:10:aa"),
)
NEVER = MonthFacts(
    in_delta=True,
    postgres_rows=0,
    synced_version=None,
    latest_version=3,
    delta_changed=True,
    in_flight=False,
)


def facts(base: MonthFacts, **changes: object) -> MonthFacts:
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


CASES = [
    # (id, facts, status, words in the reason)
    ("same content", SYNCED, Status.IN_SYNC, ""),
    ("digests differ", facts(SYNCED, postgres=Digest(10, "rh1:10:bb")), Status.DRIFT, "hashes"),
    (
        "counts differ, digests not needed",
        facts(SYNCED, postgres_rows=9, expected=Digest(10), postgres=None),
        Status.DRIFT,
        "row counts differ",
    ),
    (
        "Delta moved on, content as synced",
        facts(SYNCED, delta_changed=True),
        Status.LAGGING,
        "after version 3",
    ),
    (
        "Delta moved on but Postgres differs: drift wins over lag",
        facts(SYNCED, delta_changed=True, postgres=Digest(10, "rh1:10:bb")),
        Status.DRIFT,
        "hashes",
    ),
    ("a writer holds the month", facts(SYNCED, in_flight=True), Status.LAGGING, "in flight"),
    (
        "a writer holds a drifted month: drift",
        facts(SYNCED, in_flight=True, postgres=Digest(10, "rh1:10:bb")),
        Status.DRIFT,
        "hashes",
    ),
    (
        "month gone from Delta, rows in Postgres",
        facts(SYNCED, in_delta=False),
        Status.ORPHANED,
        "absent from Delta",
    ),
    (
        "month gone from Delta and from Postgres (synced empty)",
        facts(
            SYNCED,
            in_delta=False,
            postgres_rows=0,
            expected=Digest(0, "rh1:0:00"),
            postgres=Digest(0, "rh1:0:00"),
        ),
        Status.IN_SYNC,
        "",
    ),
    (
        "sync state ahead of Delta",
        facts(SYNCED, synced_version=9),
        Status.ERROR,
        "claims Delta version 9",
    ),
    ("never synced, in Delta", NEVER, Status.MISSING, "never synced"),
    ("never synced, first write running", facts(NEVER, in_flight=True), Status.LAGGING, "first"),
    ("neither side has the month", facts(NEVER, in_delta=False), Status.ERROR, "neither"),
    (
        "rows without a sync record",
        facts(NEVER, postgres_rows=5),
        Status.DRIFT,
        "without a sync record",
    ),
    (
        "rows without a sync record, not in Delta",
        facts(NEVER, postgres_rows=5, in_delta=False),
        Status.ORPHANED,
        "no sync record",
    ),
]


@pytest.mark.parametrize(
    ("facts_", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify(facts_: MonthFacts, status: Status, words: str) -> None:
    verdict = classify(facts_)
    assert verdict.status is status
    assert words in verdict.reason


def test_every_status_but_unknown_can_be_decided() -> None:
    decided = {classify(c[1]).status for c in CASES}
    assert decided == set(Status) - {Status.UNKNOWN}


def test_content_is_needed_exactly_when_the_month_was_synced_and_can_be_compared() -> None:
    assert needs_content(SYNCED)
    assert not needs_content(NEVER)
    assert not needs_content(facts(SYNCED, synced_version=9))
    assert not needs_content(facts(SYNCED, in_delta=False))
    assert needs_content(facts(SYNCED, in_delta=False, postgres_rows=0))


def test_classify_refuses_to_guess_without_the_content() -> None:
    with pytest.raises(ValueError, match="expected content"):
        classify(facts(SYNCED, expected=None))
    with pytest.raises(ValueError, match="both digests"):
        classify(facts(SYNCED, postgres=None))


def test_worst_orders_by_severity() -> None:
    assert worst([Status.IN_SYNC, Status.LAGGING, Status.MISSING]) is Status.MISSING
    assert worst([Status.DRIFT, Status.ORPHANED, Status.IN_SYNC]) is Status.DRIFT
    assert worst([Status.IN_SYNC, Status.ERROR, Status.DRIFT]) is Status.ERROR
    assert worst([Status.IN_SYNC, Status.UNKNOWN]) is Status.UNKNOWN
    assert worst([]) is Status.IN_SYNC


def test_only_wrong_content_is_repairable() -> None:
    assert {Status.DRIFT, Status.MISSING} == REPAIRABLE
    assert [s for s in Status if s.is_finding] == [
        Status.LAGGING,
        Status.MISSING,
        Status.ORPHANED,
        Status.DRIFT,
    ]
