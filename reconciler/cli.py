"""`reconciler`: parses arguments, builds the objects and calls them; nothing else lives here.

Exit codes everywhere: 0 in sync / success, 1 a finding (drift, lag, missing, orphaned, a
repair that did not bring the month in sync), 2 usage or infrastructure error.
"""

from __future__ import annotations

import getpass
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler import __version__
from replicator.config import (
    DEFAULT_METRICS_ADDR,
    ConfigError,
    Layout,
    RepairMode,
    Settings,
    TableSpec,
    parse_host_port,
    with_overrides,
)
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
    json_context,
    json_option,
    settings_options,
    start,
)
from replicator.yearmonth import YearMonth

if TYPE_CHECKING:
    from reconciler.verdict import Status
    from replicator.postgres import Database

logger = logging.getLogger(__name__)


@click.group(cls=Commands)
@click.version_option(__version__, prog_name="reconciler")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--json-logs", is_flag=True, help="Log one JSON object per line on stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, json_logs: bool) -> None:
    """Compare Delta Lake months with their Postgres copy, report drift and repair it."""
    start(ctx, verbose, json_logs)


def _prepare(settings: Settings, tables: tuple[str, ...]) -> tuple[Database, tuple[TableSpec, ...]]:
    """Validates everything that needs no connection; exits 2 on the first problem."""
    from replicator.postgres import Database

    try:
        return Database.for_settings(settings, "reconciler"), settings.select_tables(tables)
    except ConfigError as exc:
        fail(str(exc))


def exit_code(status: Status) -> int:
    from reconciler.verdict import Status

    if status is Status.IN_SYNC:
        return EXIT_OK
    return EXIT_FINDING if status.is_finding else EXIT_ERROR


@main.command()
@click.option(
    "--layout",
    type=click.Choice([layout.value for layout in Layout]),
    default=None,
    help="Convert the configured tables to this layout (default: postgres.layout); "
    "plain to partitioned runs online, month by month.",
)
@json_option
@settings_options
def migrate(
    layout: str | None,
    as_json: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Apply the SQL migrations (schema, tables, sync state, roles) idempotently, and give the
    configured tables their layout."""
    settings = build_settings(dsn, delta_root, config_path)
    db, _ = _prepare(settings, ())
    from reconciler.migrate import migrate as apply_migrations

    applied = apply_migrations(db, settings.tables, Layout(layout or settings.postgres.layout))
    if as_json:
        emit_json({"status": "ok", "applied": applied})
    else:
        click.echo(
            f"applied {len(applied)} migration(s)"
            + (": " + ", ".join(applied) if applied else "; up to date")
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
    help="Recompute the Delta side instead of trusting the digest recorded at sync.",
)
@json_option
@settings_options
def check(  # noqa: PLR0913 (click passes every option of the command as an argument)
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
    json_context(year_month=year_month)
    settings = build_settings(dsn, delta_root, config_path)
    db, specs = _prepare(settings, tables)
    from reconciler.check import Checker
    from reconciler.render import print_check

    month = Checker(db, settings).check_month(year_month, specs, deep=deep)
    if as_json:
        emit_json(month.as_json())
    else:
        print_check(month)
    raise SystemExit(exit_code(month.status))


@main.command()
@click.option("--year-month", required=True, type=YEAR_MONTH, help="Month to compare.")
@click.option("--table", required=True, metavar="NAME", help="Table to compare.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="List at most this many differing keys (the totals always count all).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Also write every difference (no limit) to FILE: .parquet or .csv.",
)
@json_option
@settings_options
def diff(  # noqa: PLR0913 (click passes every option of the command as an argument)
    year_month: YearMonth,
    table: str,
    limit: int,
    output: Path | None,
    as_json: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Show the rows that differ between Delta and Postgres for one month of one table.

    Exit 0 no difference, 1 differences found, 2 error (a month absent on both sides too).
    """
    json_context(year_month=year_month, table=table)
    if output is not None and output.suffix.lower() not in (".parquet", ".csv"):
        fail(f"--output must end in .parquet or .csv, got {output.name!r}")
    settings = build_settings(dsn, delta_root, config_path)
    db, specs = _prepare(settings, (table,))
    from reconciler.diff import Differ
    from reconciler.render import print_diff
    from replicator.month import Month

    result = Differ(db, settings).diff(Month.of(specs[0], year_month), limit=limit, output=output)
    if as_json:
        emit_json(result.as_dict())
    else:
        print_diff(result)
        if output is not None:
            click.echo(f"  every difference written to {output}")
    raise SystemExit(EXIT_FINDING if result.found else EXIT_OK)


@main.command()
@click.option("--year-month", required=True, type=YEAR_MONTH, help="Month to repair.")
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="NAME",
    help="Table to repair (repeatable; default: all configured).",
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in RepairMode]),
    default=None,
    help="auto: only the differing rows when few differ, else the whole month; narrow: only "
    "the differing rows, or refuse; full: the whole month (default: repair.mode, auto).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
