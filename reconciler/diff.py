"""Which rows differ: narrows a drifted month to its differing buckets, then to keys.

Rows are matched by key as multisets, so a duplicated row, a deleted row and a changed value
are each reported as what they are: only in Delta, only in Postgres, or changed (with columns).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from reconciler.check import open_snapshot_transaction
from reconciler.sides import DeltaSide, PostgresSide, RowFingerprint
from replicator.config import Settings, TableSpec
from replicator.delta import DeltaTableReader
from replicator.errors import InputError
from replicator.postgres import Database
from replicator.schema import TableSchema, postgres_columns, reconcile_schemas
from replicator.syncstate import read_sync_state
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)

# Rows of differing buckets fetched per pass, bounding the diff's memory.
ROWS_PER_PASS = 200_000


@dataclass
class DiffResult:
    table: str
    year_month: str
    delta_version: int
    only_in_delta: list[dict[str, Any]] = field(default_factory=list)
    only_in_postgres: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False

    @property
    def found(self) -> int:
        return len(self.only_in_delta) + len(self.only_in_postgres) + len(self.changed)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def compare_rows(
    schema: TableSchema,
    delta: list[RowFingerprint],
    postgres: list[RowFingerprint],
    result: DiffResult,
    limit: int,
) -> None:
    """Adds the differences between two multisets of rows to `result`, up to `limit` in all."""
    names = [c.name for c in schema.key_columns]
    value_names = [c.name for c in schema.value_columns]
    by_key: dict[int, tuple[list[RowFingerprint], list[RowFingerprint]]] = defaultdict(
        lambda: ([], [])
    )
    for row in delta:
        by_key[row.key_hash][0].append(row)
    for row in postgres:
        by_key[row.key_hash][1].append(row)
    for in_delta, in_postgres in sorted(
        by_key.values(), key=lambda pair: str((pair[0] or pair[1])[0].key)
    ):
        for row in list(in_delta):
            match = next((p for p in in_postgres if p.row_hash == row.row_hash), None)
            if match is not None:
                in_delta.remove(row)
                in_postgres.remove(match)
        for d, p in zip(in_delta, in_postgres, strict=False):
            columns = [n for n, a, b in zip(value_names, d.fields, p.fields, strict=True) if a != b]
            result.changed.append({"key": dict(zip(names, d.key, strict=True)), "columns": columns})
        paired = min(len(in_delta), len(in_postgres))
        result.only_in_delta += [dict(zip(names, r.key, strict=True)) for r in in_delta[paired:]]
        result.only_in_postgres += [
            dict(zip(names, r.key, strict=True)) for r in in_postgres[paired:]
        ]
    overflow = result.found - limit
    if overflow > 0:
        result.truncated = True
        for bucket in (result.only_in_postgres, result.only_in_delta, result.changed):
            cut = min(overflow, len(bucket))
            del bucket[len(bucket) - cut :]
            overflow -= cut


def diff_month(
    db: Database, settings: Settings, spec: TableSpec, year_month: YearMonth, limit: int
) -> DiffResult:
    """Differences between Postgres and the Delta version sync state says it holds
    (the latest version when the month was never synced)."""
    if limit < 1:
        raise InputError("--limit must be at least 1")
    latest = DeltaTableReader(spec, settings.table_uri(spec), settings.delta.storage_options)
    buckets = settings.digest.buckets
    with db.connect() as conn, db.errors("Postgres failed"):
        open_snapshot_transaction(conn)
        state = read_sync_state(conn, spec.name, str(year_month))
        version = state.delta_version if state and state.delta_version is not None else None
        snapshot = latest if version is None else latest.at_version(version)
        schema = reconcile_schemas(spec, snapshot.columns(), postgres_columns(conn, spec))
        delta = DeltaSide(snapshot, schema, year_month, settings.postgres.batch_rows)
        postgres = PostgresSide(conn, schema, year_month)
        postgres.verify_hash_function()
        result = DiffResult(spec.name, str(year_month), snapshot.version)
        delta_digest, postgres_digest = delta.digest(buckets), postgres.digest(buckets)
        pending = delta_digest.differing_buckets(postgres_digest)
        while pending and result.found < limit:
            chunk: list[int] = []
            rows = 0
            while pending and (not chunk or rows < ROWS_PER_PASS):
                bucket = pending.pop(0)
                chunk.append(bucket)
                rows += max(delta_digest.counts[bucket], postgres_digest.counts[bucket])
            compare_rows(
                schema,
                delta.fingerprints(buckets, chunk),
                postgres.fingerprints(buckets, chunk),
                result,
                limit,
            )
        result.truncated = result.truncated or bool(pending)
        conn.rollback()
    return result
