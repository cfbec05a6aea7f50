"""The transactional month write: lock, replace, bulk COPY, verify, analyze, record, commit.

One Postgres transaction per month of one table. Readers of the month see the old rows or the
new rows, never a mix; the sync state row is written in the same transaction, so it always
describes what is there. The COPY streams Arrow batches straight from the Delta snapshot via
ADBC's binary COPY, so memory does not grow with the month. How the month is replaced depends
on the table's layout (`replicator.layout`): a DELETE then COPY into the table, or a COPY into
a staging table swapped in as the month's partition. Either way the month is analyzed before
the commit.
"""

from __future__ import annotations

import enum
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from replicator.config import PostgresSettings, Settings, TableSpec
from replicator.contract import (
    POSTGRES,
    DeltaHasher,
    DigestAccumulator,
    MonthDigest,
    postgres_hash,
)
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
    Analyze,
    Layout,
    analyze_statement,
    table_layout,
)
from replicator.month import Month
from replicator.postgres import AdbcSession, Database
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
    digest: str | None = None  # the contract digest of the rows written

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class WriteOptions:
    """How to write one month (see `replicator write`)."""

    delta_version: int | None = None
    allow_empty: bool = False
    force: bool = False
    # Before the commit, digest the month as Postgres now holds it, inside the transaction, and
    # roll back unless it equals the digest of the rows copied (what a repair proves).
    prove: bool = False


def _interrupted() -> bool:
    module = sys.modules.get("replicator.interrupts")
    return bool(module is not None and module.requested())


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


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
                # The key is the serving data of a row: the message names the column only.
                raise InputError(
                    f"table {self.schema.spec.name}: column {name!r} of "
                    f"{pc.sum(has_nul).as_py()} row(s) contains a NUL byte, which Postgres text "
                    "cannot hold; remove it in Delta, then replicate the month again"
                )


