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

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

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
from replicator.postgres import Database
from replicator.schema import TableSchema, postgres_columns, reconcile_schemas, same_content
from replicator.syncstate import Anchor, SyncState, read_sync_state, replication_in_flight
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


@dataclass
class TableCheck:
    """The outcome of comparing one month of one table (the `check --json` table entry)."""

    table: str
    year_month: str
    status: Status = Status.ERROR
    delta_version: int | None = None
    synced_version: int | None = None
    delta_rows: int | None = None
    postgres_rows: int | None = None
    delta_digest: str | None = None
    postgres_digest: str | None = None
    reason: str = ""
    replication_in_flight: bool = False
    lag_seconds: float = 0.0
    last_sync_timestamp: float | None = None
    consecutive_failures: int = 0
    duration_seconds: float = 0.0
    # The digest work this check did on each side (rows hashed, seconds spent).
    work: dict[str, list[float]] = field(default_factory=dict)
    delta_digest_source: str | None = None  # "recorded" by the writer, or "computed" from Delta
    delta_change: str | None = None  # unchanged | changed | unknown: Delta since the sync
    changed_version: int | None = None  # the first Delta version that changed the month
    # A new anchor proven by this check, for the daemon or `repair` to record, and the sync
    # state it replaces (as read: a sync since then wins).
    reanchor: Anchor | None = field(default=None, repr=False)
    reanchor_from: SyncState | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        document = {
            k: v for k, v in self.__dict__.items() if k not in ("reanchor", "reanchor_from", "work")
        }
        document["reanchored_to"] = self.reanchor.delta_version if self.reanchor else None
        return document


@dataclass
class MonthCheck:
    year_month: str
    tables: list[TableCheck]

    @property
    def status(self) -> Status:
        return worst(t.status for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "year_month": self.year_month,
            "status": self.status,
            "tables": [t.as_dict() for t in self.tables],
        }


