"""Applies the packaged SQL migrations once each, recorded in `ranking.schema_migrations`."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from psycopg import sql

from reconciler.convert import convert_to_partitioned
from replicator.config import DEFAULT_TABLES, TableSpec
from replicator.layout import MAINTAIN_SINCE, Layout
from replicator.postgres import Database, Session

logger = logging.getLogger(__name__)

# Serializes concurrent `reconciler migrate` runs (an arbitrary, fixed advisory lock key).
_MIGRATION_LOCK = 0x5EC0_0001

_LEDGER = """
CREATE SCHEMA IF NOT EXISTS ranking;
CREATE TABLE IF NOT EXISTS ranking.schema_migrations (
    version    text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def packaged_migrations() -> list[Migration]:
    folder = resources.files("reconciler.migrations")
    return [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".sql")
    ]


def migrate(
    db: Database,
    tables: Sequence[TableSpec] = DEFAULT_TABLES,
    layout: Layout | None = None,
) -> list[str]:
    """Applies pending migrations, each in its own transaction, registers the configured
    tables, and converts them to `layout` when given; returns the versions applied."""
    applied: list[str] = []
    db = db.named("reconciler-migrate")
    with db.session() as conn:
        conn.execute("SELECT pg_catalog.pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(_LEDGER)
        conn.commit()
        done = {
            version: checksum
            for version, checksum in conn.fetchall(
                "SELECT version, checksum FROM ranking.schema_migrations"
            )
        }
        for migration in packaged_migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    logger.warning("migration %s changed since it was applied", migration.version)
                continue
            with conn.transaction():
                conn.execute(migration.text.encode())
                conn.execute(
                    "INSERT INTO ranking.schema_migrations (version, checksum) VALUES (%s, %s)",
                    (migration.version, migration.checksum),
                )
            logger.info("applied migration %s", migration.version)
            applied.append(migration.version)
        register_tables(conn, tables)
        warn_about_default_partitions(conn, tables)
        conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        conn.commit()
    if layout is Layout.PARTITIONED:
        for spec in tables:
            if convert_to_partitioned(db, spec):
                applied.append(f"{spec.qualified_name}: partitioned")
    return applied


def register_tables(conn: Session, tables: Sequence[TableSpec]) -> None:
    """The configured tables, for the SECURITY DEFINER functions of migration 0007; on
    Postgres 17 and later the writer may ANALYZE them itself (MAINTAIN)."""
    newest = conn.scalar("SELECT pg_catalog.current_setting('server_version_num')::int")
    maintain = int(newest or 0) >= MAINTAIN_SINCE
    for spec in tables:
        conn.execute(
            "INSERT INTO ranking.signal_tables VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (spec.postgres_schema, spec.postgres_table),
        )
        exists = conn.scalar("SELECT pg_catalog.to_regclass(%s)", (spec.qualified_name,))
        if maintain and exists is not None:
            conn.execute(
                sql.SQL("GRANT MAINTAIN ON {} TO ranking_writer").format(
                    sql.Identifier(spec.postgres_schema, spec.postgres_table)
                )
            )


def warn_about_default_partitions(conn: Session, tables: Sequence[TableSpec]) -> list[str]:
    """A DEFAULT partition holds rows of months that have no partition of their own: the
    writer never puts rows there, and the daemon reports such months as orphaned (or drift)
    until they are moved or removed. Returns the tables that have one."""
    found = []
    for spec in tables:
        default = conn.scalar(
            "SELECT partdefid::regclass::text FROM pg_catalog.pg_partitioned_table"
            " WHERE partrelid = pg_catalog.to_regclass(%s) AND partdefid <> 0",
            (spec.qualified_name,),
        )
        if default:
            found.append(spec.qualified_name)
            logger.warning(
                "%s has a DEFAULT partition (%s): the replicator writes each month into a"
                " partition of its own, so rows there belong to no synced month; the daemon"
                " reports their months as orphaned or drift until they are moved or deleted",
                spec.qualified_name,
                default,
            )
    return found
