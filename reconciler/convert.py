"""`reconciler migrate --layout partitioned`: converting a plain signal table in place, month by
month, without losing or duplicating a row, while readers and the writer keep working.

1. Copy, month by month, each month into a standalone table that will become its partition
   (`<table>_<YYYYMM>`, with the partition bound as a CHECK constraint and the table's indexes,
   built after the load), in one transaction per month under that month's writer lock: the
   copy is consistent with any write of the month; writers of the other months and every
   reader carry on.
2. One final transaction: take the writer locks of every month and a SHARE lock on the table
   (writes wait, reads do not), compare each month's count and a checksum of its rows with its
   copy, copy again the months written since (and any month new since), drop copies of months
   gone since, build the partitioned table from the copies (the CHECK constraints spare ATTACH
   any scan, the indexes are there already), give it the old table's grants, and swap the
   names. Writers wait for this whole step: about two scans of the table (the checksums).
   Readers wait only from the rename to the commit (an ACCESS EXCLUSIVE lock on the old table):
   milliseconds once the running reads have finished. The rename waits at most `lock_timeout`
   for them; it is retried from a savepoint, without scanning again.

Refused, with nothing changed: a table with triggers or row-level security policies (they
would not carry over), a unique index without `year_month` (a partitioned table cannot have
one). Storage parameters (reloptions) do not carry over to a partitioned table; they are named
in the log. A view or anything else depending on the old table makes its DROP fail: the final
transaction rolls back, the table stays plain and whole, and the error names the dependency.
Going back from partitioned to plain is not supported.
"""

from __future__ import annotations

import logging
import time

from psycopg import sql

from replicator.config import TableSpec
from replicator.errors import InputError, PostgresError
from replicator.layout import Layout, table_layout
from replicator.postgres import LOCK_NOT_AVAILABLE, Database, Session
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)

RENAME_ATTEMPTS = 5
LOCK_TIMEOUT = "10s"


def partition_name(spec: TableSpec, month: str) -> str:
    """The name `ranking.swap_month` gives a month's partition."""
    return f"{spec.postgres_table[:50]}_{month.replace('-', '')}"


def convert_to_partitioned(db: Database, spec: TableSpec) -> bool:
    """Converts the table; False when it is partitioned already."""
    table = sql.Identifier(spec.postgres_schema, spec.postgres_table)
    with db.session() as conn:
        if table_layout(conn, spec) is Layout.PARTITIONED:
            return False
        _refuse_what_would_not_carry_over(conn, spec)
        months = _months(conn, table)
        conn.rollback()
        started = time.monotonic()
        for month in months:
            _month_lock(conn, spec, month)
            _copy_month(conn, spec, table, month)
            conn.commit()
            logger.info("%s: copied %s", spec.qualified_name, month)
        blocked = _swap_in(conn, spec, table)
    logger.info(
        "%s: partitioned, %d months in %.1fs; readers waited %.3fs",
        spec.qualified_name,
        len(months),
        time.monotonic() - started,
        blocked,
    )
    return True


def _refuse_what_would_not_carry_over(conn: Session, spec: TableSpec) -> None:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid"
        "        AND NOT t.tgisinternal),"
        " (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid),"
        " (SELECT count(*) FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisunique"
        "        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid"
        "        AND a.attname = 'year_month' AND a.attnum = ANY(i.indkey))),"
        " c.reloptions"
        " FROM pg_catalog.pg_class c WHERE c.oid = %s::regclass",
        (spec.qualified_name,),
    ).fetchone()
    assert row is not None
    triggers, policies, unique, reloptions = row
    if triggers or policies or unique:
        raise InputError(
            f"cannot convert {spec.qualified_name}: it has {triggers} trigger(s), {policies} "
            f"row-level security polic(ies) and {unique} unique index(es) without year_month, "
            "which a partitioned table would not carry over; remove them first"
        )
    if reloptions:
        logger.warning(
            "%s: storage parameters %s do not carry over to the partitioned table",
            spec.qualified_name,
            ", ".join(reloptions),
        )


def _month_lock(conn: Session, spec: TableSpec, month: str) -> None:
    conn.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(%s), %s)",
        (spec.qualified_name, YearMonth.parse(month).lock_key),
    )


def _months(conn: Session, table: sql.Identifier) -> list[str]:
    query = sql.SQL("SELECT DISTINCT year_month FROM {} ORDER BY 1").format(table)
    return [row[0] for row in conn.execute(query)]


def _copies(conn: Session, spec: TableSpec) -> dict[str, str]:
    """The copies a conversion made (or an interrupted one left), by month."""
    rows = conn.execute(
        "SELECT k.consrc_month, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN LATERAL (SELECT substring(pg_catalog.pg_get_constraintdef(k.oid)"
        "   FROM '''([0-9-]+)''') AS consrc_month FROM pg_catalog.pg_constraint k"
        "   WHERE k.conrelid = c.oid AND k.conname = 'month_bound') k"
        " WHERE n.nspname = %s AND c.relname ~ %s AND NOT c.relispartition"
        " AND c.relkind = 'r'",
        (spec.postgres_schema, f"^{spec.postgres_table[:50]}_[0-9]{{6}}$"),
    ).fetchall()
    return {str(month): str(name) for month, name in rows if month}


def _index_definitions(conn: Session, table: str) -> list[tuple[bool, str]]:
    """(unique, ' USING method (columns) ...') of every index of `table`."""
    rows = conn.execute(
        "SELECT i.indisunique, substring(pg_catalog.pg_get_indexdef(i.indexrelid)"
        " FROM ' USING .*$') FROM pg_catalog.pg_index i WHERE i.indrelid = %s::regclass",
        (table,),
    ).fetchall()
    return [(bool(unique), str(tail)) for unique, tail in rows]


