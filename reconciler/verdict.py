"""The verdict on one month of one table: its `Status`, decided by a pure `classify(facts)`.

`check` gathers the facts: sync state (the anchor), what Delta did to the month since the
anchor (by the Delta protocol: unchanged, changed, or unknown when the commits cannot be read)
and the counts of up to three contents — what the sync vouched for, what Postgres holds now,
what Delta holds now. `classify` decides from them; when counts alone cannot decide it raises
`Undecided` naming the digests it needs, `check` computes just those and asks again. So every
rule that chooses between two statuses is in this file, with table-driven tests.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from replicator.delta import ChangeKind


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
        """Worse is higher; also the exported `reconciler_month_status_code`."""
        return _SEVERITY.index(self)

    @property
    def code(self) -> int:
        """The number `reconciler_month_status_code` exports (its severity)."""
        return self.severity

    @classmethod
    def by_severity(cls) -> tuple[Status, ...]:
        """Every status, best to worst (the order of their codes)."""
        return _SEVERITY

    @property
    def completed(self) -> bool:
        """A comparison with this outcome was made (an error is one that could not be)."""
        return self is not Status.ERROR

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
    """One content of the month: its row count, and its digest once computed."""

    rows: int
    text: str | None = None  # None: only the count is known yet


class Evidence(enum.Enum):
    """The contents a verdict may rest on; each names its `MonthFacts` field."""

    POSTGRES = "postgres"  # what Postgres holds now
    # Postgres now under the columns of the sync (computed with POSTGRES when they differ)
    POSTGRES_AS_SYNCED = "postgres_as_synced"
    AS_SYNCED = "as_synced"  # what the sync vouched for (recorded, or Delta at that version)
    DELTA_NOW = "delta_now"  # what the latest Delta snapshot holds


class Undecided(Exception):
    """`classify` cannot decide from counts alone: it needs these digests."""

    def __init__(self, needed: frozenset[Evidence]) -> None:
        super().__init__(", ".join(sorted(e.value for e in needed)))
        self.needed = needed


@dataclass(frozen=True)
class MonthFacts:
    """Everything `classify` needs about one month of one table."""

    in_delta: bool  # the latest snapshot has rows of the month
    postgres_rows: int
    synced_version: int | None  # Delta version the sync anchored (None: never synced)
    latest_version: int  # the latest Delta version read
    change: ChangeKind  # what Delta did to the month's data since the anchor
    in_flight: bool  # a writer holds the month's lock right now
    sync_ahead: bool = False  # the anchor names a version newer than this table's latest
    change_reason: str = ""
    postgres: Digest | None = None  # Postgres now, under the current columns
    # Postgres now under the columns of the sync, when they differ from today's (a column was
    # added or renamed since); compared with `as_synced` instead of `postgres`.
    postgres_as_synced: Digest | None = None
    as_synced: Digest | None = None  # None: nothing comparable to the sync is known
    delta_now: Digest | None = None
    schema_changed: bool = False  # the sync's digest was computed under other columns
    deep: bool = False  # the Delta side is recomputed from the data, whatever the log says
    # A drift a deep check found for this same anchor (month_check): it stands until a repair,
    # a new sync or a new deep check says otherwise, never cleared by a plain check.
    standing_drift: str | None = None


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str = ""
    # Postgres was proven equal to the latest Delta snapshot's month: sync state may be
    # re-anchored to it (see docs/hash-contract.md, "Re-anchoring").
    verified: bool = False


def same(a: Digest | None, b: Digest | None) -> bool | None:
    """Whether two contents are equal; None when that needs a digest not computed yet."""
    if a is None or b is None:
        return None
    if a.rows != b.rows:
        return False
    if a.text is None or b.text is None:
        return None
    return a.text == b.text


def needs_content(facts: MonthFacts) -> bool:
    """Whether the verdict depends on the month's content (counts, then digests)."""
    return (
        facts.synced_version is not None
        and not facts.sync_ahead
        and (facts.in_delta or facts.postgres_rows == 0)
    )


def classify(facts: MonthFacts) -> Verdict:
    """The status of a month from its facts (see `MonthFacts`); `Undecided` when counts
    cannot decide and digests are needed."""
    verdict = _classify(facts)
    if verdict.status is Status.IN_SYNC and facts.standing_drift and not facts.deep:
        return Verdict(
            Status.DRIFT,
            f"{facts.standing_drift} (found by a deep check; it stands until a repair, a new "
            "sync or a new deep check)",
        )
    return verdict


def _classify(facts: MonthFacts) -> Verdict:
    if facts.synced_version is None:
        return _never_synced(facts)
    if facts.sync_ahead:
        return Verdict(
            Status.ERROR,
            f"sync state claims Delta version {facts.synced_version}, but the table's latest "
            f"version is {facts.latest_version}",
        )
    if not facts.in_delta and facts.postgres_rows > 0:
        return Verdict(Status.ORPHANED, f"month absent from Delta version {facts.latest_version}")
    held = facts.postgres_as_synced if facts.schema_changed else facts.postgres
    as_synced = same(held, facts.as_synced)
    as_now = same(facts.postgres, facts.delta_now)
    if facts.change is ChangeKind.UNCHANGED:
        return _unchanged(facts, as_synced, as_now)
    if facts.change is ChangeKind.CHANGED:
        if as_synced:
            return _changed_but_held(facts, as_now)
        if as_synced is None and facts.as_synced is not None:
            raise Undecided(frozenset({Evidence.POSTGRES, Evidence.AS_SYNCED}))
        return _against_now(facts, as_now)
    # UNKNOWN: the commits since the sync cannot be read. Three digests decide, no guess.
    if as_now is None:
        raise Undecided(frozenset({Evidence.POSTGRES, Evidence.DELTA_NOW}))
    if as_now:
        return _verified(facts)
    if as_synced is None and facts.as_synced is not None:
        raise Undecided(frozenset({Evidence.POSTGRES, Evidence.AS_SYNCED}))
    if as_synced:
        return Verdict(
            Status.LAGGING,
            f"{facts.change_reason}; Postgres holds the month as synced at version "
            f"{facts.synced_version}, Delta's latest differs",
        )
    return _drift(facts, facts.delta_now)


