"""The verdict on one month of one table: its `Status`, decided by a pure `classify(facts)`.

`check` gathers the facts (sync state, what Delta did since the sync, counts and digests of the
sides it needed); `classify` alone decides what they mean, so every status and every rule that
chooses between two of them is in one function with table-driven tests.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Status(enum.StrEnum):
    IN_SYNC = "in_sync"  # Postgres holds exactly the Delta snapshot it claims to hold
    LAGGING = "lagging"  # Delta has a newer version of the month; replication pending or running
    MISSING = "missing"  # in Delta, never synced to Postgres
    ORPHANED = "orphaned"  # in Postgres, not in Delta
    DRIFT = "drift"  # Postgres differs from what it claims to hold
    ERROR = "error"  # the comparison could not be made
    UNKNOWN = "unknown"  # not compared yet

    @property
    def severity(self) -> int:
        return _SEVERITY.index(self)

    @property
    def is_finding(self) -> bool:
        """Exit code 1 material: not in sync, but compared."""
        return self not in (Status.IN_SYNC, Status.ERROR, Status.UNKNOWN)


# Best to worst: a month's status is the worst of its tables'.
_SEVERITY = (
    Status.IN_SYNC,
    Status.UNKNOWN,
    Status.LAGGING,
    Status.MISSING,
    Status.ORPHANED,
    Status.DRIFT,
    Status.ERROR,
)
# What auto-repair may rewrite: the content is wrong, and Delta has the month.
REPAIRABLE = frozenset({Status.DRIFT, Status.MISSING})
# The state-set values of `reconciler_month_status`, in their exported order.
EXPORTED = (
    Status.IN_SYNC,
    Status.DRIFT,
    Status.LAGGING,
    Status.MISSING,
    Status.ORPHANED,
    Status.ERROR,
    Status.UNKNOWN,
)


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=lambda s: s.severity, default=Status.IN_SYNC)


@dataclass(frozen=True)
class Digest:
    """A month digest as compared: row count and printed digest (None: not computed)."""

    rows: int
    text: str | None = None


@dataclass(frozen=True)
class MonthFacts:
    """Everything `classify` needs about one month of one table."""

    in_delta: bool  # the latest snapshot has the month
    postgres_rows: int
    synced_version: int | None  # Delta version sync state says Postgres holds (None: never)
    latest_version: int  # the latest Delta version read
    delta_changed: bool  # the month differs between the synced version and the latest
    in_flight: bool  # a writer holds the month's lock right now
    expected: Digest | None = None  # what Postgres should hold (recorded, or Delta recomputed)
    postgres: Digest | None = None  # what it holds (None: not computed, counts decided)


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str = ""


def needs_content(facts: MonthFacts) -> bool:
    """Whether the verdict depends on the month's content (counts, then digests)."""
    return (
        facts.synced_version is not None
        and facts.synced_version <= facts.latest_version
        and (facts.in_delta or facts.postgres_rows == 0)
    )


def with_content(
    facts: MonthFacts, *, expected: Digest, postgres: Digest | None = None
) -> MonthFacts:
    return dataclasses.replace(facts, expected=expected, postgres=postgres)


def classify(facts: MonthFacts) -> Verdict:
    """The status of a month from its facts (see `MonthFacts`)."""
    if facts.synced_version is None:
        return _never_synced(facts)
    if facts.synced_version > facts.latest_version:
        return Verdict(
            Status.ERROR,
            f"sync state claims Delta version {facts.synced_version}, but the table's latest "
            f"version is {facts.latest_version}",
        )
    if not facts.in_delta and facts.postgres_rows > 0:
        return Verdict(Status.ORPHANED, f"month absent from Delta version {facts.latest_version}")
    content = _compare_content(facts)
    if content.status is not Status.IN_SYNC:
        return content
    if facts.delta_changed:
        return Verdict(
            Status.LAGGING, f"Delta changed the month after version {facts.synced_version}"
        )
    if facts.in_flight:
        return Verdict(Status.LAGGING, "replication in flight")
    return content


def _never_synced(facts: MonthFacts) -> Verdict:
    if facts.postgres_rows == 0:
        if facts.in_flight:
            return Verdict(Status.LAGGING, "first replication in flight")
        if facts.in_delta:
            return Verdict(Status.MISSING, "month is in Delta, never synced")
        return Verdict(Status.ERROR, "month is neither in Delta nor in Postgres")
    if not facts.in_delta:
        return Verdict(Status.ORPHANED, "rows in Postgres, month absent from Delta, no sync record")
    return Verdict(Status.DRIFT, "rows in Postgres without a sync record")


def _compare_content(facts: MonthFacts) -> Verdict:
    """Counts first, then digests: Postgres against what it should hold."""
    expected, actual = facts.expected, facts.postgres
    if expected is None:
        raise ValueError("classify needs the expected content of a synced month")
    if expected.rows != facts.postgres_rows:
        return Verdict(
            Status.DRIFT,
            f"row counts differ: Delta version {facts.synced_version} has "
            f"{expected.rows}, Postgres has {facts.postgres_rows}",
        )
    if actual is None or expected.text is None or actual.text is None:
        raise ValueError("equal counts: classify needs both digests")
    if expected.text != actual.text:
        return Verdict(Status.DRIFT, f"row hashes differ from Delta version {facts.synced_version}")
    return Verdict(Status.IN_SYNC)
