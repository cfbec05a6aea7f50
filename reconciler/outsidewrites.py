"""Noticing writes that bypass the replicator, from Postgres's table statistics alone.

Every write by the replicator shows in sync state (the month's old rows deleted, its new rows
inserted); a table whose row-change counters moved by more than that was written around it, so
its months must be compared again even though no metadata of theirs changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg

from replicator.config import TableSpec
from replicator.syncstate import SyncState

logger = logging.getLogger(__name__)


class OutsideWriteDetector:
    """Remembers each table's counters and the sync states seen at the previous cycle."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._sync_seen: dict[tuple[str, str], SyncState] = {}

    def tables_written_outside(
        self,
        conn: psycopg.Connection[Any],
        tables: Iterable[TableSpec],
        states: dict[tuple[str, str], SyncState],
    ) -> set[str]:
        """The tables whose counters moved more than the replicator's own writes explain."""
        suspicious: set[str] = set()
        for spec in tables:
            row = conn.execute(
                "SELECT coalesce(n_tup_ins + n_tup_upd + n_tup_del, 0)"
                " FROM pg_catalog.pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
                (spec.postgres_schema, spec.postgres_table),
            ).fetchone()
            counter = int(row[0]) if row else 0
            explained = 0
            for key, state in states.items():
                if key[0] != spec.name:
                    continue
                seen = self._sync_seen.get(key)
                if seen is None or (seen.run_id, seen.synced_at) != (state.run_id, state.synced_at):
                    explained += (seen.row_count or 0 if seen else 0) + (state.row_count or 0)
            previous = self._counters.get(spec.name)
            if previous is not None and counter - previous > explained:
                logger.warning(
                    "table %s was written outside the replicator: re-checking its months",
                    spec.name,
                    extra={"table": spec.name},
                )
                suspicious.add(spec.name)
            self._counters[spec.name] = counter
        self._sync_seen = dict(states)
        return suspicious
