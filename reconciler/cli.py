"""`reconciler`: parses arguments, builds the objects and calls them; nothing else lives here."""

from __future__ import annotations

import getpass
import logging
from pathlib import Path

import click

from reconciler import __version__
from reconciler.check import Checker, MonthCheck
from reconciler.daemon import Daemon, Overrides
from reconciler.demo import run_demo
from reconciler.diff import DiffResult, diff_month
from reconciler.migrate import migrate as apply_migrations
from reconciler.repair import Repairer
from reconciler.status import build_status
from reconciler.verdict import Status
from replicator.config import ConfigError, Settings, TableSpec, parse_host_port
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
    fail,
    hide_dsn_from_process_title,
    render_table,
    settings_options,
)
from replicator.postgres import Database
from replicator.yearmonth import YearMonth

STATUS_EXIT = {Status.IN_SYNC: EXIT_OK, Status.ERROR: EXIT_ERROR}

logger = logging.getLogger(__name__)


@click.group(cls=Commands)
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
        applied = apply_migrations(Database.for_settings(settings, "reconciler"))
    except (ReplicationError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        emit_json({"applied": applied})
    else:
        click.echo(
            f"applied {len(applied)} migration(s)"
            + (": " + ", ".join(applied) if applied else "; up to date")
        )


def _prepare(settings: Settings, tables: tuple[str, ...]) -> tuple[Database, tuple[TableSpec, ...]]:
    """Validates everything that needs no connection; exits 2 on the first problem."""
    try:
        return Database.for_settings(settings, "reconciler"), settings.select_tables(tables)
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
    for line in render_table(rows):
        click.echo("  " + line)


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
    db, specs = _prepare(settings, tables)
    try:
        month = Checker(db, settings).check_month(year_month, specs, deep=deep)
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
    db, specs = _prepare(settings, (table,))
    try:
        result = diff_month(db, settings, specs[0], year_month, limit)
    except ReplicationError as exc:
        fail(str(exc))
    if as_json:
        emit_json(result.as_dict())
    else:
        _print_diff(result)
    raise SystemExit(EXIT_FINDING if result.found or result.truncated else EXIT_OK)


@main.command()
@click.option("--year-month", required=True, type=YEAR_MONTH, help="Month to repair.")
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="NAME",
    help="Table to repair (repeatable; default: all configured).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
@click.option("--force", is_flag=True, help="Rewrite the month even when it is in sync.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@settings_options
def repair(
    year_month: YearMonth,
    tables: tuple[str, ...],
    dry_run: bool,
    force: bool,
    as_json: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Re-replicate a month from the latest Delta snapshot, then check it again.

    Exit 0 when every table of the month is in sync afterwards, 1 when not, 2 on error.
    """
    settings = build_settings(dsn, delta_root, config_path)
    db, specs = _prepare(settings, tables)
    repairer = Repairer(Checker(db, settings), settings, db, actor=f"cli:{getpass.getuser()}")
    results = [repairer.repair(spec, year_month, dry_run=dry_run, force=force) for spec in specs]
    if as_json:
        emit_json(
            {
                "year_month": str(year_month),
                "dry_run": dry_run,
                "tables": [r.as_dict() for r in results],
            }
        )
    else:
        for r in results:
            after = f" -> {r.status_after}" if r.status_after else ""
            click.echo(
                f"{r.table} {r.year_month}: {r.outcome} ({r.status_before}{after})"
                + (f": {r.message}" if r.message else "")
            )
    if any(r.status_before is Status.ERROR for r in results):
        raise SystemExit(EXIT_ERROR)
    if dry_run:
        raise SystemExit(EXIT_OK)
    ok = all(r.outcome in ("repaired", "reanchored", "skipped") for r in results)
    raise SystemExit(EXIT_OK if ok else EXIT_FINDING)


@main.command()
@click.option("--once", is_flag=True, help="Run one cycle and exit (0 all in sync, 1 findings).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between cycles (default: daemon.interval_seconds).",
)
@click.option("--auto-repair/--no-auto-repair", default=None, help="Override auto_repair.enabled.")
@click.option(
    "--metrics-addr",
    metavar="HOST:PORT",
    default=None,
    help="Where to serve /metrics (default: daemon.metrics_addr).",
)
@settings_options
def run(
    once: bool,
    interval: float | None,
    auto_repair: bool | None,
    metrics_addr: str | None,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Compare every month continuously, export metrics, repair within guardrails."""
    if metrics_addr is not None:
        try:
            parse_host_port(metrics_addr)
        except ConfigError as exc:
            fail(str(exc))
    settings = build_settings(dsn, delta_root, config_path)
    try:
        settings.require_dsn()
    except ConfigError as exc:
        fail(f"{exc}: the reconciler cannot start without Postgres")
    if settings.daemon.json_logs:
        configure_logging(json_logs=True)

    def reload() -> Settings:
        return build_settings(dsn, delta_root, config_path)

    daemon = Daemon(reload, Overrides(interval, auto_repair, metrics_addr))
    daemon.install_signal_handlers()
    server = None
    if not once or metrics_addr:
        try:
            server = daemon.serve_metrics()
        except OSError as exc:
            fail(f"cannot serve metrics: {exc}")
    try:
        summary = daemon.run(once=once)
    finally:
        if server is not None:
            server.stop()
    if once:
        statuses = [m.status for m in daemon.months.values()]
        if not all(summary.sources_up.values()) or Status.ERROR in statuses:
            raise SystemExit(EXIT_ERROR)
        in_sync = all(s is Status.IN_SYNC for s in statuses)
        raise SystemExit(EXIT_OK if in_sync else EXIT_FINDING)
    raise SystemExit(EXIT_OK)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--require-in-sync",
    is_flag=True,
    help="Exit 0 only if every month in the window was last found in sync.",
)
@settings_options
def status(
    as_json: bool,
    require_in_sync: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Every month of every table: sync state, lag, and the daemon's last check result."""
    settings = build_settings(dsn, delta_root, config_path)
    db, _ = _prepare(settings, ())
    try:
        report = build_status(db, settings)
    except ReplicationError as exc:
        fail(str(exc))
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(report.render())
    if require_in_sync:
        raise SystemExit(EXIT_OK if report.all_in_sync else EXIT_FINDING)
    raise SystemExit(EXIT_OK)


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-data"),
    show_default=True,
    help="Where the embedded Postgres and the Delta tables live.",
)
@click.option(
    "--fresh/--reuse",
    default=True,
    show_default=True,
    help="Start from an empty directory, or reuse what a previous demo left.",
)
@click.option("--keep-running", is_flag=True, help="Keep the daemon serving until Ctrl-C.")
@click.option(
    "--metrics-addr",
    default="127.0.0.1:9187",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the demo daemon serves /metrics.",
)
def demo(directory: Path, fresh: bool, keep_running: bool, metrics_addr: str) -> None:
    """Run the whole system on embedded defaults and show drift, lag and repair."""
    try:
        parse_host_port(metrics_addr)
    except ConfigError as exc:
        fail(str(exc))
    try:
        run_demo(directory, fresh=fresh, keep_running=keep_running, metrics_addr=metrics_addr)
    except OSError as exc:
        fail(f"demo failed: {exc}")
