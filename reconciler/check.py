"""Checking one month of one table: gather the facts, let `verdict.classify` decide.

Postgres is read in one REPEATABLE READ snapshot (sync state, count, digest). What Postgres should
hold is the digest the writer recorded at sync (`RecordedSide`) or, for a deep check, the Delta
snapshot it claims to hold recomputed (`DeltaSide`). Counts are compared before digests, and
digests are computed only when the verdict needs them.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from reconciler.sides import DeltaSide, MonthSide, PostgresSide, RecordedSide
from reconciler.verdict import (
    Digest,
    MonthFacts,
    Status,
    Verdict,
    classify,
    needs_content,
    with_content,
    worst,
)
from replicator.config import Settings, TableSpec
from replicator.delta import DeltaTableReader, MonthChange
from replicator.errors import ReplicationError
from replicator.postgres import Database
from replicator.schema import postgres_columns, reconcile_schemas
from replicator.syncstate import SyncState, read_sync_state, replication_in_flight
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
    delta_digest_source: str | None = None  # "computed" from Delta, or "recorded" by the writer

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


def open_snapshot_transaction(conn: psycopg.Connection[Any]) -> None:
    """Count, digest and sync state must all come from one consistent snapshot."""
    conn.rollback()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True


class Checker:
    """Checks months of configured tables against one database."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._hash_verified = False

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

        `deep` recomputes the Delta digest instead of trusting the one the writer recorded.
        """
        started = time.monotonic()
        result = TableCheck(spec.name, str(year_month))
        try:
            reader = latest or self.latest(spec)
            result.delta_version = reader.version
            if conn is None:
                with self.db.connect() as own:
                    self._check(own, spec, year_month, reader, result, deep)
            else:
                self._check(conn, spec, year_month, reader, result, deep)
        except ReplicationError as exc:
            result.status, result.reason = Status.ERROR, str(exc)
        except psycopg.Error as exc:
            result.status = Status.ERROR
            result.reason = str(self.db.translate(exc, "Postgres failed"))
        finally:
            if conn is not None and not conn.closed:
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
        open_snapshot_transaction(conn)
        state = read_sync_state(conn, spec.name, str(year_month))
        result.replication_in_flight = replication_in_flight(conn, spec, year_month)
        if state is not None:
            result.synced_version = state.delta_version
            result.consecutive_failures = state.consecutive_failures
            if state.synced_at is not None:
                result.last_sync_timestamp = state.synced_at.timestamp()
        pg_columns = postgres_columns(conn, spec)
        schema = reconcile_schemas(spec, latest.columns(), pg_columns)
        postgres = PostgresSide(conn, schema, year_month)
        result.postgres_rows = postgres.count()
        synced = state.delta_version if state else None
        if synced is None:
            change = MonthChange(True, latest.month_written_at(year_month))
        elif synced > latest.version:
            change = MonthChange(True)
        else:
            change = latest.change_since(synced, year_month)
        facts = MonthFacts(
            in_delta=latest.has_month(year_month),
            postgres_rows=result.postgres_rows,
            synced_version=synced,
            latest_version=latest.version,
            delta_changed=change.changed,
            in_flight=result.replication_in_flight,
        )
        if needs_content(facts):
            assert synced is not None
            expected = self._expected_side(
                state, latest, change, synced, year_month, pg_columns, deep
            )
            facts = self._content_facts(facts, expected, postgres, result)
        elif synced is None and facts.in_delta:
            result.delta_rows = latest.month_row_count(year_month)
        verdict = classify(facts)
        self._apply(result, verdict, change)

    def _expected_side(
        self,
        state: SyncState | None,
        latest: DeltaTableReader,
        change: MonthChange,
        synced: int,
        year_month: YearMonth,
        pg_columns: list[tuple[str, str, bool]],
        deep: bool,
    ) -> MonthSide:
        """What Postgres should hold: the recorded digest, or Delta at the synced version."""
        recorded = None if deep else RecordedSide.of(state)
        if recorded is not None:
            return recorded
        # An unchanged month is read from the latest snapshot: the same files.
        snapshot = (
            latest
            if not change.changed
            else (latest.loadable_version(synced) or latest.at_version(synced))
        )
        schema = reconcile_schemas(latest.spec, snapshot.columns(), pg_columns)
        return DeltaSide(snapshot, schema, year_month, self.settings.postgres.batch_rows)

    def _content_facts(
        self,
        facts: MonthFacts,
        expected: MonthSide,
        postgres: PostgresSide,
        result: TableCheck,
    ) -> MonthFacts:
        """The facts with the expected content: its count, then both digests if counts agree."""
        result.delta_rows = expected.count()
        result.delta_digest_source = (
            "recorded" if isinstance(expected, RecordedSide) else "computed"
        )
        facts = with_content(facts, expected=Digest(result.delta_rows))
        if result.delta_rows != facts.postgres_rows:
            return facts
        if not self._hash_verified:
            postgres.verify_hash_function()
            self._hash_verified = True
        buckets = 1  # the check only decides; `diff` localizes with key buckets
        if isinstance(expected, DeltaSide):
            with ThreadPoolExecutor(max_workers=1) as pool:
                expected_future = pool.submit(expected.digest, buckets)
                postgres_digest = postgres.digest(buckets)
                expected_digest = expected_future.result()
        else:
            expected_digest, postgres_digest = expected.digest(buckets), postgres.digest(buckets)
        result.delta_digest, result.postgres_digest = expected_digest.hex, postgres_digest.hex
        return with_content(
            facts,
            expected=Digest(expected_digest.rows, expected_digest.hex),
            postgres=Digest(postgres_digest.rows, postgres_digest.hex),
        )

    @staticmethod
    def _apply(result: TableCheck, verdict: Verdict, change: MonthChange) -> None:
        result.status, result.reason = verdict.status, verdict.reason
        if verdict.status in (Status.LAGGING, Status.MISSING) and change.changed:
            result.lag_seconds = change.lag_seconds()

    def check_month(
        self, year_month: YearMonth, tables: tuple[TableSpec, ...], *, deep: bool = False
    ) -> MonthCheck:
        with self.db.connect() as conn:
            return MonthCheck(
                str(year_month),
                [self.check(spec, year_month, conn=conn, deep=deep) for spec in tables],
            )
