"""The transactional month write: lock, replace, bulk COPY, verify, analyze, record, commit.

One Postgres transaction per (table, month). Readers of the month see the old rows or the
new rows, never a mix; the sync state row is written in the same transaction, so it always
describes what is there. The COPY streams Arrow batches straight from the Delta snapshot via
ADBC's binary COPY, so memory does not grow with the month. How the month is replaced depends
on the table's layout (`replicator.layout`): a DELETE then COPY into the table, or a COPY into
a staging table swapped in as the month's partition. Either way the month is analyzed before
the commit.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import adbc_driver_manager
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from replicator.config import Settings, TableSpec
from replicator.contract import DeltaHasher, DigestAccumulator
from replicator.delta import DeltaTableReader
from replicator.errors import (
    DeltaError,
    InputError,
    PostgresError,
    ReplicationError,
    StaleSnapshotError,
)
from replicator.layout import (
    FINISH_STAGE,
    LOCK_NOT_AVAILABLE,
    STAGE_MONTH,
    SWAP_ATTEMPTS,
    SWAP_LOCK_TIMEOUT,
    SWAP_MONTH,
    Layout,
    analyze_statement,
    table_layout,
)
from replicator.postgres import Database
from replicator.schema import (
    PARTITION_COLUMN,
    Kind,
    TableSchema,
    postgres_columns,
    reconcile_schemas,
)
from replicator.syncstate import (
    HELD_VERSION,
    RECORD_SYNC,
    Anchor,
    month_lock_sql,
    record_failure,
    record_sync_params,
    recorded_schema,
    synced_run_id,
)
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


class WriteStatus(enum.StrEnum):
    """What became of one month's write."""

    WRITTEN = "written"
    SKIPPED = "skipped"  # no POSTGRES_DSN: replication is off
    STALE = "stale"  # Postgres holds a newer Delta version (best-effort mode)
    FAILED = "failed"  # best-effort mode: recorded in sync state, not raised


@dataclass(frozen=True)
class WriteResult:
    table: str
    year_month: str
    status: WriteStatus
    delta_version: int | None = None
    rows: int = 0
    duration_seconds: float = 0.0
    run_id: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def _adbc_sql(query: sql.Composable) -> str:
    return query.as_string(None)


class _BatchStream:
    """Feeds the month's batches to COPY, cast to the Postgres column types, checking as it goes.

    An error raised inside the stream would reach us mangled through the C stream interface,
    so it is kept here and re-raised by the writer once the COPY has failed.
    """

    def __init__(self, schema: TableSchema, batches: Iterator[pa.RecordBatch]) -> None:
        # The contract digest of the rows as read from Delta, recorded with the sync.
        self.hasher = DeltaHasher(schema)
        self.digest = DigestAccumulator(1)
        self.schema = schema
        self.target = schema.copy_schema
        self.batches = batches
        self.rows = 0
        self.error: ReplicationError | None = None
        self._strings = [
            c.name
            for c in schema.columns
            if c.type.kind is Kind.STRING and c.name != PARTITION_COLUMN
        ]

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.target, self._generate())

    def _generate(self) -> Iterator[pa.RecordBatch]:
        try:
            for raw in self.batches:
                batch = raw.select(self.target.names).cast(self.target)
                self._reject_nul(batch)
                self.hasher.add(self.digest, raw)
                self.rows += batch.num_rows
                yield batch
        except ReplicationError as exc:
            self.error = exc
            raise

    def _reject_nul(self, batch: pa.RecordBatch) -> None:
        for name in self._strings:
            has_nul = pc.fill_null(pc.match_substring(batch.column(name), "\x00"), False)
            if pc.any(has_nul).as_py():
                row = pc.index(has_nul, True).as_py()
                key = {k: str(batch.column(k)[row].as_py()) for k in self.schema.spec.key_columns}
                raise InputError(
                    f"table {self.schema.spec.name}: column {name!r} of the row with key {key} "
                    "contains a NUL byte, which Postgres text cannot hold"
                )