def _copy_month(conn: Session, spec: TableSpec, table: sql.Identifier, month: str) -> None:
    """(Re)creates the month's future partition with a copy of its rows; no commit."""
    name = partition_name(spec, month)
    part = sql.Identifier(spec.postgres_schema, name)
    _drop_leftover(conn, spec.postgres_schema, name)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            " INCLUDING STORAGE INCLUDING COMPRESSION)"
        ).format(part, table)
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT month_bound CHECK (year_month = {})").format(
            part, sql.Literal(month)
        )
    )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE year_month = %s").format(part, table),
        (month,),
    )
    # The table's indexes, built after the load (ATTACH then finds them and builds nothing).
    for unique, tail in _index_definitions(conn, spec.qualified_name):
        conn.execute(
            sql.SQL("CREATE {}INDEX ON {}{}").format(
                sql.SQL("UNIQUE " if unique else ""), part, sql.SQL(tail)
            )
        )
    conn.execute(sql.SQL("ANALYZE {}").format(part))


def _drop_leftover(conn: Session, schema: str, name: str) -> None:
    """Drops a copy an interrupted conversion left; refuses to touch any other table."""
    row = conn.execute(
        "SELECT c.relispartition, EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k"
        "  WHERE k.conrelid = c.oid AND k.conname = 'month_bound')"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    if row is None:
        return
    if row[0] or not row[1]:
        raise PostgresError(
            f"converting: {schema}.{name} exists and is not a copy this conversion made;"
            " rename it first"
        )
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, name)))


def _checksums(
    conn: Session, source: sql.Composable, month: str | None = None
) -> dict[str, tuple[int, int]]:
    """Rows and a checksum of their text per month (the same server, the same columns in the
    same order on both sides, so equal rows give equal text)."""
    where = sql.SQL(" WHERE year_month = %s") if month else sql.SQL("")
    query = sql.SQL(
        "SELECT year_month, count(*), coalesce(sum(pg_catalog.hashtextextended(t::text, 0)), 0)"
        " FROM {} AS t{} GROUP BY 1"
    ).format(source, where)
    rows = conn.execute(query, (month,) if month else None).fetchall()
    return {row[0]: (int(row[1]), int(row[2])) for row in rows}


def _swap_in(conn: Session, spec: TableSpec, table: sql.Identifier) -> float:
    """The final transaction (see the module docstring); returns how long readers waited."""
    schema = spec.postgres_schema
    parent_name = f"{spec.postgres_table[:48]}__partitioned"
    parent = sql.Identifier(schema, parent_name)
    for month in _months(conn, table):
        _month_lock(conn, spec, month)
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(table))
    months = _months(conn, table)  # under the lock: nothing changes any more
    expected = _checksums(conn, table)
    copies = _copies(conn, spec)
    for month, name in copies.items():
        if month not in expected:  # emptied since its copy
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, name)))
    for month in months:
        copied = None
        if month in copies:
            copied = _checksums(conn, sql.Identifier(schema, copies[month]), month).get(month)
        if copied != expected[month]:
            logger.info("%s: %s changed during the copy; copying it again", spec.name, month)
            _copy_month(conn, spec, table, month)
    if conn.scalar("SELECT pg_catalog.to_regclass(%s)", (f"{schema}.{parent_name}",)) is not None:
        conn.execute(sql.SQL("DROP TABLE {}").format(parent))  # an interrupted conversion's
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE"
            " INCLUDING COMPRESSION INCLUDING INDEXES INCLUDING COMMENTS) PARTITION BY LIST"
            " (year_month)"
        ).format(parent, table)
    )
    for month in months:
        part = sql.Identifier(schema, partition_name(spec, month))
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
                parent, part, sql.Literal(month)
            )
        )
    # The same grants as the plain table had.
    grants = conn.execute(
        "SELECT a.privilege_type, pg_catalog.quote_ident(r.rolname)"
        " FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a"
        " JOIN pg_catalog.pg_roles r ON r.oid = a.grantee"
        " WHERE c.oid = %s::regclass AND a.grantee <> c.relowner",
        (spec.qualified_name,),
    ).fetchall()
    for privilege, grantee in grants:
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privilege), parent, sql.SQL(grantee))
        )
    return _rename(conn, spec, table, parent)


def _rename(conn: Session, spec: TableSpec, table: sql.Identifier, parent: sql.Identifier) -> float:
    """The names swapped and the old table dropped, from a savepoint: a rename that waits past
    lock_timeout for running readers is retried without redoing the scans; commits."""
    old_name = f"{spec.postgres_table[:48]}__plain_old"
    old = sql.Identifier(old_name)
    for attempt in range(1, RENAME_ATTEMPTS + 1):
        waited = time.monotonic()
        try:
            with conn.transaction():  # a savepoint inside the final transaction
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT))
                )
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table, old))
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                        parent, sql.Identifier(spec.postgres_table)
                    )
                )
                dropped = sql.Identifier(spec.postgres_schema, old_name)
                conn.execute(sql.SQL("DROP TABLE {}").format(dropped))
        except PostgresError as exc:
            if exc.sqlstate != LOCK_NOT_AVAILABLE:
                raise
            logger.warning(
                "%s: readers held the table past lock_timeout %s (attempt %d of %d)",
                spec.qualified_name,
                LOCK_TIMEOUT,
                attempt,
                RENAME_ATTEMPTS,
            )
            continue
        conn.commit()
        return time.monotonic() - waited
    raise PostgresError(
        f"converting {spec.qualified_name}: the table stayed in use past lock_timeout "
        f"{RENAME_ATTEMPTS} times; nothing changed; try again when readers are quieter"
    )
