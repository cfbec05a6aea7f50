"""How a signal table is laid out in Postgres, and the statements each layout's write needs.

* `plain`: one table; a write deletes the month and copies it in again, in one transaction.
  Every rewrite leaves the old month as dead tuples for autovacuum.
* `partitioned`: the table is partitioned by `year_month` (LIST), one partition per month. A
  write makes a fresh staging table (`ranking.stage_month`, committed at once), then in one
  transaction copies the month into it, builds its indexes and analyzes it
  (`ranking.finish_stage`), and, under the month's lock, swaps it in for the old partition,
  which is dropped (`ranking.swap_month`), and records the sync: no dead tuples, nothing
  visible before the commit, and readers wait only for the swap, which holds the table's
  ACCESS EXCLUSIVE lock from the detach to the commit and waits at most `SWAP_LOCK_TIMEOUT`
  for running readers before it is retried from a savepoint.

The writer and the reconciler follow what the table is (its `relkind`), so a table converted by
`reconciler migrate --layout partitioned` is written the new way from its next write on;
`postgres.layout` in the configuration is what `reconciler migrate` establishes.

Either way the writer leaves the month analyzed before it commits: the partitioned layout
analyzes the staging table before it is attached; the plain layout analyzes the table, through
`MAINTAIN` on Postgres 17 and later, else through `ranking.analyze_signal_table` (migration
0007). Planner statistics that count the month let the digest, and every reader, get a
parallel scan right after the write instead of a plan made for a few thousand rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from replicator.config import Layout, TableSpec
from replicator.errors import InputError, NotMigratedError
from replicator.postgres import LOCK_NOT_AVAILABLE, Session

__all__ = ["LOCK_NOT_AVAILABLE", "Layout", "analyze_statement", "table_layout"]


MAINTAIN_SINCE = 170000  # server_version_num from which MAINTAIN can be granted


def table_layout(conn: Session, spec: TableSpec) -> Layout:
    """What the table is; InputError when it does not exist."""
    row = conn.execute(
        "SELECT c.relkind FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (spec.postgres_schema, spec.postgres_table),
    ).fetchone()
    if row is None:
        raise InputError(
            f"table {spec.qualified_name} does not exist in Postgres: run `reconciler migrate`"
        )
    return Layout.PARTITIONED if row[0] == "p" else Layout.PLAIN


@dataclass(frozen=True)
class Analyze:
    """How a writer analyzes a plain table: the statement, and whether it returns a row (the
    SECURITY DEFINER function does; ANALYZE does not)."""

    statement: sql.Composed
    returns_row: bool = False


def analyze_statement(conn: Session, spec: TableSpec) -> Analyze:
    """How this session analyzes the (plain) table: ANALYZE itself where it holds MAINTAIN (or
    owns the table), else the SECURITY DEFINER function. ANALYZE without the right only warns
    and skips, so the right is asked first."""
    row = conn.execute(
        "SELECT pg_catalog.current_setting('server_version_num')::int,"
        " pg_catalog.pg_has_role(c.relowner, 'USAGE')"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (spec.postgres_schema, spec.postgres_table),
    ).fetchone()
    table = sql.Identifier(spec.postgres_schema, spec.postgres_table)
    if row is not None and row[1]:
        return Analyze(sql.SQL("ANALYZE {}").format(table))
    if row is not None and row[0] >= MAINTAIN_SINCE:
        maintain = conn.execute(
            "SELECT pg_catalog.has_table_privilege(%s, 'MAINTAIN')", (spec.qualified_name,)
        ).fetchone()
        if maintain and maintain[0]:
            return Analyze(sql.SQL("ANALYZE {}").format(table))
    usable = conn.execute(
        "SELECT pg_catalog.to_regprocedure('ranking.analyze_signal_table(text, text)') IS NOT NULL"
        " AND EXISTS (SELECT 1 FROM ranking.signal_tables WHERE schema_name = %s"
        " AND table_name = %s)",
        (spec.postgres_schema, spec.postgres_table),
    ).fetchone()
    if not usable or not usable[0]:
        # Refused before anything is written, not after a long COPY.
        raise NotMigratedError(
            f"the writer cannot analyze {spec.qualified_name}: run `reconciler migrate` (as "
            "the tables' owner) with this table configured"
        )
    function = sql.SQL("SELECT ranking.analyze_signal_table({}, {})").format(
        sql.Literal(spec.postgres_schema), sql.Literal(spec.postgres_table)
    )
    return Analyze(function, returns_row=True)


STAGE_MONTH = sql.SQL("SELECT ranking.stage_month($1, $2, $3)")
FINISH_STAGE = sql.SQL("SELECT ranking.finish_stage($1, $2, $3, $4)")
SWAP_MONTH = sql.SQL("SELECT ranking.swap_month($1, $2, $3, $4)")
# The swap waits this long for the table's running readers (new readers queue behind it
# meanwhile), then gives up and is retried, with a growing pause, this many times.
SWAP_LOCK_TIMEOUT = "2s"
SWAP_ATTEMPTS = 6
