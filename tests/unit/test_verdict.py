"""`classify` decides every status; each rule that chooses between two statuses has a row.

Digests are written `Digest(rows, text)`; a `Digest(rows)` is a count whose digest is not
computed yet, and a case that needs it must say so (`Undecided`) instead of guessing.
"""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.verdict import (
    REPAIRABLE,
    Digest,
    Evidence,
    MonthFacts,
    Status,
    Undecided,
    classify,
    needs_content,
    worst,
)
from replicator.delta import ChangeKind

A, B, C = Digest(10, "rh1:10:aa"), Digest(10, "rh1:10:bb"), Digest(10, "rh1:10:cc")
UNCHANGED, CHANGED, UNKNOWN = ChangeKind.UNCHANGED, ChangeKind.CHANGED, ChangeKind.UNKNOWN

SYNCED = MonthFacts(
    in_delta=True,
    postgres_rows=10,
    synced_version=3,
    latest_version=5,
    change=UNCHANGED,
    in_flight=False,
    postgres=A,
    as_synced=A,
)
NEVER = MonthFacts(
    in_delta=True,
    postgres_rows=0,
    synced_version=None,
    latest_version=3,
    change=CHANGED,
    in_flight=False,
)


def facts(base: MonthFacts, **changes: object) -> MonthFacts:
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


CASES = [
    # (id, facts, status, words in the reason, verified)
    ("unchanged, as recorded", SYNCED, Status.IN_SYNC, "", False),
    ("unchanged, hashes differ", facts(SYNCED, postgres=B), Status.DRIFT, "hashes differ", False),
    (
        "unchanged, counts differ: no digest needed",
        facts(SYNCED, postgres=Digest(9), postgres_rows=9, as_synced=Digest(10)),
        Status.DRIFT,
        "row counts differ",
        False,
    ),
    (
        "unchanged, deep: Delta recomputed equals Postgres",
        facts(SYNCED, as_synced=None, delta_now=A),
        Status.IN_SYNC,
        "verified",
        True,
    ),
    (
        "unchanged, deep: Delta recomputed differs",
        facts(SYNCED, as_synced=None, delta_now=B),
        Status.DRIFT,
        "hashes differ",
        False,
    ),
    (
        "unchanged, schema changed since the sync: recomputed, never the old digest",
        facts(
            SYNCED, schema_changed=True, postgres_as_synced=A, as_synced=A, postgres=B, delta_now=B
        ),
        Status.IN_SYNC,
        "verified",
        True,
    ),
    (
        "unchanged, a writer holds the month",
        facts(SYNCED, in_flight=True),
        Status.LAGGING,
        "in flight",
        False,
    ),
    (
        "changed, Postgres as synced, Delta has other rows by count: lag",
        facts(
            SYNCED,
            change=CHANGED,
            change_reason="Delta changed the month at version 4",
            delta_now=Digest(12),
        ),
        Status.LAGGING,
        "version 4",
        False,
    ),
    (
        "changed, Postgres as synced, same count, other rows: lag",
        facts(SYNCED, change=CHANGED, delta_now=B),
        Status.LAGGING,
        "",
        False,
    ),
    (
        "changed, but rewritten with the same rows: in sync, re-anchored",
        facts(SYNCED, change=CHANGED, change_reason="overwritten at version 4", delta_now=A),
        Status.IN_SYNC,
        "verified",
        True,
    ),
    (
        "changed, same rows, but a writer holds the month: lag",
        facts(SYNCED, change=CHANGED, delta_now=A, in_flight=True),
        Status.LAGGING,
        "",
        False,
    ),
    (
        "changed, Postgres already the new content",
        facts(SYNCED, change=CHANGED, postgres=B, delta_now=B),
        Status.IN_SYNC,
        "verified",
        True,
    ),
    (
        "changed, Postgres neither as synced nor as now: drift",
        facts(SYNCED, change=CHANGED, postgres=B, delta_now=C),
        Status.DRIFT,
        "hashes differ",
        False,
    ),
    (
        "changed and the schema changed: Postgres under the sync's columns decides the lag",
        facts(
            SYNCED,
            change=CHANGED,
            schema_changed=True,
            postgres=B,
            postgres_as_synced=A,
            delta_now=Digest(11),
        ),
        Status.LAGGING,
        "",
        False,
    ),
    (
        "unknown (log cleaned up), Postgres equals Delta now",
        facts(SYNCED, change=UNKNOWN, change_reason="the Delta log was cleaned up", delta_now=A),
        Status.IN_SYNC,
        "cleaned up; verified",
        True,
    ),
    (
        "unknown, Postgres as synced, Delta differs: lag",
        facts(SYNCED, change=UNKNOWN, change_reason="table recreated", delta_now=B),
        Status.LAGGING,
        "holds the month as synced",
        False,
    ),
    (
        "unknown, Postgres neither: drift",
        facts(SYNCED, change=UNKNOWN, postgres=C, delta_now=B),
        Status.DRIFT,
        "Delta version 5",
        False,
    ),
    (
        "unknown, nothing comparable recorded, Postgres differs: drift",
        facts(SYNCED, change=UNKNOWN, as_synced=None, postgres=C, delta_now=B),
        Status.DRIFT,
        "",
        False,
    ),
    (
        "month gone from Delta, rows in Postgres",
        facts(SYNCED, in_delta=False),
        Status.ORPHANED,
        "absent",
        False,
    ),
    (
        "month gone from both sides (synced empty)",
        facts(
            SYNCED,
            in_delta=False,
            postgres_rows=0,
            postgres=Digest(0, "rh1:0:0"),
            as_synced=Digest(0, "rh1:0:0"),
        ),
        Status.IN_SYNC,
        "",
        False,
    ),
    (
        "sync state ahead of Delta",
        facts(SYNCED, sync_ahead=True),
        Status.ERROR,
        "claims Delta version 3",
        False,
    ),
    (
        "a drift a deep check found stands over a plain check's in_sync",
        facts(SYNCED, standing_drift="row hashes differ from Delta version 5"),
        Status.DRIFT,
        "found by a deep check",
        False,
    ),
    (
        "a new deep check decides afresh",
        facts(SYNCED, as_synced=None, delta_now=A, deep=True, standing_drift="earlier drift"),
        Status.IN_SYNC,
        "verified",
        True,
    ),
    ("never synced, in Delta", NEVER, Status.MISSING, "never synced", False),
    (
        "never synced, first write running",
        facts(NEVER, in_flight=True),
        Status.LAGGING,
        "first",
        False,
    ),
    ("neither side has the month", facts(NEVER, in_delta=False), Status.ERROR, "neither", False),
    (
        "rows without a sync record",
        facts(NEVER, postgres_rows=5),
        Status.DRIFT,
        "without a sync record",
        False,
    ),
    (
        "rows without a sync record, not in Delta",
        facts(NEVER, postgres_rows=5, in_delta=False),
        Status.ORPHANED,
        "no sync record",
        False,
    ),
]