def _changed_but_held(facts: MonthFacts, as_now: bool | None) -> Verdict:
    """Delta rewrote the month and Postgres holds what was synced: lagging, unless the rewrite
    wrote the same rows (a whole-table overwrite, a REPLACE keeping the table id), which the
    digest of the latest version proves (then the anchor moves there)."""
    lagging = Verdict(Status.LAGGING, facts.change_reason or "Delta changed the month")
    if facts.in_flight:
        return lagging
    if facts.delta_now is not None and facts.delta_now.rows != facts.postgres_rows:
        return lagging  # other rows, by the count alone
    if as_now is None:
        raise Undecided(frozenset({Evidence.POSTGRES, Evidence.DELTA_NOW}))
    return _verified(facts) if as_now else lagging


def _unchanged(facts: MonthFacts, as_synced: bool | None, as_now: bool | None) -> Verdict:
    """Delta's data is what was synced: Postgres must equal it, by either digest."""
    if facts.schema_changed or facts.as_synced is None:
        # Never compared against a digest recorded under other columns: recompute.
        if as_now is None:
            raise Undecided(frozenset({Evidence.POSTGRES, Evidence.DELTA_NOW}))
        if not as_now:
            return _drift(facts, facts.delta_now)
        if facts.in_flight:
            return Verdict(Status.LAGGING, "replication in flight")
        return _verified(facts)
    decided = as_now if as_now is not None else as_synced
    if decided is None:
        raise Undecided(frozenset({Evidence.POSTGRES, Evidence.AS_SYNCED}))
    if not decided:
        # The month is unchanged since the sync: the latest version holds what was synced.
        return _drift(facts, facts.delta_now if as_now is not None else facts.as_synced)
    if facts.in_flight:
        return Verdict(Status.LAGGING, "replication in flight")
    return Verdict(Status.IN_SYNC, verified=as_now is True)


def _against_now(facts: MonthFacts, as_now: bool | None) -> Verdict:
    """Delta moved on and Postgres does not hold what was synced: is it the new content?"""
    if as_now is None:
        raise Undecided(frozenset({Evidence.POSTGRES, Evidence.DELTA_NOW}))
    if as_now:
        return _verified(facts)
    if facts.as_synced is not None:
        return _drift(facts, facts.as_synced, f"Delta version {facts.synced_version}, synced")
    return _drift(facts, facts.delta_now)


def _verified(facts: MonthFacts) -> Verdict:
    reason = f"verified against Delta version {facts.latest_version}"
    if facts.change_reason:
        reason = f"{facts.change_reason}; {reason}"
    return Verdict(Status.IN_SYNC, reason, verified=True)


def _drift(facts: MonthFacts, expected: Digest | None, what: str = "") -> Verdict:
    """Drift, named against the content compared: by default the latest version's."""
    what = what or f"Delta version {facts.latest_version}"
    held = (
        facts.postgres_as_synced
        if facts.schema_changed and expected is facts.as_synced
        else facts.postgres
    )
    if expected is not None and held is not None and expected.rows != held.rows:
        return Verdict(
            Status.DRIFT, f"row counts differ: {what} has {expected.rows}, Postgres has {held.rows}"
        )
    return Verdict(Status.DRIFT, f"row hashes differ from {what}")


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


def with_digests(facts: MonthFacts, digests: Mapping[Evidence, Digest]) -> MonthFacts:
    return dataclasses.replace(facts, **{e.value: d for e, d in digests.items()})  # type: ignore[arg-type]


@dataclass(frozen=True)
class ReportFacts:
    """What `reconciler status` knows of a month without comparing anything: the daemon's last
    finding, sync state and what the Delta log says since the sync."""

    found: Status | None  # the daemon's last finding (None: never compared)
    found_reason: str = ""
    synced_since_finding: bool = False  # a replication landed after the finding
    delta_readable: bool = True
    change: ChangeKind | None = None  # what Delta did since the sync (None: never synced)
    change_reason: str = ""


# Findings a Delta change since the sync turns into lag: what the comparison found of the
# content is no longer what Delta holds. (A drift stands; a month absent from Delta stays
# orphaned, never synced missing, and an error is still one, whatever Delta did since.)
_CHANGE_MEANS_LAG = frozenset({Status.IN_SYNC, Status.UNKNOWN, Status.LAGGING})


def reported(facts: ReportFacts) -> Verdict:
    """The status a report shows: `in_sync` only when everything vouches for it (the daemon
    found it in sync after its latest sync, and Delta has not changed it since)."""
    found = Verdict(Status.UNKNOWN)
    if facts.found is not None:
        found = Verdict(facts.found, "" if facts.found is Status.IN_SYNC else facts.found_reason)
    if facts.synced_since_finding:
        found = Verdict(Status.UNKNOWN, "synced since the daemon's last check")
    if not facts.delta_readable:
        return Verdict(Status.ERROR, "the Delta table cannot be read")
    if facts.change is ChangeKind.CHANGED and found.status in _CHANGE_MEANS_LAG:
        return Verdict(Status.LAGGING, facts.change_reason)
    if facts.change is ChangeKind.UNKNOWN and found.status is Status.IN_SYNC:
        return Verdict(Status.UNKNOWN, f"{facts.change_reason}: the daemon will recompute it")
    return found
