"""`replicator write`: the command the ranking job runs after a successful Delta write."""

from __future__ import annotations

import logging

import click

from replicator import __version__
from replicator.options import (
    EXIT_ERROR,
    EXIT_FINDING,
    EXIT_OK,
    YEAR_MONTH,
    Commands,
    build_settings,
    emit_json,
    fail,
    json_context,
    json_option,
    settings_options,
    start,
)
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


@click.group(cls=Commands)
@click.version_option(__version__, prog_name="replicator")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--json-logs", is_flag=True, help="Log one JSON object per line on stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, json_logs: bool) -> None:
    """Replicate months of ranking signals from Delta Lake to Postgres."""
    start(ctx, verbose, json_logs)


@main.command()
@click.option("--year-month", required=True, type=YEAR_MONTH, help="Month to replicate.")
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="NAME",
    help="Table to replicate (repeatable; default: all configured).",
)
@click.option(
    "--delta-version",
    type=click.IntRange(min=0),
    default=None,
    help="Delta version to read (default: the latest at start).",
)
@click.option(
    "--allow-empty", is_flag=True, help="A month absent from Delta empties it in Postgres."
)
@click.option("--force", is_flag=True, help="Replace content synced from a newer Delta version.")
@click.option("--run-id", default=None, help="Id recorded in sync state (default: random).")
@json_option
@settings_options
def write(  # noqa: PLR0913 (click passes every option of the command as an argument)
    year_month: YearMonth,
    tables: tuple[str, ...],
    delta_version: int | None,
    allow_empty: bool,
    force: bool,
    run_id: str | None,
    as_json: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Replicate one month of each table in one transaction per table.

    Exit 0 written (or skipped without POSTGRES_DSN), 1 Postgres holds a newer Delta version,
    2 error.
    """
    from replicator.writer import WriteOptions, WriteStatus, write_months

    json_context(year_month=year_month)
    settings = build_settings(dsn, delta_root, config_path)
    try:
        specs = settings.select_tables(tables)
    except ValueError as exc:
        fail(str(exc))
    results = write_months(
        settings,
        year_month,
        specs,
        options=WriteOptions(delta_version, allow_empty, force),
        run_id=run_id,
    )
    statuses = {r.status for r in results}
    failed = WriteStatus.FAILED in statuses and settings.postgres.write_required
    if as_json:
        status = "stale" if WriteStatus.STALE in statuses else "failed" if failed else "ok"
        emit_json(
            {
                "year_month": str(year_month),
                "status": status,
                "tables": [r.as_dict() for r in results],
            }
        )
    if WriteStatus.STALE in statuses:
        raise SystemExit(EXIT_FINDING)
    if failed:
        raise SystemExit(EXIT_ERROR)
    raise SystemExit(EXIT_OK)


def console() -> None:
    """The `replicator` console script: Ctrl-C and SIGTERM cancel what Postgres is doing and exit
    130 (`replicator.interrupts`); the commands themselves are `main`."""
    from replicator import interrupts

    interrupts.install()
    main()