@pytest.mark.parametrize(
    ("facts_", "status", "words", "verified"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify(facts_: MonthFacts, status: Status, words: str, verified: bool) -> None:
    verdict = classify(facts_)
    assert verdict.status is status
    assert words in verdict.reason
    assert verdict.verified is verified


def test_every_status_but_unknown_can_be_decided() -> None:
    assert {classify(c[1]).status for c in CASES} == set(Status) - {Status.UNKNOWN}


UNDECIDED = [
    # (id, facts, the digests classify must ask for)
    (
        "unchanged, equal counts: the recorded digest and Postgres's",
        facts(SYNCED, postgres=Digest(10), as_synced=Digest(10)),
        {Evidence.POSTGRES, Evidence.AS_SYNCED},
    ),
    (
        "deep: Delta now and Postgres",
        facts(SYNCED, postgres=Digest(10), as_synced=None, delta_now=Digest(10)),
        {Evidence.POSTGRES, Evidence.DELTA_NOW},
    ),
    (
        "schema changed: recompute rather than trust a digest of other columns",
        facts(
            SYNCED,
            schema_changed=True,
            postgres=Digest(10),
            postgres_as_synced=Digest(10),
            delta_now=Digest(10),
        ),
        {Evidence.POSTGRES, Evidence.DELTA_NOW},
    ),
    (
        "unknown: Delta now first",
        facts(
            SYNCED, change=UNKNOWN, postgres=Digest(10), as_synced=Digest(10), delta_now=Digest(10)
        ),
        {Evidence.POSTGRES, Evidence.DELTA_NOW},
    ),
    (
        "changed, Postgres as synced, equal counts: is the rewrite the same rows?",
        facts(SYNCED, change=CHANGED, delta_now=Digest(10)),
        {Evidence.POSTGRES, Evidence.DELTA_NOW},
    ),
    (
        "changed, Postgres not as synced: is it the new content?",
        facts(SYNCED, change=CHANGED, postgres=Digest(9), postgres_rows=9, delta_now=Digest(9)),
        {Evidence.POSTGRES, Evidence.DELTA_NOW},
    ),
]


@pytest.mark.parametrize(
    ("facts_", "needed"), [c[1:] for c in UNDECIDED], ids=[c[0] for c in UNDECIDED]
)
def test_classify_asks_for_the_digests_it_needs(facts_: MonthFacts, needed: set[Evidence]) -> None:
    with pytest.raises(Undecided) as undecided:
        classify(facts_)
    assert undecided.value.needed == needed


def test_content_is_needed_exactly_when_the_month_was_synced_and_can_be_compared() -> None:
    assert needs_content(SYNCED)
    assert not needs_content(NEVER)
    assert not needs_content(facts(SYNCED, sync_ahead=True))
    assert not needs_content(facts(SYNCED, in_delta=False))
    assert needs_content(facts(SYNCED, in_delta=False, postgres_rows=0))


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