@click.option("--force", is_flag=True, help="Rewrite the month even when it is in sync.")
@json_option
@settings_options
def repair(  # noqa: PLR0913 (click passes every option of the command as an argument)
    year_month: YearMonth,
    tables: tuple[str, ...],
    mode: str | None,
    dry_run: bool,
    force: bool,
    as_json: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Repair a month from the latest Delta snapshot: only the rows that differ when few do
    (narrow), else the whole month (full); proven before it commits.

    Exit 0 when every table of the month is in sync afterwards, 1 when not, 2 on error (and
    for --mode narrow where a narrow repair is not possible).
    """
    json_context(year_month=year_month)
    settings = build_settings(dsn, delta_root, config_path)
    db, specs = _prepare(settings, tables)
    from reconciler.audit import Outcome
    from reconciler.check import Checker
    from reconciler.repair import Repairer
    from reconciler.verdict import Status
    from replicator.month import Month

    repairer = Repairer(Checker(db, settings), settings, actor=f"cli:{getpass.getuser()}")
    chosen = RepairMode(mode) if mode else None
    results = [
        repairer.repair(Month.of(spec, year_month), mode=chosen, dry_run=dry_run, force=force)
        for spec in specs
    ]
    errors = [r.message for r in results if r.status_before is Status.ERROR]
    errors += [r.message for r in results if r.outcome is Outcome.REFUSED]
    ok = all(r.succeeded for r in results)
    if as_json:
        document = {
            "year_month": str(year_month),
            "dry_run": dry_run,
            "status": "error" if errors else "ok" if ok else "not_in_sync",
            "tables": [r.as_json() for r in results],
        }
        emit_json({**document, "error": errors[0]} if errors else document)
    else:
        for r in results:
            after = f" -> {r.status_after}" if r.status_after else ""
            detail = f": {r.message}" if r.message and r.outcome is not Outcome.REPAIRED else ""
            click.echo(f"{r.month}: {r.summary} ({r.status_before}{after}){detail}")
    if errors:
        raise SystemExit(EXIT_ERROR)
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
    help="Where to serve /metrics, /healthz, /readyz (default: daemon.metrics_addr, "
    f"{DEFAULT_METRICS_ADDR}).",
)
@click.option(
    "--web.config.file",
    "--web-config-file",
    "web_config_file",
    metavar="PATH",
    default=None,
    help="Prometheus web configuration file: TLS and basic auth for /metrics, as every "
    "official exporter reads it (default: daemon.web_config_file).",
)
@settings_options
def run(  # noqa: PLR0913 (click passes every option of the command as an argument)
    once: bool,
    interval: float | None,
    auto_repair: bool | None,
    metrics_addr: str | None,
    web_config_file: str | None,
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
    daemon_changes = {
        key: value
        for key, value in (
            ("interval_seconds", interval),
            ("metrics_addr", metrics_addr),
            ("web_config_file", web_config_file),
        )
        if value is not None
    }
    repair_changes = {} if auto_repair is None else {"enabled": auto_repair}

    def load() -> Settings:
        """The configuration with the command line's choices, at start and on every reload."""
        return with_overrides(
            build_settings(dsn, delta_root, config_path),
            daemon=daemon_changes,
            auto_repair=repair_changes,
        )

    settings = load()
    try:
        settings.require_dsn()
    except ConfigError as exc:
        fail(f"{exc}: the reconciler cannot start without Postgres")
    if settings.daemon.json_logs:
        configure_logging(json_logs=True)
    from reconciler.daemon import Daemon
    from reconciler.verdict import Status

    daemon = Daemon(load)
    daemon.install_signal_handlers()
    server = None
    if not once or metrics_addr:
        server = daemon.serve_metrics()
    try:
        summary = daemon.run(once=once)
    finally:
        if server is not None:
            server.stop()
    if once:
        statuses = [m.record.status for m in daemon.months.values()]
        if not all(summary.sources_up.values()) or Status.ERROR in statuses:
            raise SystemExit(EXIT_ERROR)
        in_sync = all(s is Status.IN_SYNC for s in statuses)
        raise SystemExit(EXIT_OK if in_sync else EXIT_FINDING)
    raise SystemExit(EXIT_OK)


@main.command()
@click.option(
    "--require-in-sync",
    is_flag=True,
    help="Kept for scripts: status always exits 0 only when every month is in sync.",
)
@json_option
@settings_options
def status(
    require_in_sync: bool,
    as_json: bool,
    dsn: str | None,
    delta_root: str | None,
    config_path: str | None,
) -> None:
    """Every month of every table in the window: sync state, lag, and the daemon's last
    finding.

    Exit 0 when every month is in sync, 1 when one is not, 2 when a source cannot be read.
    """
    settings = build_settings(dsn, delta_root, config_path)
    db, _ = _prepare(settings, ())
    from reconciler.status import build_status

    report = build_status(db, settings)
    if as_json:
        emit_json(report.as_json())
    else:
        click.echo(report.render())
    if report.errors:
        raise SystemExit(EXIT_ERROR)
    raise SystemExit(EXIT_OK if report.all_in_sync else EXIT_FINDING)


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
    default=DEFAULT_METRICS_ADDR,
    show_default=True,
    metavar="HOST:PORT",
    help="Where the demo daemon serves /metrics.",
)
@click.pass_context
def demo(
    ctx: click.Context, directory: Path, fresh: bool, keep_running: bool, metrics_addr: str
) -> None:
    """Run the whole system on embedded defaults and show drift, lag and repair.

    Exit 2 when another demo runs in the same folder (nothing of it is touched).
    """
    try:
        parse_host_port(metrics_addr)
    except ConfigError as exc:
        fail(str(exc))
    from reconciler.demo import DemoOptions, run_demo

    try:
        run_demo(
            DemoOptions(
                directory,
                metrics_addr,
                fresh=fresh,
                keep_running=keep_running,
                verbose=bool(ctx.meta.get("verbose")),
            )
        )
    except OSError as exc:
        fail(f"demo failed: {exc}")


def console() -> None:
    """The `reconciler` console script: Ctrl-C and SIGTERM cancel what Postgres is doing and exit
    130 (`replicator.interrupts`); the commands themselves are `main`."""
    from replicator import interrupts

    interrupts.install()
    main()
