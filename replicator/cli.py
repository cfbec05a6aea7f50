"""`replicator write`: the command the ranking job runs after a successful Delta write."""

from __future__ import annotations

import logging

import click

from replicator.errors import ReplicationError
from replicator.options import (
    EXIT_ERROR,
    EXIT_FINDING,
    EXIT_OK,
    YEAR_MONTH,
    Commands,
    build_settings,
    configure_logging,
    emit_json,
    exit_code_for,
    fail,
    hide_dsn_from_process_title,
    settings_options,
)
from replicator.writer import WriteStatus, write_months
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)


@click.group(cls=Commands)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--json-logs", is_flag=True, help="Log one JSON object per line on stderr.")
def main(verbose: bool, json_logs: bool) -> None:
    """Replicate months of ranking signals from Delta Lake to Postgres."""
    hide_dsn_from_process_title()
    configure_logging(verbose, json_logs)


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@settings_options
def write(
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
    """Replicate one month of each table in one transaction per table."""
    settings = build_settings(dsn, delta_root, config_path)
    try:
        specs = settings.select_tables(tables)
    except ValueError as exc:
        fail(str(exc))
    try:
        results = write_months(
            settings,
            year_month,
            specs,
            delta_version=delta_version,
            allow_empty=allow_empty,
            force=force,
            run_id=run_id,
        )
    except ReplicationError as exc:
        if as_json:
            emit_json({"year_month": str(year_month), "status": "error", "error": str(exc)})
        fail(str(exc), exit_code_for(exc))
    if as_json:
        emit_json({"year_month": str(year_month), "tables": [r.as_dict() for r in results]})
    statuses = {r.status for r in results}
    if WriteStatus.STALE in statuses:
        raise SystemExit(EXIT_FINDING)
    if WriteStatus.FAILED in statuses and settings.postgres.write_required:
        raise SystemExit(EXIT_ERROR)
    raise SystemExit(EXIT_OK)
