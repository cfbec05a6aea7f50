"""Deciding the status of one month of one table: in sync, drift, lagging, missing, orphaned,
or error. Counts first, then digests; Postgres is read in one REPEATABLE READ snapshot and
compared with the Delta version that sync state says it holds.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from reconciler.digest import MonthDigest
from reconciler.sides import DeltaSide, PostgresSide
from reconciler.syncstate import read_sync_state, replication_in_flight
from replicator.config import Settings, TableSpec
from replicator.delta import DeltaTableReader
from replicator.errors import ReplicationError
from replicator.postgres import connect
from replicator.schema import postgres_columns, reconcile_schemas
from replicator.secrets import Dsn
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)

# Ordered from best to worst: a month's status is the worst of its tables'.
STATUSES = ("in_sync", "lagging", "missing", "orphaned", "drift", "error")


def worst(statuses: list[str]) -> str:
    return max(statuses, key=STATUSES.index) if statuses else "in_sync"


@dataclass
class TableCheck:
    """The outcome of comparing one month of one table (the `check --json` table entry)."""

    table: str
    year_month: str
    status: str = "error"
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
    def status(self) -> str:
        return worst([t.status for t in self.tables])

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


class MonthComparer:
    """Compares months of configured tables; reuses one Postgres connection per instance."""

    def __init__(self, settings: Settings, *, application_name: str = "reconciler") -> None:
        self.settings = settings
        self.dsn: Dsn = settings.require_dsn()
        self.application_name = application_name
        self._hash_verified = False

    def connect(self) -> psycopg.Connection[Any]:
        return connect(
            self.dsn,
            application_name=self.application_name,
            connect_timeout=self.settings.connect_timeout_seconds,
        )

    def latest(self, spec: TableSpec) -> DeltaTableReader:
        return DeltaTableReader(spec, self.settings.table_uri(spec), self.settings.storage_options)

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
                with self.connect() as own:
                    self._compare(own, spec, year_month, reader, result, deep)
            else:
                self._compare(conn, spec, year_month, reader, result, deep)
        except ReplicationError as exc:
            result.status, result.reason = "error", str(exc)
        except psycopg.Error as exc:
            result.status = "error"
            result.reason = f"Postgres failed: {self.dsn.scrub(str(exc)).strip()}"
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

    def _compare(
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
        result.replication_in_flight = replication_in_flight(conn, spec, year_month.lock_key)
        if state is not None:
            result.synced_version = state.delta_version
            result.consecutive_failures = state.consecutive_failures
            if state.synced_at is not None:
                result.last_sync_timestamp = state.synced_at.timestamp()
        pg_columns = postgres_columns(conn, spec)
        schema = reconcile_schemas(spec, latest.columns(), pg_columns)
        postgres = PostgresSide(conn, schema, year_month)
        result.postgres_rows = postgres.count()
        in_delta = latest.has_month(year_month)
        synced = state.delta_version if state else None

        if synced is None:
            if result.postgres_rows == 0:
                if in_delta:
                    result.status, result.reason = "missing", "month is in Delta, never synced"
                    result.delta_rows = latest.month_row_count(year_month)
                    self._set_lag(result, latest, None, year_month)
                else:
                    result.status = "error"
                    result.reason = f"month {year_month} is neither in Delta nor in Postgres"
                if result.replication_in_flight:
                    result.status, result.reason = "lagging", "first replication in flight"
                return
            if not in_delta:
                result.status = "orphaned"
                result.reason = "rows in Postgres, month absent from Delta, no sync record"
                return
            result.status = "drift"
            result.reason = "rows in Postgres without a sync record"
            result.delta_rows = latest.month_row_count(year_month)
            return
        if synced > latest.version:
            result.status = "error"
            result.reason = (
                f"sync state claims Delta version {synced}, but the table's latest "
                f"version is {latest.version}"
            )
            return
        if not in_delta and result.postgres_rows > 0:
            result.status = "orphaned"
            result.reason = f"month absent from Delta version {latest.version}"
            return
        held = self._held_snapshot(latest, synced)
        changed_since = held is None or {f.path for f in held.month_files(year_month)} != {
            f.path for f in latest.month_files(year_month)
        }
        recorded = None if deep or state is None else state.recorded_digest()
        delta: DeltaSide | None = None
        if recorded is None:
            # An unchanged month is read from the latest snapshot: the same files.
            snapshot = latest if not changed_since else (held or latest.at_version(synced))
            schema = reconcile_schemas(spec, snapshot.columns(), pg_columns)
            delta = DeltaSide(snapshot, schema, year_month, self.settings.batch_rows)
        self._compare_content(result, postgres, delta, recorded, synced)
        if result.status == "in_sync" and changed_since:
            result.status = "lagging"
            result.reason = f"Delta changed the month after version {synced}"
            self._set_lag(result, latest, held, year_month)
        if result.status == "in_sync" and result.replication_in_flight:
            result.status, result.reason = "lagging", "replication in flight"

    def _compare_content(
        self,
        result: TableCheck,
        postgres: PostgresSide,
        delta: DeltaSide | None,
        recorded: MonthDigest | None,
        version: int,
    ) -> None:
        """Counts, then digests: Postgres against Delta `version`, computed or as recorded."""
        if recorded is not None:
            result.delta_rows = recorded.rows
        elif delta is not None:
            result.delta_rows = delta.count()
        if result.delta_rows != result.postgres_rows:
            result.status = "drift"
            result.reason = (
                f"row counts differ: Delta version {version} has "
                f"{result.delta_rows}, Postgres has {result.postgres_rows}"
            )
            return
        if not self._hash_verified:
            postgres.verify_hash_function()
            self._hash_verified = True
        buckets = 1  # the check only decides; `diff` localizes with key buckets
        if recorded is not None:
            delta_digest, postgres_digest = recorded, postgres.digest(buckets)
            result.delta_digest_source = "recorded"
        else:
            assert delta is not None
            with ThreadPoolExecutor(max_workers=1) as pool:
                delta_future = pool.submit(delta.digest, buckets)
                postgres_digest = postgres.digest(buckets)
                delta_digest = delta_future.result()
            result.delta_digest_source = "computed"
        result.delta_digest, result.postgres_digest = delta_digest.hex, postgres_digest.hex
        if delta_digest.hex != postgres_digest.hex:
            result.status = "drift"
            result.reason = f"row hashes differ from Delta version {version}"
        else:
            result.status = "in_sync"

    @staticmethod
    def _held_snapshot(latest: DeltaTableReader, synced: int) -> DeltaTableReader | None:
        """The table at the version Postgres holds, or None when that version cannot be loaded."""
        try:
            return latest.at_version(synced)
        except ReplicationError:
            return None

    @staticmethod
    def _set_lag(
        result: TableCheck,
        latest: DeltaTableReader,
        held: DeltaTableReader | None,
        year_month: YearMonth,
    ) -> None:
        """Seconds since the oldest Delta commit of the month that Postgres does not hold."""
        held_paths = {f.path for f in held.month_files(year_month)} if held else set()
        pending = [
            f.modification_time_ms
            for f in latest.month_files(year_month)
            if f.path not in held_paths
        ]
        if pending:
            result.lag_seconds = max(0.0, time.time() - min(pending) / 1000.0)

    def check_month(
        self, year_month: YearMonth, tables: tuple[TableSpec, ...], *, deep: bool = False
    ) -> MonthCheck:
        with self.connect() as conn:
            return MonthCheck(
                str(year_month),
                [self.check(spec, year_month, conn=conn, deep=deep) for spec in tables],
            )
