"""A narrow repair: one transaction that deletes the Postgres rows of a month that are surplus or
wrong and inserts the Delta rows that are missing, then proves the result before it commits.

Under the month's lock (the writer's: a session advisory lock on the same key, taken before the
transaction so that its snapshot is taken after any writer that held the lock has committed),
in one REPEATABLE READ transaction against one pinned Delta version:

1. the rows that differ are found as `reconciler diff` finds them (`reconciler.localize`): both
   sides' bucket digests, then the rows of the differing buckets, with their row hashes;
2. rows are matched by row hash as multisets: a Postgres row whose hash Delta lacks (or has
   fewer copies of) is deleted by its exact ctid, a duplicated row losing only its surplus
   copies; a Delta row Postgres lacks is inserted (binary COPY of just those rows);
3. the proof, from the digest's algebra (docs/hash-contract.md, "Narrow repairs"): the month's
   digest is a count and a sum of row hashes mod 2^64, so after the change Postgres holds
   `before - deleted + inserted`, where `before` is the digest of the snapshot the transaction
   sees, `deleted` what the DELETE returned (the server hashes the rows it removes) and
   `inserted` the hashes of the rows copied in. It must equal the Delta version's digest, or
   the transaction rolls back (`ProofFailed`);
4. sync state is recorded as a write does, with an audit row, in the same transaction.

Readers see the old month or the repaired one, never a mix. A concurrent UPDATE or DELETE of a
row the repair deletes fails the transaction (REPEATABLE READ); nothing is committed then.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from psycopg import sql

from reconciler.localize import (
    CTID,
    HASH,
    Localizer,
    PassOptions,
    Scalar,
    buckets_for,
    chunks_of,
    render,
)
from reconciler.sides import QueryLimits
from replicator.config import Settings
from replicator.contract import POSTGRES, MonthDigest, postgres_hash
from replicator.delta import DeltaTableReader
from replicator.errors import PostgresError, ReplicationError
from replicator.month import Month
from replicator.postgres import AdbcSession, Database
from replicator.schema import TableSchema, postgres_columns, reconcile_schemas, same_content
from replicator.syncstate import (
    RECORD_SYNC,
    Anchor,
    SyncState,
    read_sync_state,
    record_sync_params,
    synced_run_id,
)

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
# Whether the table or one of its partitions has a user trigger or a rewrite rule.
_TRIGGERS_OR_RULES = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal AND t.tgrelid IN
        (SELECT %s::regclass UNION ALL SELECT inhrelid FROM pg_catalog.pg_inherits
         WHERE inhparent = %s::regclass))
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.ev_class = %s::regclass)
"""


class NarrowNotPossible(ReplicationError):
    """A narrow repair cannot be made here (too many rows differ, the schema or the table
    changed, the month is not in one side); a full repair can."""


class ProofFailed(ReplicationError):
    """The repaired month did not digest to the Delta version's digest: rolled back."""


@dataclass(frozen=True)
class RowChanges:
    """What a narrow repair changes, by key: `changed` keys lose a row and gain one, `missing`
    keys gain rows, `surplus` rows (foreign, or extra copies) are deleted."""

    deleted: int = 0
    inserted: int = 0
    changed: int = 0
    missing: int = 0
    surplus: int = 0

    @property
    def rows(self) -> int:
        """The rows repaired, counted as people count them (a changed row once)."""
        return self.changed + self.missing + self.surplus

    def describe(self) -> str:
        return (
            f"{self.rows} rows ({self.changed} changed, {self.missing} missing, "
            f"{self.surplus} surplus)"
        )


@dataclass(frozen=True)
class NarrowResult:
    changes: RowChanges
    delta_version: int
    digest: MonthDigest  # what Postgres now holds, proven equal to Delta's
    anchor: Anchor


@dataclass
class _Plan:
    """The rows to delete (by ctid, with their hashes) and to insert (Delta rows)."""

    ctids: list[str]
    deleted_hashes: list[int]
    inserts: list[pa.Table]
    changes: RowChanges


def _key(table: pa.Table, schema: TableSchema) -> list[tuple[Scalar, ...]]:
    columns = {c.name: c for c in schema.columns}
    rendered = [render(table.column(name), columns[name]) for name in schema.spec.key_columns]
    return list(zip(*rendered, strict=True)) if rendered else []


