"""Migrations and least-privilege roles against a real Postgres."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from reconciler.migrate import migrate, packaged_migrations
from replicator.month import Month
from replicator.postgres import Database
from replicator.secrets import Dsn
from tests.fix_db import LAYOUTS

pytestmark = LAYOUTS  # the roles hold on both layouts


def test_migrate_is_idempotent_and_recorded(pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    assert migrate(Database(Dsn(pg_dsn))) == []
    versions = [
        v
        for (v,) in pg.execute(
            "SELECT version FROM ranking.schema_migrations ORDER BY version"
        ).fetchall()
    ]
    assert versions == [m.version for m in packaged_migrations()]


FORBIDDEN_FOR_WRITER = [
    "DROP TABLE ranking.ranking_signal",
    "TRUNCATE ranking.ranking_signal",
    "ALTER TABLE ranking.ranking_signal ADD COLUMN x int",
    "DELETE FROM ranking.schema_migrations",
    "SELECT * FROM public.unrelated",
    "INSERT INTO public.unrelated VALUES (1)",
    "CREATE TABLE ranking.mine (x int)",
    "UPDATE ranking.ranking_signal SET rank = 1",
]


@pytest.mark.parametrize("statement", FORBIDDEN_FOR_WRITER)
def test_writer_cannot_do_more_than_replace_months(login_as: Any, statement: str) -> None:
    with login_as("ranking_writer") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_writer_can_replace_a_month_and_record_it(login_as: Any, layout: str) -> None:
    with login_as("ranking_writer") as conn, conn.transaction():
        target = "ranking.ranking_signal"
        if layout == "partitioned":  # through the SECURITY DEFINER functions, no DDL rights
            staged = conn.execute(
                "SELECT ranking.stage_month('ranking', 'ranking_signal', '2026-10')"
            ).fetchone()
            assert staged is not None
            target = f"ranking.{staged[0]}"
        else:
            conn.execute("DELETE FROM ranking.ranking_signal WHERE year_month = '2026-10'")
        conn.execute(
            f"INSERT INTO {target} VALUES ('2026-10', '2026-10-01', 'e', 'ctr', 1, 1, now())"
        )
        if layout == "partitioned":
            conn.execute(
                "SELECT ranking.swap_month('ranking', 'ranking_signal', '2026-10', %s)",
                (target.split(".")[1],),
            )
        else:
            conn.execute("SELECT ranking.analyze_signal_table('ranking', 'ranking_signal')")
        conn.execute(
            "INSERT INTO ranking.signal_sync_state (table_name, year_month,"
            " delta_version) VALUES ('ranking_signal', '2026-10', 1)"
            " ON CONFLICT (table_name, year_month) DO UPDATE SET delta_version = 2"
        )


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO ranking.ranking_signal"
        " VALUES ('2026-10', '2026-10-01', 'e', 'ctr', 1, 1, now())",
        "DELETE FROM ranking.ranking_signal",
        "SELECT * FROM ranking.signal_sync_state",
    ],
)
def test_reader_only_reads_signals(login_as: Any, statement: str) -> None:
    with login_as("ranking_reader") as conn:
        conn.execute("SELECT count(*) FROM ranking.composite_signal_daily")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_functions_shadowing_builtins_are_never_called(
    pg: psycopg.Connection[Any], pg_dsn: str, settings: Any, write_month: Any
) -> None:
    """A schema earlier in the search path defines look-alikes of the builtins our SQL uses;
    our connections pin search_path, so the digests stay right."""
    from reconciler.check import Checker
    from replicator.writer import MonthWriter
    from replicator.yearmonth import YearMonth

    database = pg.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    pg.execute("CREATE SCHEMA IF NOT EXISTS shadow")
    for signature in (
        "hashtextextended(text, bigint) RETURNS bigint",
        "encode(bytea, text) RETURNS text",
        "octet_length(text) RETURNS integer",
        "int8send(bigint) RETURNS bytea",
        "float8send(double precision) RETURNS bytea",
    ):
        pg.execute(
            f"CREATE OR REPLACE FUNCTION shadow.{signature} LANGUAGE plpgsql"
            " AS $$ BEGIN RETURN NULL; END $$"
        )
    pg.execute(
        sql.SQL("ALTER DATABASE {} SET search_path = shadow, public, pg_catalog").format(
            sql.Identifier(database)
        )
    )
    try:
        write_month("ranking_signal", "2026-10", rows=50)
        month = YearMonth.parse("2026-10")
        MonthWriter(settings).write_month(settings.table("ranking_signal"), month)
        result = Checker.for_settings(settings).check(
            Month.of(settings.table("ranking_signal"), month), deep=True
        )
        assert (result.status, result.delta_digest) == ("in_sync", result.postgres_digest)
    finally:
        pg.execute(sql.SQL("ALTER DATABASE {} RESET search_path").format(sql.Identifier(database)))
        pg.execute("DROP SCHEMA shadow CASCADE")