def open_snapshot_transaction(
    conn: psycopg.Connection[Any], spec: TableSpec, limits: QueryLimits | None = None
) -> None:
    """Count, digest and sync state must all come from one consistent snapshot.

    The table is locked (ACCESS SHARE) before the snapshot is taken: a partition swapped in
    after the snapshot would otherwise show its month empty to this transaction (its rows are
    newer than the snapshot, the old partition is gone). A writer's swap waits for the check
    instead, at most its lock_timeout per attempt. `limits` bound every query of it."""
    conn.rollback()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
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
    """The sides of one check, with their counts and (once computed) their digests."""

    def __init__(
        self,
        postgres: PostgresSide,
        postgres_as_synced: PostgresSide | None,
        as_synced: MonthSide | None,
        delta_now: DeltaSide,
        delta_now_rows: int | None,
    ) -> None:
        self.postgres, self.postgres_as_synced = postgres, postgres_as_synced
        self.as_synced, self.delta_now = as_synced, delta_now
        self.postgres_rows = postgres.count()
        self.digests: dict[str, MonthDigest] = {}
        self.work: dict[str, list[float]] = {}  # side -> [rows, seconds] of digests computed
        self._delta_now_rows = delta_now_rows

    def _timed(self, side: MonthSide) -> MonthDigest:
        started = time.monotonic()
        digest = side.digest()
        spent = self.work.setdefault("delta" if side.name == "delta" else "postgres", [0, 0.0])
        spent[0] += digest.rows
        spent[1] += time.monotonic() - started
        return digest

    def counts(self) -> dict[str, Digest | None]:
        return {
            "postgres": Digest(self.postgres_rows),
            "postgres_as_synced": Digest(self.postgres_rows) if self.postgres_as_synced else None,
            "as_synced": Digest(self.as_synced.count()) if self.as_synced else None,
            "delta_now": None if self._delta_now_rows is None else Digest(self._delta_now_rows),
        }

    def compute(self, needed: frozenset[Evidence]) -> dict[str, Digest]:
        """Digests of the needed sides; Delta in a thread while Postgres works."""
        delta_side: MonthSide | None = None
        if Evidence.DELTA_NOW in needed:
            delta_side = self.delta_now
        elif Evidence.AS_SYNCED in needed and isinstance(self.as_synced, (DeltaSide, _Readable)):
            delta_side = self.as_synced
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self._timed, delta_side) if delta_side is not None else None
            if Evidence.POSTGRES in needed:
                self.digests["postgres"] = self._timed(self.postgres)
                if self.postgres_as_synced is not None:
                    self.digests["postgres_as_synced"] = self._timed(self.postgres_as_synced)
            if Evidence.AS_SYNCED in needed and self.as_synced is not None:
                if self.as_synced is delta_side and future is not None:
                    self.digests["as_synced"] = future.result()
                else:
                    self.digests["as_synced"] = self.as_synced.digest()
            if Evidence.DELTA_NOW in needed and future is not None:
                self.digests["delta_now"] = future.result()
        return {name: Digest(d.rows, d.hex) for name, d in self.digests.items()}


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
        self,
        spec: TableSpec,
        year_month: YearMonth,
        *,
        conn: psycopg.Connection[Any] | None = None,
        latest: DeltaTableReader | None = None,
        deep: bool = False,
    ) -> TableCheck:
        """Never raises for a data or source problem: those become status `error`.

        `deep` recomputes the Delta side instead of trusting the digest the writer recorded.
        """
        if conn is None:
            # Not reaching Postgres at all is the caller's failure, not this month's status.
            with self.db.connect() as own:
                return self.check(spec, year_month, conn=own, latest=latest, deep=deep)
        started = time.monotonic()
        result = TableCheck(spec.name, str(year_month))
        try:
            reader = latest or self.latest(spec)
            self._check(conn, spec, year_month, reader, result, deep)
        except NotMigratedError:
            raise  # nothing can be compared in this database: the caller says so, once
        except ReplicationError as exc:
            result.status, result.reason = Status.ERROR, str(exc)
        except psycopg.Error as exc:
            failure = self.db.translate(exc, "Postgres failed")
            if isinstance(failure, NotMigratedError):
                raise failure from None
            result.status, result.reason = Status.ERROR, str(failure)
        finally:
            if not conn.closed:
                conn.rollback()
        result.duration_seconds = time.monotonic() - started
        logger.debug(
            "checked %s %s: %s",
            spec.name,
            year_month,
            result.status,
            extra={"table": spec.name, "year_month": str(year_month), "status": result.status},
        )
        return result

    def _check(
        self,
        conn: psycopg.Connection[Any],
        spec: TableSpec,
        year_month: YearMonth,
        latest: DeltaTableReader,
        result: TableCheck,
        deep: bool,
    ) -> None:
        open_snapshot_transaction(conn, spec, self.limits)
        state = read_sync_state(conn, spec.name, str(year_month))
        synced = state.delta_version if state else None
        landed_since = synced is not None and synced > latest.version
        if landed_since and state is not None and state.delta_table_id in (None, latest.table_id):
            # A replication landed after this snapshot of Delta was read: read it again.
            latest = self.latest(spec)
        result.delta_version = latest.version
        result.replication_in_flight = replication_in_flight(conn, spec, year_month)
        if state is not None:
            result.synced_version = synced
            result.consecutive_failures = state.consecutive_failures
            if state.synced_at is not None:
                result.last_sync_timestamp = state.synced_at.timestamp()
        pg_columns = postgres_columns(conn, spec)
        schema = reconcile_schemas(
            spec, latest.columns(), pg_columns, recorded=state.content_schema if state else None
        )
        change = self._change(latest, state, year_month)
        result.delta_change = change.kind.value if synced is not None else None
        result.changed_version = change.since_version
        postgres = PostgresSide(conn, schema, year_month, limits=self.limits)
        contents = self._contents(postgres, schema, latest, state, change, year_month, deep)
        result.work = contents.work
        result.postgres_rows = contents.postgres_rows
        same_table = state is not None and state.delta_table_id in (None, latest.table_id)
        facts = MonthFacts(
            in_delta=latest.has_month(year_month),
            postgres_rows=contents.postgres_rows,
            synced_version=synced,
            latest_version=latest.version,
            change=change.kind,
            in_flight=result.replication_in_flight,
            sync_ahead=synced is not None and synced > latest.version and same_table,
            change_reason=change.reason,
            schema_changed=contents.postgres_as_synced is not None,
            **contents.counts(),
        )
        verdict = self._decide(facts, contents, postgres)
        self._apply(result, verdict, facts, contents, change, latest, year_month, state, schema)

    def _change(
        self, latest: DeltaTableReader, state: SyncState | None, year_month: YearMonth
    ) -> MonthChange:
        if state is None or state.delta_version is None:
            return MonthChange(
                ChangeKind.CHANGED, pending_since=latest.month_written_at(year_month)
            )
        return latest.month_change(
            year_month,
            version=state.delta_version,
            table_id=state.delta_table_id,
            files=state.delta_files,
        )

    def _contents(
        self,
        postgres: PostgresSide,
        schema: TableSchema,
        latest: DeltaTableReader,
        state: SyncState | None,
        change: MonthChange,
        year_month: YearMonth,
        deep: bool,
    ) -> _Contents:
        batch_rows = self.settings.postgres.batch_rows
        workers = self.settings.digest.delta_workers
        delta_now = DeltaSide(latest, schema, year_month, batch_rows, workers=workers)
        as_synced: MonthSide | None = None
        postgres_as_synced: PostgresSide | None = None
        if state is not None and state.delta_version is not None:
            recorded = RecordedSide.of(state)
            comparable = state.content_schema is None or same_content(state.content_schema, schema)
            if recorded is not None and not comparable and state.content_schema is not None:
                # Compare Postgres under the columns of the sync with what was recorded then.
                old = schema.restricted_to(state.content_schema)
                if old is not None:
                    postgres_as_synced = PostgresSide(
                        postgres.conn, old, year_month, limits=self.limits
                    )
                else:
                    recorded = None
            if deep and change.kind is ChangeKind.CHANGED and comparable:
                # A deep check re-reads what the sync copied, when that version still exists.
                held = latest.loadable_version(state.delta_version)
                if held is not None:
                    held_schema = reconcile_schemas(
                        schema.spec, held.columns(), _columns_of(schema)
                    )
                    as_synced = _Readable(
                        DeltaSide(held, held_schema, year_month, batch_rows, workers=workers),
                        recorded,
                    )
            if as_synced is None and not (deep and change.kind is ChangeKind.UNCHANGED):
                as_synced = recorded
        return _Contents(
            postgres, postgres_as_synced, as_synced, delta_now, latest.month_row_count(year_month)
        )

    def _decide(self, facts: MonthFacts, contents: _Contents, postgres: PostgresSide) -> Verdict:
        if not needs_content(facts):
            return classify(facts)
        for _ in range(len(Evidence) + 1):
            try:
                return classify(facts)
            except Undecided as undecided:
                if not self._hash_verified:
                    postgres.verify_hash_function()
                    self._hash_verified = True
                facts = with_digests(facts, **contents.compute(undecided.needed))
        raise RuntimeError("classify kept asking for digests it was given")  # a bug, not data

    def _apply(
        self,
        result: TableCheck,
        verdict: Verdict,
        facts: MonthFacts,
        contents: _Contents,
        change: MonthChange,
        latest: DeltaTableReader,
        year_month: YearMonth,
        state: SyncState | None,
        schema: TableSchema,
    ) -> None:
        result.status, result.reason = verdict.status, verdict.reason
        digests = contents.digests
        expected = digests.get("delta_now") or digests.get("as_synced")
        if expected is not None:
            result.delta_digest = expected.hex
            recorded = isinstance(contents.as_synced, RecordedSide) or (
                isinstance(contents.as_synced, _Readable) and contents.as_synced.fell_back
            )
            result.delta_digest_source = (
                "recorded" if "delta_now" not in digests and recorded else "computed"
            )
        if "postgres" in digests:
            result.postgres_digest = digests["postgres"].hex
        # The rows of the Delta content Postgres was compared with.
        compared = digests.get("delta_now") or facts.as_synced or facts.delta_now
        result.delta_rows = compared.rows if compared is not None else None
        if verdict.status in (Status.LAGGING, Status.MISSING) and change.changed:
            pending = change.pending_since
            if change.kind is ChangeKind.UNKNOWN and state is not None:
                pending = _first_file_after(latest, year_month, state)
            result.lag_seconds = MonthChange(change.kind, pending_since=pending).lag_seconds()
        if verdict.verified and state is not None and "delta_now" in digests:
            now = digests["delta_now"]
            anchor = Anchor(
                delta_version=latest.version,
                delta_table_id=latest.table_id,
                delta_files=latest.month_fingerprint(year_month),
                content_schema=schema.content_schema,
                content_digest=now.hex,
                row_count=now.rows,
            )
            held = (state.delta_table_id, state.delta_files, state.content_schema)
            fresh = (anchor.delta_table_id, anchor.delta_files, anchor.content_schema)
            if held != fresh or state.content_digest != anchor.content_digest:
                result.reanchor, result.reanchor_from = anchor, state

    def check_month(
        self, year_month: YearMonth, tables: tuple[TableSpec, ...], *, deep: bool = False
    ) -> MonthCheck:
        with self.db.connect() as conn:
            return MonthCheck(
                str(year_month),
                [self.check(spec, year_month, conn=conn, deep=deep) for spec in tables],
            )


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