def match(postgres: pa.Table, delta: pa.Table, schema: TableSchema) -> _Plan:
    """Rows matched by row hash as multisets (see the module docstring)."""
    by_hash: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for index, value in enumerate(postgres.column(HASH).to_numpy().tolist()):
        by_hash[value][0].append(index)
    for index, value in enumerate(delta.column(HASH).to_numpy().tolist()):
        by_hash[value][1].append(index)
    deleting: list[int] = []
    inserting: list[int] = []
    for in_postgres, in_delta in by_hash.values():
        deleting += in_postgres[len(in_delta) :]
        inserting += in_delta[len(in_postgres) :]
    ctids = postgres.column(CTID).to_pylist()
    hashes = postgres.column(HASH).to_numpy().tolist()
    keys_deleted = _key(postgres.take(deleting), schema) if deleting else []
    keys_inserted = _key(delta.take(inserting), schema) if inserting else []
    counts: dict[tuple[Scalar, ...], list[int]] = defaultdict(lambda: [0, 0])
    for key in keys_deleted:
        counts[key][0] += 1
    for key in keys_inserted:
        counts[key][1] += 1
    changed = sum(min(d, i) for d, i in counts.values())
    changes = RowChanges(
        deleted=len(deleting),
        inserted=len(inserting),
        changed=changed,
        missing=len(inserting) - changed,
        surplus=len(deleting) - changed,
    )
    return _Plan(
        [ctids[i] for i in deleting],
        [hashes[i] for i in deleting],
        [delta.take(inserting)] if inserting else [],
        changes,
    )


def _merge(plans: Sequence[_Plan]) -> _Plan:
    total = RowChanges(
        *(sum(getattr(p.changes, f.name) for p in plans) for f in dataclasses.fields(RowChanges))
    )
    return _Plan(
        [c for p in plans for c in p.ctids],
        [h for p in plans for h in p.deleted_hashes],
        [t for p in plans for t in p.inserts],
        total,
    )


@dataclass(frozen=True)
class _Found:
    """What the localizing passes found, inside the repair's transaction."""

    plan: _Plan
    before: MonthDigest  # Postgres, as the transaction sees it
    delta: MonthDigest  # the Delta version's month


