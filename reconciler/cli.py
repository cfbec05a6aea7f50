"""`reconciler`: parses arguments, builds the objects and calls them; nothing else lives here."""

from __future__ import annotations

import logging

import click
import psycopg

from reconciler import __version__
from reconciler.check import MonthCheck, MonthComparer
from reconciler.diff import DiffResult, diff_month
from reconciler.migrate import migrate as apply_migrations
from replicator.config import ConfigError, Settings, TableSpec
from replicator.errors import ReplicationError
from replicator.options import (
    EXIT_ERROR,
    EXIT_FINDING,
    EXIT_OK,
    YEAR_MONTH,
    build_settings,
    configure_logging,
    emit_json,
    fail,
    hide_dsn_from_process_title,
    settings_options,
)
from replicator.yearmonth import YearMonth

STATUS_EXIT = {"in_sync": EXIT_OK, "error": EXIT_ERROR}

logger = logging.getLogger(__name__)


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--json-logs", is_flag=True, help="Log one JSON object per line on stderr.")
def main(verbose: bool, json_logs: bool) -> None:
    """Compare Delta Lake months with their Postgres copy, report drift and repair it."""
    hide_dsn_from_process_title()
    configure_logging(verbose, json_logs)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@settings_options
def migrate(
    as_json: bool, dsn: str | None, delta_root: str | None, config_path: str | None
) -> None:
    """Apply the SQL migrations (schema, tables, sync state, roles) idempotently."""
    settings = build_settings(dsn, delta_root, config_path)
    try:
        applied = apply_migrations(
            settings.require_dsn(), connect_timeout=settings.connect_timeout_seconds
        )
    except (ReplicationError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        emit_json({"applied": applied})
    else:
        click.echo(
            f"applied {len(applied)} migration(s)"
            + (": " + ", ".join(applied) if applied else "; up to date")
        )


def _comparer(
    settings: Settings, tables: tuple[str, ...]
) -> tuple[MonthComparer, tuple[TableSpec, ...]]:
    """Validates everything that needs no connection; exits 2 on the first problem."""
    try:
        specs = settings.select_tables(tables)
        return MonthComparer(settings), specs
    except ConfigError as exc:
        fail(str(exc))


def _print_check(month: MonthCheck) -> None:
    click.echo(f"{month.year_month}: {month.status}")
    header = ("table", "status", "delta v", "synced v", "delta rows", "postgres rows", "reason")
    rows = [header] + [
        (
            t.table,
            t.status,
            str(t.delta_version),
            str(t.synced_version),
            str(t.delta_rows),
            str(t.postgres_rows),
            t.reason,
        )
        for t in month.tables
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        click.echo(
            "  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )


@main.command()
@click.option("--year-month", required=True, type=YEAR_MONTH, help="Month to compare.")
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="NAME",
    help="Table to compare (repeatable; default: all configured).",
)
@click.option(
    "--deep",
    is_flag=True,
    help="Recompute the Delta digest from the snapshot instead of using the one recorded at sync.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@settings_options
def check(
    year_month: YearMonth,
    tables: tuple[str, ...],
    deep: bool,
    as_json: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Compare a month in Delta and Postgres by counts and row hashes.

    Exit 0 in sync, 1 drift/lagging/missing/orphaned, 2 error.
    """
    settings = build_settings(dsn, delta_root, config_path)
    comparer, specs = _comparer(settings, tables)
    try:
        month = comparer.check_month(year_month, specs, deep=deep)
    except ReplicationError as exc:
        fail(str(exc))
    if as_json:
        emit_json(month.as_dict())
    else:
        _print_check(month)
    raise SystemExit(STATUS_EXIT.get(month.status, EXIT_FINDING))


def _print_diff(result: DiffResult) -> None:
    click.echo(
        f"{result.table} {result.year_month} against Delta version {result.delta_version}:"
        f" {len(result.only_in_delta)} only in Delta, {len(result.only_in_postgres)}"
        f" only in Postgres, {len(result.changed)} changed"
        + (" (truncated by --limit)" if result.truncated else "")
    )
    for key in result.only_in_delta:
        click.echo(f"  only in Delta     {key}")
    for key in result.only_in_postgres:
        click.echo(f"  only in Postgres  {key}")
    for change in result.changed:
        click.echo(f"  changed           {change['key']}  columns: {', '.join(change['columns'])}")


@main.command()
@click.option("--year-month", required=True, type=YEAR_MONTH, help="Month to compare.")
@click.option("--table", required=True, metavar="NAME", help="Table to compare.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Report at most this many differing rows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@settings_options
def diff(
    year_month: YearMonth,
    table: str,
    limit: int,
    as_json: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """List the keys that differ between Delta and Postgres for one month of one table.

    Exit 0 no difference, 1 differences found, 2 error.
    """
    settings = build_settings(dsn, delta_root, config_path)
    comparer, specs = _comparer(settings, (table,))
    try:
        result = diff_month(comparer, specs[0], year_month, limit)
    except ReplicationError as exc:
        fail(str(exc))
    except psycopg.Error as exc:
        fail(f"Postgres failed: {comparer.dsn.scrub(str(exc)).strip()}")
    if as_json:
        emit_json(result.as_dict())
    else:
        _print_diff(result)
    raise SystemExit(EXIT_FINDING if result.found or result.truncated else EXIT_OK)
