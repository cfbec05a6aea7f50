"""Checking one month of one table: gather the facts, let `verdict.classify` decide.

Postgres is read in one REPEATABLE READ snapshot (sync state, count, digests). What Delta did to
the month since the sync comes from the Delta protocol (`DeltaTableReader.month_change`). Counts
are gathered first; `classify` asks for the digests it needs (`Undecided`), and only those are
computed: a month unchanged in Delta is compared with the digest the writer recorded, without
reading Delta; a deep check recomputes the Delta side. When Postgres is proven equal to the
latest Delta snapshot under a different identity than the anchor (a new table id, file set or
schema), the result carries the new anchor for the daemon (or `repair`) to record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from reconciler.findings import Standing, read_standing
from reconciler.record import DigestSource, MonthRecord
from reconciler.sides import DeltaSide, MonthSide, PostgresSide, QueryLimits, RecordedSide
from reconciler.verdict import (
    Digest,
    Evidence,
    MonthFacts,
    Status,
    Undecided,
    Verdict,
    classify,
    needs_content,
    with_digests,
    worst,
)
from replicator.config import Settings, TableSpec
from replicator.contract import MonthDigest
from replicator.delta import ChangeKind, DeltaTableReader, MonthChange
from replicator.errors import DeltaError, NotMigratedError, ReplicationError
from replicator.month import Month
from replicator.postgres import Database, Session
from replicator.schema import TableSchema, postgres_columns, reconcile_schemas, same_content
from replicator.syncstate import Anchor, SyncState, read_sync_state, replication_in_flight
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)

# Side -> [rows digested, seconds spent, CPU seconds of this process]: the digest work of one
# check, for pacing and metrics (the Delta side's CPU is what `daemon.deep_check_budget` caps).
DigestWork = dict[str, list[float]]


@dataclass(frozen=True)
class Reanchor:
    """A new anchor a check proved (Postgres equals the latest Delta snapshot under another
    identity), and the sync state it replaces, as read: a sync since then wins."""

    anchor: Anchor
    replaces: SyncState


@dataclass(frozen=True)
class CheckResult:
    """A check's record, with what only the daemon and `repair` use: the digest work done, the
    re-anchoring it proved, and the sync state it read."""

    record: MonthRecord
    deep: bool = False
    work: DigestWork = field(default_factory=dict)
    reanchor: Reanchor | None = None
    sync: SyncState | None = None

    @property
    def status(self) -> Status:
        return self.record.status

    @property
    def month(self) -> Month:
        return self.record.month

    def as_json(self) -> dict[str, Any]:
        anchor = self.reanchor.anchor.delta_version if self.reanchor else None
        return {**self.record.as_json(), "reanchored_to": anchor}


@dataclass
class MonthCheck:
    """The checks of one month, one per table (`check --json`)."""

    year_month: YearMonth
    results: list[CheckResult]

    @property
    def status(self) -> Status:
        return worst(r.status for r in self.results)

    def as_json(self) -> dict[str, Any]:
        return {
            "year_month": str(self.year_month),
            "status": str(self.status),
            "tables": [r.as_json() for r in self.results],
        }


def open_snapshot_transaction(
    conn: Session, spec: TableSpec, limits: QueryLimits | None = None
) -> None:
    """Count, digest and sync state must all come from one consistent snapshot.

    The table is locked (ACCESS SHARE) before the snapshot is taken: a partition swapped in
    after the snapshot would otherwise show its month empty to this transaction (its rows are
    newer than the snapshot, the old partition is gone). A writer's swap waits for the check
    instead, at most its lock_timeout per attempt. `limits` bound every query of it."""
    conn.begin_snapshot(read_only=True)
    table = sql.Identifier(spec.postgres_schema, spec.postgres_table)
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(table))
    if limits is not None:
        limits.apply(conn)


class _Readable(MonthSide):
    """Delta at the synced version, re-read by a deep check; when its files were vacuumed since,
    the digest the writer recorded of them stands in (and says so)."""

    name = "delta"

    def __init__(self, old: DeltaSide, recorded: RecordedSide | None) -> None:
        self.old, self.recorded = old, recorded
        self.fell_back = False

    def count(self) -> int:
        return self.recorded.count() if self.recorded is not None else self.old.count()

    def digest(self) -> MonthDigest:
        try:
            return self.old.digest()
        except DeltaError:
            if self.recorded is None:
                raise
            self.fell_back = True
            return self.recorded.digest()


class _Contents:
    """The sides of one check by the evidence each gives, with their counts and (once
    computed) their digests."""

    def __init__(self, sides: Mapping[Evidence, MonthSide], delta_now_rows: int | None) -> None:
        self.sides = dict(sides)
        self.postgres_rows = self.sides[Evidence.POSTGRES].count()
        self.digests: dict[Evidence, MonthDigest] = {}
        self.work: DigestWork = {}
        self._delta_now_rows = delta_now_rows

    def side(self, evidence: Evidence) -> MonthSide | None:
        return self.sides.get(evidence)

    def _timed(self, side: MonthSide) -> MonthDigest:
        started, cpu = time.monotonic(), time.process_time()
        digest = side.digest()
        key = "delta" if side.name == "delta" else "postgres"
        spent = self.work.setdefault(key, [0, 0.0, 0.0])
        spent[0] += digest.rows
        spent[1] += time.monotonic() - started
        spent[2] += time.process_time() - cpu
        return digest

    def counts(self) -> dict[Evidence, Digest | None]:
        as_synced = self.side(Evidence.AS_SYNCED)
        return {
            Evidence.POSTGRES: Digest(self.postgres_rows),
            Evidence.POSTGRES_AS_SYNCED: Digest(self.postgres_rows)
            if Evidence.POSTGRES_AS_SYNCED in self.sides
            else None,
            Evidence.AS_SYNCED: Digest(as_synced.count()) if as_synced else None,
            Evidence.DELTA_NOW: None
            if self._delta_now_rows is None
            else Digest(self._delta_now_rows),
        }

    def compute(self, needed: frozenset[Evidence]) -> dict[Evidence, Digest]:
        """Digests of the needed sides; Delta in a thread while Postgres works."""
        wanted = set(needed)
        if Evidence.POSTGRES in wanted and Evidence.POSTGRES_AS_SYNCED in self.sides:
            wanted.add(Evidence.POSTGRES_AS_SYNCED)
        on_delta = [e for e in wanted if self.sides.get(e) is not None and _reads_delta(e, self)]
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = {e: pool.submit(self._timed, self.sides[e]) for e in on_delta}
            for evidence in wanted - set(on_delta):
                side = self.sides.get(evidence)
                if side is not None:
                    self.digests[evidence] = (
                        side.digest() if isinstance(side, RecordedSide) else self._timed(side)
                    )
            for evidence, future in futures.items():
                self.digests[evidence] = future.result()
        return {e: Digest(d.rows, d.hex) for e, d in self.digests.items()}

    @property
    def recorded_digest_used(self) -> bool:
        side = self.side(Evidence.AS_SYNCED)
        return isinstance(side, RecordedSide) or (isinstance(side, _Readable) and side.fell_back)


def _reads_delta(evidence: Evidence, contents: _Contents) -> bool:
    return isinstance(contents.sides.get(evidence), (DeltaSide, _Readable))


@dataclass
class _Month:
    """What one check has read so far."""

    month: Month
    conn: Session
    latest: DeltaTableReader
    state: SyncState | None
    in_flight: bool
    schema: TableSchema
    change: MonthChange
    deep: bool = False
    standing: Standing | None = None

    @property
    def synced(self) -> int | None:
        return self.state.delta_version if self.state else None


class Checker:
    """Checks months of configured tables against one database."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._hash_verified = False
        self.limits = QueryLimits.of(settings.digest)

    @classmethod
    def for_settings(cls, settings: Settings) -> Checker:
        return cls(Database.for_settings(settings, "reconciler"), settings)

    def latest(self, spec: TableSpec) -> DeltaTableReader:
        return DeltaTableReader(
            spec, self.settings.table_uri(spec), self.settings.delta.storage_options
        )

    def check(
        self, month: Month, *, deep: bool = False, latest: DeltaTableReader | None = None
    ) -> MonthRecord:
        """The month's record; see `examine`."""
        return self.examine(month, latest=latest, deep=deep).record

    def examine(
        self,
        month: Month,
        *,
        conn: Session | None = None,
        latest: DeltaTableReader | None = None,
        deep: bool = False,
    ) -> CheckResult:
        """Never raises for a data or source problem: those become status `error`.

        `deep` recomputes the Delta side instead of trusting the digest the writer recorded.
        """
        if conn is None:
            # Not reaching Postgres at all is the caller's failure, not this month's status.
            with self.db.session() as own:
                return self.examine(month, conn=own, latest=latest, deep=deep)
        started = time.monotonic()
        try:
            result = self._check(conn, month, latest or self.latest(month.spec), deep)
        except NotMigratedError:
            raise  # nothing can be compared in this database: the caller says so, once
        except ReplicationError as exc:
            result = CheckResult(MonthRecord(month, Status.ERROR, str(exc)), deep)
        finally:
            conn.rollback()
        record = result.record
        result = CheckResult(
            dataclasses.replace(
                record,
                checked_at=dt.datetime.now(dt.UTC),
                duration_seconds=time.monotonic() - started,
            ),
            deep,
            result.work,
            result.reanchor,
            result.sync,
        )
        logger.debug(
            "checked %s: %s", month, record.status, extra={**month.log, "status": record.status}
        )
        return result

    def _check(
        self, conn: Session, month: Month, latest: DeltaTableReader, deep: bool
    ) -> CheckResult:
        open_snapshot_transaction(conn, month.spec, self.limits)
        state = read_sync_state(conn, month)
        synced = state.delta_version if state else None
        landed_since = synced is not None and synced > latest.version
        if landed_since and state is not None and state.delta_table_id in (None, latest.table_id):
            # A replication landed after this snapshot of Delta was read: read it again.
            latest = self.latest(month.spec)
        schema = reconcile_schemas(
            month.spec,
            latest.columns(),
            postgres_columns(conn, month.spec),
            recorded=state.content_schema if state else None,
        )
        seen = _Month(
            month,
            conn,
            latest,
            state,
            replication_in_flight(conn, month),
            schema,
            _change(latest, state, month),
            deep,
            read_standing(conn, month, state),
        )
        contents = self._contents(seen, deep)
        facts = self._facts(seen, contents)
        verdict = self._decide(facts, contents)
        return CheckResult(
            self._record(seen, verdict, facts, contents),
            deep,
            contents.work,
            self._reanchor(seen, verdict, contents),
            state,
        )

    def _facts(self, seen: _Month, contents: _Contents) -> MonthFacts:
        state, latest = seen.state, seen.latest
        same_table = state is not None and state.delta_table_id in (None, latest.table_id)
        counts = contents.counts()
        return MonthFacts(
            in_delta=latest.has_month(seen.month.year_month),
            postgres_rows=contents.postgres_rows,
            synced_version=seen.synced,
            latest_version=latest.version,
            change=seen.change.kind,
            in_flight=seen.in_flight,
            sync_ahead=seen.synced is not None and seen.synced > latest.version and same_table,
            change_reason=seen.change.reason,
            schema_changed=Evidence.POSTGRES_AS_SYNCED in contents.sides,
            postgres=counts[Evidence.POSTGRES],
            postgres_as_synced=counts[Evidence.POSTGRES_AS_SYNCED],
            as_synced=counts[Evidence.AS_SYNCED],
            delta_now=counts[Evidence.DELTA_NOW],
            deep=seen.deep,
            standing_drift=seen.standing.reason if seen.standing else None,
        )

    def _contents(self, seen: _Month, deep: bool) -> _Contents:
        batch_rows = self.settings.postgres.batch_rows
        workers = self.settings.digest.delta_workers
        month, schema, state = seen.month, seen.schema, seen.state
        sides: dict[Evidence, MonthSide] = {
            Evidence.POSTGRES: PostgresSide(seen.conn, schema, month, limits=self.limits),
            Evidence.DELTA_NOW: DeltaSide(seen.latest, schema, month, batch_rows, workers=workers),
        }
        if state is not None and state.delta_version is not None:
            recorded = RecordedSide.of(state)
            comparable = state.content_schema is None or same_content(state.content_schema, schema)
            if recorded is not None and not comparable and state.content_schema is not None:
                # Compare Postgres under the columns of the sync with what was recorded then.
                old = schema.restricted_to(state.content_schema)
                if old is not None:
                    sides[Evidence.POSTGRES_AS_SYNCED] = PostgresSide(
                        seen.conn, old, month, limits=self.limits
                    )
                else:
                    recorded = None
            as_synced: MonthSide | None = None
            if deep and seen.change.kind is ChangeKind.CHANGED and comparable:
                # A deep check re-reads what the sync copied, when that version still exists.
                held = seen.latest.loadable_version(state.delta_version)
                if held is not None:
                    held_schema = reconcile_schemas(month.spec, held.columns(), _columns_of(schema))
                    old_side = DeltaSide(held, held_schema, month, batch_rows, workers=workers)
                    as_synced = _Readable(old_side, recorded)
            if as_synced is None and not (deep and seen.change.kind is ChangeKind.UNCHANGED):
                as_synced = recorded
            if as_synced is not None:
                sides[Evidence.AS_SYNCED] = as_synced
        return _Contents(sides, seen.latest.month_row_count(month.year_month))

    def _decide(self, facts: MonthFacts, contents: _Contents) -> Verdict:
        if not needs_content(facts):
            return classify(facts)
        for _ in range(len(Evidence) + 1):
            try:
                return classify(facts)
            except Undecided as undecided:
                if not self._hash_verified:
                    postgres = contents.sides[Evidence.POSTGRES]
                    assert isinstance(postgres, PostgresSide)
                    postgres.verify_hash_function()
                    self._hash_verified = True
                facts = with_digests(facts, contents.compute(undecided.needed))
        raise RuntimeError("classify kept asking for digests it was given")  # a bug, not data

    def _record(
        self, seen: _Month, verdict: Verdict, facts: MonthFacts, contents: _Contents
    ) -> MonthRecord:
        digests, state = contents.digests, seen.state
        expected = digests.get(Evidence.DELTA_NOW) or digests.get(Evidence.AS_SYNCED)
        source: DigestSource | None = None
        if expected is not None:
            recorded = Evidence.DELTA_NOW not in digests and contents.recorded_digest_used
            source = DigestSource.RECORDED if recorded else DigestSource.COMPUTED
        postgres = digests.get(Evidence.POSTGRES)
        # The rows of the Delta content Postgres was compared with.
        compared = digests.get(Evidence.DELTA_NOW) or facts.as_synced or facts.delta_now
        lag = 0.0
        change = seen.change
        if verdict.status in (Status.LAGGING, Status.MISSING) and change.changed:
            pending = change.pending_since
            if change.kind is ChangeKind.UNKNOWN and state is not None:
                pending = _first_file_after(seen.latest, seen.month.year_month, state)
            lag = MonthChange(change.kind, pending_since=pending).lag_seconds()
        return MonthRecord(
            seen.month,
            verdict.status,
            verdict.reason,
            delta_version=seen.latest.version,
            synced_version=seen.synced,
            delta_rows=compared.rows if compared is not None else None,
            postgres_rows=contents.postgres_rows,
            delta_digest=expected.hex if expected is not None else None,
            postgres_digest=postgres.hex if postgres is not None else None,
            delta_digest_source=source,
            delta_change=change.kind if seen.synced is not None else None,
            changed_version=change.since_version,
            replication_in_flight=seen.in_flight,
            lag_seconds=lag,
            last_sync_at=state.synced_at if state else None,
            consecutive_failures=state.consecutive_failures if state else 0,
            last_failure=state.last_failure_reason if state else None,
        )

    def _reanchor(self, seen: _Month, verdict: Verdict, contents: _Contents) -> Reanchor | None:
        now = contents.digests.get(Evidence.DELTA_NOW)
        state, latest = seen.state, seen.latest
        if not verdict.verified or state is None or now is None:
            return None
        anchor = Anchor(
            delta_version=latest.version,
            delta_table_id=latest.table_id,
            delta_files=latest.month_fingerprint(seen.month.year_month),
            content_schema=seen.schema.content_schema,
            content_digest=now.hex,
            row_count=now.rows,
            delta_schema=latest.identity,
            delta_commit_ms=latest.commit_timestamp(latest.version),
        )
        held = (state.delta_table_id, state.delta_files, state.content_schema, state.delta_schema)
        fresh = (
            anchor.delta_table_id,
            anchor.delta_files,
            anchor.content_schema,
            anchor.delta_schema,
        )
        if held != fresh or state.content_digest != anchor.content_digest:
            return Reanchor(anchor, state)
        return None

    def check_month(
        self, year_month: YearMonth, tables: tuple[TableSpec, ...], *, deep: bool = False
    ) -> MonthCheck:
        with self.db.session() as conn:
            return MonthCheck(
                year_month,
                [self.examine(Month.of(spec, year_month), conn=conn, deep=deep) for spec in tables],
            )


def _change(latest: DeltaTableReader, state: SyncState | None, month: Month) -> MonthChange:
    if state is None or state.delta_version is None:
        return MonthChange(
            ChangeKind.CHANGED, pending_since=latest.month_written_at(month.year_month)
        )
    return latest.month_change(month.year_month, state.since())


def _columns_of(schema: TableSchema) -> list[tuple[str, str, bool]]:
    """A schema's columns as `postgres_columns` lists them (to match an older Delta version)."""
    return [(c.name, c.postgres_type, c.nullable) for c in schema.columns]


def _first_file_after(latest: DeltaTableReader, year_month: YearMonth, state: SyncState) -> float:
    """When the commits since the sync are gone, the lag starts at the oldest file of the month
    written after the sync (or at the sync itself)."""
    since = state.verified_at or state.synced_at
    floor = since.timestamp() if since is not None else time.time()
    later = [
        f.modification_time_ms / 1000.0
        for f in latest.month_files(year_month)
        if f.modification_time_ms / 1000.0 > floor
    ]
    return min(later) if later else floor