@dataclass
class _Transaction:
    """One month's write under way: where it reads, where it writes, and its statements."""

    db: Database
    run_id: str
    month: Month
    reader: DeltaTableReader
    schema: TableSchema
    session: AdbcSession
    options: WriteOptions
    postgres: PostgresSettings
    digest: str | None = None  # of the rows written, once recorded

    @property
    def spec(self) -> TableSpec:
        return self.month.spec

    def plain(self, analyze: Analyze) -> int:
        """DELETE the month, COPY it again, analyze the table, record, commit."""
        self._lock_and_refuse_stale()
        self.session.execute(
            sql.SQL("DELETE FROM {} WHERE year_month = $1").format(self.schema.qualified_table),
            (self.month.ym,),
        )
        stream = self._copy(self.spec.postgres_table)
        self.session.execute(analyze.statement)
        if analyze.returns_row:
            self.session.fetchall()
        return self._record_and_commit(stream)

    def partitioned(self) -> int:
        """A staging table made and committed first (`stage_month`), then one transaction:
        load it, build its indexes and statistics (`finish_stage`), and swap it in as the
        month's partition (`swap_month`) under the month's lock, waiting at most
        SWAP_LOCK_TIMEOUT for the table's readers, retried from a savepoint so that the load
        is not redone (replicator/layout.py). Nothing is visible to readers until the commit,
        and the commit's fate, if its answer is lost, is read from sync state as for a plain
        write."""
        spec, session = self.spec, self.session
        month = (spec.postgres_schema, spec.postgres_table, self.month.ym)
        staging = str(session.query(STAGE_MONTH, month))
        session.commit()
        try:
            stream = self._copy(staging)
            session.query(FINISH_STAGE, (*month, staging))
            self._swap(month, staging)
            return self._record_and_commit(stream)
        except BaseException:
            session.rollback()
            if not self._commit_landed():
                self._drop_stage(month, staging)
            raise

    def _swap(self, month: tuple[str, str, str], staging: str) -> None:
        session = self.session
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            session.execute("SAVEPOINT swap")
            try:
                self._lock_and_refuse_stale()
                session.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
                session.query(SWAP_MONTH, (*month, staging))
            except PostgresError as exc:
                if exc.sqlstate != LOCK_NOT_AVAILABLE:
                    raise
                session.execute("ROLLBACK TO SAVEPOINT swap")
                logger.warning(
                    "%s: the table's readers held it past lock_timeout %s (attempt %d of %d);"
                    " retrying the swap",
                    self.month,
                    SWAP_LOCK_TIMEOUT,
                    attempt,
                    SWAP_ATTEMPTS,
                    extra=self.month.log,
                )
                time.sleep(min(30.0, 2.0**attempt))
                continue
            session.execute("SET LOCAL lock_timeout TO DEFAULT")
            return
        raise PostgresError(
            f"{self.month}: readers held the table past lock_timeout {SWAP_ATTEMPTS} times; the "
            "month was not swapped (the old one stands)"
        )

    def _drop_stage(self, month: tuple[str, str, str], staging: str) -> None:
        """Best effort: a staging table left behind is dropped by the next stage a day later."""
        try:
            with self.db.session(autocommit=True) as conn:
                conn.execute("SELECT ranking.drop_stage(%s, %s, %s, %s)", (*month, staging))
        except PostgresError as exc:
            logger.warning("could not drop the staging table %s: %s", staging, exc)

    def _lock_and_refuse_stale(self) -> None:
        """Takes the month's lock; refuses to replace a month held from a newer version."""
        session, reader = self.session, self.reader
        session.query(month_lock_sql("$1", "$2::integer"), self.month.lock_key)
        session.execute(HELD_VERSION, self.month.labels)
        held = session.fetchall()
        held_version, held_table = held[0] if held else (None, None)
        # A version of another table (dropped and recreated: versions restart) is not newer.
        same_table = held_table in (None, reader.table_id)
        newer = held_version is not None and held_version > reader.version and same_table
        if newer and not self.options.force:
            session.rollback()
            raise StaleSnapshotError(
                f"table {self.spec.name}: Postgres holds {self.month.ym} from Delta version "
                f"{held_version}, newer than version {reader.version}; not replacing it "
                "(use --force)"
            )

    def _copy(self, target: str) -> _BatchStream:
        """Binary COPY of the month into `target` (the table, or a staging table)."""
        stream = _BatchStream(
            self.schema,
            self.reader.scan_month(
                self.month.year_month, self.schema.names, self.postgres.batch_rows
            ),
        )
        try:
            self.session.ingest(target, self.spec.postgres_schema, stream.reader())
        except PostgresError:
            # The connection may be gone: the original error is the one worth reporting.
            self.session.rollback()
            if stream.error is not None:
                raise stream.error from None
            raise
        if self.postgres.verify_counts:
            self._verify_counts(sql.Identifier(self.spec.postgres_schema, target), stream.rows)
        return stream

    def _prove(self, stream: _BatchStream) -> None:
        """The month as this transaction now sees it digests to what was copied, or nothing
        is committed."""
        schema = stream.schema
        query = sql.SQL("SELECT count(*), sum({}) FROM {} WHERE year_month = $1").format(
            sql.SQL(postgres_hash(POSTGRES.row(schema.value_columns))), schema.qualified_table
        )
        self.session.execute("SET LOCAL jit = off")
        self.session.execute(query, (self.month.ym,))
        rows, total = self.session.fetchall()[0]
        held = MonthDigest.from_pairs(1, [(0, int(rows), int(total or 0))])
        written = stream.digest.result()
        if held.hex != written.hex:
            self.session.rollback()
            raise PostgresError(
                f"{self.month}: Postgres does not hold what was copied ({held.hex}, copied "
                f"{written.hex}: a trigger or a rule changed the rows?); rolled back"
            )

    def _record_and_commit(self, stream: _BatchStream) -> int:
        reader, month = self.reader, self.month
        if self.options.prove:
            self._prove(stream)
        self.digest = stream.digest.result().hex
        anchor = Anchor(
            delta_version=reader.version,
            delta_table_id=reader.table_id,
            delta_files=reader.month_fingerprint(month.year_month),
            content_schema=stream.schema.content_schema,
            content_digest=stream.digest.result().hex,
            row_count=stream.rows,
            delta_schema=reader.identity,
            delta_commit_ms=reader.commit_timestamp(reader.version),
        )
        self.session.execute(RECORD_SYNC, record_sync_params(month, self.run_id, anchor))
        try:
            self.session.commit()
        except PostgresError:
            # The acknowledgement may be lost after the server committed: sync state knows.
            if self._commit_landed():
                logger.warning(
                    "commit acknowledgement lost for %s, but run %s landed",
                    month,
                    self.run_id,
                    extra=month.log,
                )
                return stream.rows
            raise
        return stream.rows

    def _verify_counts(self, table: sql.Identifier, streamed: int) -> None:
        in_postgres = int(
            self.session.query(
                sql.SQL("SELECT count(*) FROM {} WHERE year_month = $1").format(table),
                (self.month.ym,),
            )
        )
        in_delta = self.reader.month_row_count(self.month.year_month)
        expected = streamed if in_delta is None else in_delta
        if in_postgres != expected or streamed != expected:
            self.session.rollback()
            raise PostgresError(
                f"{self.month}: count check failed: Delta has {expected} rows, {streamed} were "
                f"copied, Postgres holds {in_postgres}; rolled back"
            )

    def _commit_landed(self) -> bool:
        try:
            with self.db.session() as conn:
                return synced_run_id(conn, self.month) == self.run_id
        except PostgresError:
            return False


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
        return self.write(
            Month.of(spec, year_month), WriteOptions(delta_version, allow_empty, force)
        )

    def write(self, month: Month, options: WriteOptions = WriteOptions()) -> WriteResult:
        """Replicates one month; honours `write_required` for failures (see SPEC)."""
        started = time.monotonic()
        db = self._database()
        log = {**month.log, "run_id": self.run_id}
        if db is None:
            logger.warning("POSTGRES_DSN is not set: replication of %s skipped", month)
            return WriteResult(
                month.table,
                month.ym,
                WriteStatus.SKIPPED,
                run_id=self.run_id,
                message="POSTGRES_DSN not set",
            )
        required = self.settings.postgres.write_required
        try:
            result = self._write(db, month, options, started)
        except StaleSnapshotError as exc:
            logger.warning("%s", exc, extra=log)
            if required:
                raise
            return WriteResult(
                month.table, month.ym, WriteStatus.STALE, run_id=self.run_id, message=str(exc)
            )
        except ReplicationError as exc:
            if _interrupted():  # Ctrl-C cancelled the statement: stop, nothing failed
                raise KeyboardInterrupt from exc
            self._record_failure(db, month, str(exc))
            logger.error("replication of %s failed: %s", month, exc, extra=log)
            if required:
                raise
            return WriteResult(
                month.table,
                month.ym,
                WriteStatus.FAILED,
                run_id=self.run_id,
                duration_seconds=time.monotonic() - started,
                message=str(exc),
            )
        logger.info(
            "replicated %s from Delta version %s: %d rows in %.2fs",
            month,
            result.delta_version,
            result.rows,
            result.duration_seconds,
            extra={**log, "delta_version": result.delta_version, "rows": result.rows},
        )
        return result

    # -- the transaction -----------------------------------------------------------------
    def _write(
        self, db: Database, month: Month, options: WriteOptions, started: float
    ) -> WriteResult:
        spec = month.spec
        reader = DeltaTableReader(
            spec,
            self.settings.table_uri(spec),
            self.settings.delta.storage_options,
            options.delta_version,
        )
        if not reader.has_month(month.year_month) and not options.allow_empty:
            raise InputError(
                f"table {spec.name}: month {month.ym} is absent from Delta version "
                f"{reader.version}; refusing to empty it in Postgres (pass --allow-empty)"
            )
        with db.session() as meta:
            layout = table_layout(meta, spec)
            pg_columns = postgres_columns(meta, spec)
            recorded = recorded_schema(meta, spec.name)
            analyze = analyze_statement(meta, spec) if layout is Layout.PLAIN else None
        schema = reconcile_schemas(spec, reader.columns(), pg_columns, recorded=recorded)
        with db.adbc_session() as session:
            transaction = _Transaction(
                db, self.run_id, month, reader, schema, session, options, self.settings.postgres
            )
            rows = transaction.plain(analyze) if analyze else transaction.partitioned()
        return WriteResult(
            month.table,
            month.ym,
            WriteStatus.WRITTEN,
            reader.version,
            rows,
            time.monotonic() - started,
            self.run_id,
            digest=transaction.digest,
        )

    def _record_failure(self, db: Database, month: Month, reason: str) -> None:
        """Best effort, in its own transaction: the failure must be visible in sync state."""
        try:
            with db.session() as conn:
                record_failure(conn, month, db.scrub(reason), self.run_id)
                conn.commit()
        except PostgresError as exc:
            logger.warning("could not record the failure in sync state: %s", exc)


def write_months(
    settings: Settings,
    year_month: YearMonth,
    tables: tuple[TableSpec, ...],
    *,
    options: WriteOptions = WriteOptions(),
    run_id: str | None = None,
) -> list[WriteResult]:
    writer = MonthWriter(settings, run_id=run_id)
    return [writer.write(Month.of(spec, year_month), options) for spec in tables]


__all__ = [
    "DeltaError",
    "MonthWriter",
    "WriteOptions",
    "WriteResult",
    "WriteStatus",
    "write_months",
]