class NarrowRepair:
    """Repairs one month narrowly (see the module docstring)."""

    def __init__(self, db: Database, settings: Settings, month: Month, run_id: str) -> None:
        self.db, self.settings, self.month, self.run_id = db, settings, month, run_id
        self.limits = settings.repair

    def _reader(self) -> DeltaTableReader:
        spec = self.month.spec
        return DeltaTableReader(
            spec, self.settings.table_uri(spec), self.settings.delta.storage_options
        )

    def _schema(self, reader: DeltaTableReader) -> tuple[TableSchema, SyncState | None]:
        with self.db.session() as meta:
            columns = postgres_columns(meta, self.month.spec)
            state = read_sync_state(meta, self.month)
            name = self.month.spec.qualified_name
            rewritten = meta.scalar(_TRIGGERS_OR_RULES, (name, name, name))
        schema = reconcile_schemas(self.month.spec, reader.columns(), columns)
        if state is None or state.delta_version is None:
            raise NarrowNotPossible("the month was never synced")
        if state.delta_table_id not in (None, reader.table_id):
            raise NarrowNotPossible("the Delta table was recreated since the sync")
        if state.content_schema is not None and not same_content(state.content_schema, schema):
            raise NarrowNotPossible("the table's columns changed since the sync")
        if not reader.has_month(self.month.year_month):
            raise NarrowNotPossible(f"the month is absent from Delta version {reader.version}")
        if rewritten:
            raise NarrowNotPossible(
                "the table has triggers or rules, which could change rows the proof does not see"
            )
        return schema, state

    def plan(self) -> RowChanges:
        """What a narrow repair would change now (a dry run: a read-only snapshot, no lock)."""
        reader = self._reader()
        schema, _ = self._schema(reader)
        with self.db.adbc_session() as session:
            session.autocommit(True)
            session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                return self._find(session, reader, schema).plan.changes
            finally:
                session.execute("ROLLBACK")

    def run(self) -> NarrowResult:
        """The repair; raises NarrowNotPossible (nothing changed), ProofFailed (rolled back) or
        a PostgresError."""
        reader = self._reader()
        schema, _ = self._schema(reader)
        with self.db.adbc_session() as session:
            session.autocommit(True)
            session.query(
                "SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext($1), $2::integer)",
                self.month.lock_key,
            )
            try:
                # The snapshot is taken by the transaction's first query, after the lock: it
                # sees whatever a writer that held the lock committed.
                session.autocommit(False)
                session.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                try:
                    result = self._transaction(session, reader, schema)
                except BaseException:
                    session.rollback()
                    raise
            finally:
                session.autocommit_quietly()
                session.execute_quietly(
                    sql.SQL("SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext({}), {})")
                    .format(
                        sql.Literal(self.month.lock_key[0]), sql.Literal(self.month.lock_key[1])
                    )
                    .as_string(None)
                )
        return result

    def _transaction(
        self, session: AdbcSession, reader: DeltaTableReader, schema: TableSchema
    ) -> NarrowResult:
        found = self._find(session, reader, schema)
        plan = found.plan
        deleted = self._delete(session, schema, plan)
        inserted = self._insert(session, schema, plan)
        after = _combine(found.before, deleted, inserted)
        if after.hex != found.delta.hex:
            raise ProofFailed(
                f"{self.month}: after the narrow repair Postgres would hold {after.hex}, Delta "
                f"version {reader.version} holds {found.delta.hex}; rolled back"
            )
        anchor = Anchor(
            delta_version=reader.version,
            delta_table_id=reader.table_id,
            delta_files=reader.month_fingerprint(self.month.year_month),
            content_schema=schema.content_schema,
            content_digest=after.hex,
            row_count=after.rows,
            delta_schema=reader.identity,
            delta_commit_ms=reader.commit_timestamp(reader.version),
        )
        session.execute(RECORD_SYNC, record_sync_params(self.month, self.run_id, anchor))
        self._commit(session)
        return NarrowResult(plan.changes, reader.version, after, anchor)

    def _find(self, session: AdbcSession, reader: DeltaTableReader, schema: TableSchema) -> _Found:
        for statement in QueryLimits.of(self.settings.digest).statements():
            session.execute(statement)
        exported = str(session.query("SELECT pg_catalog.pg_export_snapshot()"))
        expected = reader.month_row_count(self.month.year_month) or 0
        buckets = buckets_for(expected, self.settings.digest.buckets)
        options = PassOptions(
            self.settings.postgres.batch_rows,
            self.settings.digest.delta_workers,
            QueryLimits.of(self.settings.digest),
        )
        with tempfile.TemporaryDirectory(prefix="reconciler-repair-") as spill:
            located = Localizer(schema, self.month, options, Path(spill))
            with ThreadPoolExecutor(max_workers=1) as pool:
                on_delta = pool.submit(located.delta_pass, reader, buckets)
                before = located.postgres_pass(self.db, exported, buckets)
                delta = on_delta.result()
            differing = delta.differing_buckets(before)
            self._within_limits(differing, before, delta)
            chunks = chunks_of(differing, before, delta)
            plans: list[_Plan] = []
            if chunks:
                located.keep_delta_rows(reader, buckets, chunks)
                for index, chunk in enumerate(chunks):
                    rows = located.postgres_rows(session, buckets, chunk)
                    plans.append(match(rows, located.delta_rows(index), schema))
        plan = _merge(plans)
        self._changes_within_limits(plan.changes, max(delta.rows, before.rows))
        return _Found(plan, before, delta)

    def _within_limits(
        self, differing: Sequence[int], before: MonthDigest, delta: MonthDigest
    ) -> None:
        """Refused early, from the bucket counts alone, when surely too many rows differ."""
        at_least = sum(abs(before.counts[b] - delta.counts[b]) for b in differing)
        self._changes_within_limits(RowChanges(surplus=at_least), max(delta.rows, before.rows))

    def _changes_within_limits(self, changes: RowChanges, month_rows: int) -> None:
        changed = changes.deleted + changes.inserted or changes.rows
        share = changed / month_rows if month_rows else 1.0
        if changed > self.limits.narrow_max_rows:
            raise NarrowNotPossible(
                f"{changed:,} rows differ, more than repair.narrow_max_rows "
                f"({self.limits.narrow_max_rows:,})"
            )
        if share > self.limits.narrow_max_share:
            raise NarrowNotPossible(
                f"{share:.1%} of the month's rows differ, more than repair.narrow_max_share "
                f"({self.limits.narrow_max_share:.1%})"
            )

    def _delete(self, session: AdbcSession, schema: TableSchema, plan: _Plan) -> MonthDigest:
        """Deletes the planned rows by ctid; the server hashes what it removes."""
        if not plan.ctids:
            return MonthDigest.empty(1)
        row = postgres_hash(POSTGRES.row(schema.value_columns))
        query = sql.SQL(
            "WITH gone AS (DELETE FROM {table} WHERE year_month = $1 AND ctid = ANY($2::tid[])"
            " RETURNING {row} AS h) SELECT count(*), coalesce(sum(h), 0) FROM gone"
        ).format(table=schema.qualified_table, row=sql.SQL(row))
        tids = "{" + ",".join(f'"{t}"' for t in plan.ctids) + "}"
        session.execute(query, (self.month.ym, tids))
        count, total = session.fetchall()[0]
        deleted = MonthDigest.from_pairs(1, [(0, int(count), int(total))])
        planned = MonthDigest.from_pairs(1, [(0, len(plan.ctids), sum(plan.deleted_hashes))])
        if deleted.hex != planned.hex:
            raise ProofFailed(
                f"{self.month}: the rows deleted ({deleted.hex}) are not the rows planned "
                f"({planned.hex}); rolled back"
            )
        return deleted

    def _insert(self, session: AdbcSession, schema: TableSchema, plan: _Plan) -> MonthDigest:
        """Binary COPY of the missing Delta rows into a temporary table, then one INSERT of
        them whose RETURNING hashes the rows as Postgres stored them (a trigger that changes
        a row, or a rule that drops it, fails the proof instead of slipping past it)."""
        if not plan.inserts:
            return MonthDigest.empty(1)
        rows = pa.concat_tables(plan.inserts)
        month = pa.array([self.month.ym] * rows.num_rows, pa.string())
        data = rows.append_column("year_month", month).select(schema.names).cast(schema.copy_schema)
        staged = f"reconciler_narrow_{self.run_id}"
        session.ingest_temporary(
            staged, pa.RecordBatchReader.from_batches(data.schema, data.to_batches())
        )
        columns = sql.SQL(", ").join(sql.Identifier(name) for name in schema.names)
        row = postgres_hash(POSTGRES.row(schema.value_columns))
        query = sql.SQL(
            "WITH added AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM pg_temp.{staged}"
            " RETURNING {row} AS h) SELECT count(*), coalesce(sum(h), 0) FROM added"
        ).format(
            table=schema.qualified_table,
            columns=columns,
            staged=sql.Identifier(staged),
            row=sql.SQL(row),
        )
        session.execute(query)
        count, total = session.fetchall()[0]
        session.execute(sql.SQL("DROP TABLE pg_temp.{}").format(sql.Identifier(staged)))
        return MonthDigest.from_pairs(1, [(0, int(count), int(total))])

    def _commit(self, session: AdbcSession) -> None:
        try:
            session.commit()
        except PostgresError:
            # The acknowledgement may be lost after the server committed: sync state knows.
            with self.db.session() as conn:
                if synced_run_id(conn, self.month) == self.run_id:
                    logger.warning(
                        "commit acknowledgement lost for %s, but run %s landed",
                        self.month,
                        self.run_id,
                        extra=self.month.log,
                    )
                    return
            raise


def _combine(before: MonthDigest, deleted: MonthDigest, inserted: MonthDigest) -> MonthDigest:
    """`before - deleted + inserted`, counts and hash sums mod 2^64 (the digest's algebra)."""
    total = (sum(before.sums) - sum(deleted.sums) + sum(inserted.sums)) & _MASK64
    return MonthDigest.from_pairs(1, [(0, before.rows - deleted.rows + inserted.rows, total)])