class MonthWriter:
    """Replicates months of configured tables from Delta to Postgres."""

    def __init__(
        self, settings: Settings, *, run_id: str | None = None, application_name: str = "replicator"
    ) -> None:
        self.settings = settings
        self.run_id = run_id or new_run_id()
        self.application_name = application_name

    def _database(self) -> Database | None:
        if self.settings.dsn is None:
            return None
        return Database(
            self.settings.dsn,
            self.application_name,
            self.settings.postgres.connect_timeout_seconds,
        )

    # -- public ---------------------------------------------------------------------------
    def write_month(
        self,
        spec: TableSpec,
        year_month: YearMonth,
        *,
        delta_version: int | None = None,
        allow_empty: bool = False,
        force: bool = False,
    ) -> WriteResult:
        """Replicates one month; honours `write_required` for failures (see SPEC)."""
        started = time.monotonic()
        db = self._database()
        log = {"table": spec.name, "year_month": str(year_month), "run_id": self.run_id}
        if db is None:
            logger.warning(
                "POSTGRES_DSN is not set: replication of %s %s skipped", spec.name, year_month
            )
            return WriteResult(
                spec.name,
                str(year_month),
                WriteStatus.SKIPPED,
                run_id=self.run_id,
                message="POSTGRES_DSN not set",
            )
        required = self.settings.postgres.write_required
        try:
            result = self._write(db, spec, year_month, delta_version, allow_empty, force, started)
        except StaleSnapshotError as exc:
            logger.warning("%s", exc, extra=log)
            if required:
                raise
            return WriteResult(
                spec.name, str(year_month), WriteStatus.STALE, run_id=self.run_id, message=str(exc)
            )
        except ReplicationError as exc:
            self._record_failure(db, spec, year_month, str(exc))
            logger.error("replication of %s %s failed: %s", spec.name, year_month, exc, extra=log)
            if required:
                raise
            return WriteResult(
                spec.name,
                str(year_month),
                WriteStatus.FAILED,
                run_id=self.run_id,
                duration_seconds=time.monotonic() - started,
                message=str(exc),
            )
        logger.info(
            "replicated %s %s from Delta version %s: %d rows in %.2fs",
            spec.name,
            year_month,
            result.delta_version,
            result.rows,
            result.duration_seconds,
            extra={**log, "delta_version": result.delta_version, "rows": result.rows},
        )
        return result

    # -- the transaction -----------------------------------------------------------------
    def _write(
        self,
        db: Database,
        spec: TableSpec,
        year_month: YearMonth,
        delta_version: int | None,
        allow_empty: bool,
        force: bool,
        started: float,
    ) -> WriteResult:
        reader = DeltaTableReader(
            spec, self.settings.table_uri(spec), self.settings.delta.storage_options, delta_version
        )
        if not reader.has_month(year_month) and not allow_empty:
            raise InputError(
                f"table {spec.name}: month {year_month} is absent from Delta version "
                f"{reader.version}; refusing to empty it in Postgres (pass --allow-empty)"
            )
        with db.connect() as meta, db.errors(f"table {spec.name}"):
            layout = table_layout(meta, spec)
            pg_columns = postgres_columns(meta, spec)
            recorded = recorded_schema(meta, spec.name)
            analyze = analyze_statement(meta, spec) if layout is Layout.PLAIN else None
        schema = reconcile_schemas(spec, reader.columns(), pg_columns, recorded=recorded)
        conn = db.connect_adbc()
        try:
            with conn.cursor() as cur:
                rows = self._transaction(conn, cur, db, schema, reader, year_month, force, analyze)
        except adbc_driver_manager.Error as exc:
            raise db.translate(exc, f"table {spec.name} {year_month}: Postgres failed") from None
        finally:
            with contextlib.suppress(adbc_driver_manager.Error):
                conn.close()
        return WriteResult(
            spec.name,
            str(year_month),
            WriteStatus.WRITTEN,
            reader.version,
            rows,
            time.monotonic() - started,
            self.run_id,
        )

    def _transaction(
        self,
        conn: Any,
        cur: Any,
        db: Database,
        schema: TableSchema,
        reader: DeltaTableReader,
        year_month: YearMonth,
        force: bool,
        analyze: sql.Composed | None,
    ) -> int:
        """`analyze` is how to analyze a plain table; None: the table is partitioned."""
        if analyze is None:
            return self._partitioned(conn, cur, db, schema, reader, year_month, force)
        spec = schema.spec
        self._lock_and_refuse_stale(conn, cur, spec, reader, year_month, force)
        cur.execute(
            _adbc_sql(
                sql.SQL("DELETE FROM {} WHERE year_month = $1").format(schema.qualified_table)
            ),
            (str(year_month),),
        )
        stream = self._copy(conn, cur, schema, reader, year_month, spec.postgres_table)
        cur.execute(_adbc_sql(analyze))
        if analyze.as_string(None).startswith("SELECT"):
            cur.fetchall()
        return self._record_and_commit(conn, cur, db, spec, reader, year_month, stream)

    def _partitioned(
        self,
        conn: Any,
        cur: Any,
        db: Database,
        schema: TableSchema,
        reader: DeltaTableReader,
        year_month: YearMonth,
        force: bool,
    ) -> int:
        """A staging table made and committed first (`stage_month`), then one transaction:
        load it, build its indexes and statistics (`finish_stage`), and swap it in as the
        month's partition (`swap_month`) under the month's lock, waiting at most
        SWAP_LOCK_TIMEOUT for the table's readers, retried from a savepoint so that the load
        is not redone (replicator/layout.py). Nothing is visible to readers until the commit,
        and the commit's fate, if its answer is lost, is read from sync state as for a plain
        write."""
        spec = schema.spec
        month = (spec.postgres_schema, spec.postgres_table, str(year_month))
        cur.execute(_adbc_sql(STAGE_MONTH), month)
        staging = str(cur.fetchall()[0][0])
        conn.commit()
        try:
            stream = self._copy(conn, cur, schema, reader, year_month, staging)
            cur.execute(_adbc_sql(FINISH_STAGE), (*month, staging))
            cur.fetchall()
            for attempt in range(1, SWAP_ATTEMPTS + 1):
                cur.execute("SAVEPOINT swap")
                try:
                    self._lock_and_refuse_stale(conn, cur, spec, reader, year_month, force)
                    cur.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
                    cur.execute(_adbc_sql(SWAP_MONTH), (*month, staging))
                    cur.fetchall()
                except adbc_driver_manager.Error as exc:
                    if getattr(exc, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                        raise
                    cur.execute("ROLLBACK TO SAVEPOINT swap")
                    logger.warning(
                        "%s %s: the table's readers held it past lock_timeout %s (attempt %d of"
                        " %d); retrying the swap",
                        spec.name,
                        year_month,
                        SWAP_LOCK_TIMEOUT,
                        attempt,
                        SWAP_ATTEMPTS,
                    )
                    time.sleep(min(30.0, 2.0**attempt))
                    continue
                cur.execute("SET LOCAL lock_timeout TO DEFAULT")
                return self._record_and_commit(conn, cur, db, spec, reader, year_month, stream)
            raise PostgresError(
                f"table {spec.name} {year_month}: readers held the table past lock_timeout "
                f"{SWAP_ATTEMPTS} times; the month was not swapped (the old one stands)"
            )
        except BaseException:
            with contextlib.suppress(adbc_driver_manager.Error):
                conn.rollback()
            if not self._commit_landed(db, spec, year_month):
                self._drop_stage(db, month, staging)
            raise

    def _drop_stage(self, db: Database, month: tuple[str, str, str], staging: str) -> None:
        """Best effort: a staging table left behind is dropped by the next stage a day later."""
        try:
            with db.connect(autocommit=True) as conn:
                conn.execute("SELECT ranking.drop_stage(%s, %s, %s, %s)", (*month, staging))
        except (PostgresError, psycopg.Error) as exc:
            logger.warning("could not drop the staging table %s: %s", staging, db.scrub(str(exc)))

    def _lock_and_refuse_stale(
        self,
        conn: Any,
        cur: Any,
        spec: TableSpec,
        reader: DeltaTableReader,
        year_month: YearMonth,
        force: bool,
    ) -> None:
        """Takes the month's lock; refuses to replace a month held from a newer version."""
        cur.execute(
            _adbc_sql(month_lock_sql("$1", "$2::integer")),
            (spec.qualified_name, year_month.lock_key),
        )
        cur.fetchall()
        cur.execute(_adbc_sql(HELD_VERSION), (spec.name, str(year_month)))
        held = cur.fetchall()
        held_version, held_table = held[0] if held else (None, None)
        # A version of another table (dropped and recreated: versions restart) is not newer.
        same_table = held_table in (None, reader.table_id)
        if held_version is not None and held_version > reader.version and same_table and not force:
            conn.rollback()
            raise StaleSnapshotError(
                f"table {spec.name}: Postgres holds {year_month} from Delta version "
                f"{held_version}, newer than version {reader.version}; not replacing it "
                "(use --force)"
            )

    def _copy(
        self,
        conn: Any,
        cur: Any,
        schema: TableSchema,
        reader: DeltaTableReader,
        year_month: YearMonth,
        target: str,
    ) -> _BatchStream:
        """Binary COPY of the month into `target` (the table, or a staging table)."""
        spec = schema.spec
        stream = _BatchStream(
            schema, reader.scan_month(year_month, schema.names, self.settings.postgres.batch_rows)
        )
        try:
            cur.adbc_ingest(
                target, stream.reader(), mode="append", db_schema_name=spec.postgres_schema
            )
        except Exception:
            # The connection may be gone: the original error is the one worth reporting.
            with contextlib.suppress(adbc_driver_manager.Error):
                conn.rollback()
            if stream.error is not None:
                raise stream.error from None
            raise
        if self.settings.postgres.verify_counts:
            table = sql.Identifier(spec.postgres_schema, target)
            self._verify_counts(cur, table, schema, reader, year_month, stream.rows, conn)
        return stream

    def _record_and_commit(
        self,
        conn: Any,
        cur: Any,
        db: Database,
        spec: TableSpec,
        reader: DeltaTableReader,
        year_month: YearMonth,
        stream: _BatchStream,
    ) -> int:
        anchor = Anchor(
            delta_version=reader.version,
            delta_table_id=reader.table_id,
            delta_files=reader.month_fingerprint(year_month),
            content_schema=stream.schema.content_schema,
            content_digest=stream.digest.result().hex,
            row_count=stream.rows,
        )
        cur.execute(
            _adbc_sql(RECORD_SYNC),
            record_sync_params(spec.name, str(year_month), self.run_id, anchor),
        )
        try:
            conn.commit()
        except adbc_driver_manager.Error:
            # The acknowledgement may be lost after the server committed: sync state knows.
            if self._commit_landed(db, spec, year_month):
                logger.warning(
                    "commit acknowledgement lost for %s %s, but run %s landed",
                    spec.name,
                    year_month,
                    self.run_id,
                )
                return stream.rows
            raise
        return stream.rows

    def _verify_counts(
        self,
        cur: Any,
        table: sql.Identifier,
        schema: TableSchema,
        reader: DeltaTableReader,
        year_month: YearMonth,
        streamed: int,
        conn: Any,
    ) -> None:
        cur.execute(
            _adbc_sql(sql.SQL("SELECT count(*) FROM {} WHERE year_month = $1").format(table)),
            (str(year_month),),
        )
        in_postgres = int(cur.fetchall()[0][0])
        in_delta = reader.month_row_count(year_month)
        expected = streamed if in_delta is None else in_delta
        if in_postgres != expected or streamed != expected:
            conn.rollback()
            raise PostgresError(
                f"table {schema.spec.name} {year_month}: count check failed: Delta has "
                f"{expected} rows, {streamed} were copied, Postgres holds {in_postgres}; "
                "rolled back"
            )

    # -- bookkeeping outside the write transaction ----------------------------------------
    def _commit_landed(self, db: Database, spec: TableSpec, year_month: YearMonth) -> bool:
        try:
            with db.connect() as conn:
                return synced_run_id(conn, spec.name, str(year_month)) == self.run_id
        except (PostgresError, psycopg.Error):
            return False

    def _record_failure(
        self, db: Database, spec: TableSpec, year_month: YearMonth, reason: str
    ) -> None:
        """Best effort, in its own transaction: the failure must be visible in sync state."""
        try:
            with db.connect() as conn:
                record_failure(conn, spec.name, str(year_month), db.scrub(reason), self.run_id)
        except (PostgresError, psycopg.Error) as exc:
            logger.warning("could not record the failure in sync state: %s", db.scrub(str(exc)))


def write_months(
    settings: Settings,
    year_month: YearMonth,
    tables: tuple[TableSpec, ...],
    *,
    delta_version: int | None = None,
    allow_empty: bool = False,
    force: bool = False,
    run_id: str | None = None,
) -> list[WriteResult]:
    writer = MonthWriter(settings, run_id=run_id)
    return [
        writer.write_month(
            spec, year_month, delta_version=delta_version, allow_empty=allow_empty, force=force
        )
        for spec in tables
    ]


__all__ = ["DeltaError", "MonthWriter", "WriteResult", "WriteStatus", "write_months"]
