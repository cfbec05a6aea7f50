"""`reconciler run`: the process that compares every month all day, exports what it sees, and
repairs within guardrails. The whole lifecycle (signals, reload, loop, shutdown) lives here.

Each cycle does the cheap work first. From the Delta log (the files of each month), sync state
and Postgres's table statistics it decides which months may have changed, and runs a full
comparison only for those; a rolling deep re-check recomputes Delta digests over time. A cycle in
which nothing changed reads no table data.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql

from exporter.metrics import DaemonView, Metrics, MonthView
from exporter.server import MetricsServer
from reconciler import __version__
from reconciler.check import MonthComparer, TableCheck
from reconciler.leader import LeaderLock
from reconciler.repair import Repairer
from reconciler.syncstate import SyncState, read_all_sync_states
from replicator.config import Settings, TableSpec, parse_host_port
from replicator.delta import DeltaTableReader
from replicator.errors import ReplicationError
from replicator.writer import new_run_id
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)

REPAIRABLE = ("drift", "missing")
MONTH_CHECK = sql.Identifier("ranking", "month_check")


@dataclass
class MonthState:
    """What this process knows of one month of one table (nothing, until its first check)."""

    table: str
    year_month: str
    status: str = "unknown"
    reason: str = ""
    delta_rows: int | None = None
    postgres_rows: int | None = None
    lag_seconds: float = 0.0
    pending_since: float | None = None  # oldest Delta commit Postgres lacks, for the lag
    last_sync_timestamp: float | None = None
    last_check_timestamp: float | None = None
    last_deep_check: float = 0.0
    replication_failures: int = 0
    inputs: tuple[Any, ...] | None = None  # what the last full comparison saw
    planned_inputs: tuple[Any, ...] | None = None  # what this cycle's plan saw
    bad_since: float | None = None  # when it became drift or missing (repair grace)

    def view(self) -> MonthView:
        return MonthView(
            self.table,
            self.year_month,
            self.status,
            self.delta_rows,
            self.postgres_rows,
            self.lag_seconds,
            self.last_sync_timestamp,
            self.last_check_timestamp,
            self.replication_failures,
        )


@dataclass
class Overrides:
    """Command-line choices that outlive a configuration reload."""

    interval_seconds: float | None = None
    auto_repair: bool | None = None
    metrics_addr: str | None = None


@dataclass
class CycleSummary:
    run_id: str
    checked: int = 0
    repaired: int = 0
    sources_up: dict[str, bool] = field(default_factory=dict)


def retention_window(today: YearMonth, months: int) -> list[YearMonth]:
    """The months to watch, newest first."""
    return [today.shifted(-i) for i in range(months)]


class Daemon:
    def __init__(self, load_settings: Callable[[], Settings], overrides: Overrides) -> None:
        self._load_settings = load_settings
        self.overrides = overrides
        self.settings = load_settings()
        self.months: dict[tuple[str, str], MonthState] = {}
        self.sources_up = {"delta": False, "postgres": False}
        self.last_cycle_timestamp: float | None = None
        self.circuit_open = False
        self.metrics = Metrics(self.view, __version__)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._repair_times: collections.deque[float] = collections.deque()
        self._write_counters: dict[str, int] = {}
        self._sync_seen: dict[tuple[str, str], SyncState] = {}
        self._failures = 0
        self._configure()

    # -- configuration -------------------------------------------------------------------
    def _configure(self) -> None:
        settings = self.settings
        self.comparer = MonthComparer(settings, application_name="reconciler-daemon")
        # The audit names the instance: with two daemons, which one repaired matters.
        self.repairer = Repairer(
            self.comparer, actor=f"reconciler-daemon:{socket.gethostname()}:{os.getpid()}"
        )
        self.leader = LeaderLock(
            self.comparer.dsn,
            lease_seconds=settings.daemon.leader_lease_seconds,
            connect_timeout=settings.connect_timeout_seconds,
        )
        self.metrics.declare_tables(spec.name for spec in settings.tables)

    @property
    def interval(self) -> float:
        return self.overrides.interval_seconds or self.settings.daemon.interval_seconds

    @property
    def auto_repair_enabled(self) -> bool:
        if self.overrides.auto_repair is not None:
            return self.overrides.auto_repair
        return self.settings.auto_repair.enabled

    def reload(self) -> None:
        try:
            settings = self._load_settings()
        except (ValueError, OSError) as exc:
            logger.error("configuration reload failed, keeping the old one: %s", exc)
            return
        self.leader.release()
        self.settings = settings
        self._configure()
        logger.info("configuration reloaded")

    # -- what the exporter sees ----------------------------------------------------------
    def view(self) -> DaemonView:
        window = {
            str(m) for m in retention_window(self._today(), self.settings.daemon.retention_months)
        }
        months = tuple(
            state.view() for key, state in sorted(self.months.items()) if key[1] in window
        )
        return DaemonView(
            months,
            dict(self.sources_up),
            self.last_cycle_timestamp,
            self.leader.held,
            self.circuit_open,
        )

    def ready(self) -> tuple[bool, str]:
        if self.last_cycle_timestamp is None:
            return False, "no cycle completed yet"
        age = time.time() - self.last_cycle_timestamp
        if age > 3 * self.interval + 30:
            return False, f"last complete cycle {age:.0f}s ago"
        down = [name for name, up in self.sources_up.items() if not up]
        if down:
            return False, "source down: " + ", ".join(down)
        return True, "ready"

    @staticmethod
    def _today() -> YearMonth:
        now = time.gmtime()
        return YearMonth(now.tm_year, now.tm_mon)

    # -- lifecycle -----------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum: int, _: FrameType | None) -> None:
            logger.info("received %s, stopping", signal.Signals(signum).name)
            self._stop.set()

        def reload(_: int, __: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def stop(self) -> None:
        self._stop.set()

    def serve_metrics(self) -> MetricsServer:
        daemon_settings = self.settings.daemon
        host, port = parse_host_port(self.overrides.metrics_addr or daemon_settings.metrics_addr)
        auth = None
        if daemon_settings.basic_auth_user and daemon_settings.basic_auth_password:
            auth = (daemon_settings.basic_auth_user, daemon_settings.basic_auth_password)
        server = MetricsServer(
            self.metrics.registry,
            host,
            port,
            ready=self.ready,
            tls_cert_file=daemon_settings.tls_cert_file,
            tls_key_file=daemon_settings.tls_key_file,
            basic_auth=auth,
        )
        server.start()
        return server

    def run(self, *, once: bool = False) -> CycleSummary:
        """Cycles until stopped (or once); returns the last cycle's summary."""
        keeper = threading.Thread(target=self._keep_leader_alive, name="leader", daemon=True)
        keeper.start()
        summary = CycleSummary(run_id="")
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                summary = self.run_cycle()
                if once:
                    break
                healthy = all(summary.sources_up.values())
                self._failures = 0 if healthy else self._failures + 1
                # Back off while a source is down, but never so long that recovery takes
                # more than a few cycles.
                wait = self.interval * min(2**self._failures, 4)
                self._stop.wait(wait)
        finally:
            self.leader.release()
        return summary

    def _keep_leader_alive(self) -> None:
        while not self._stop.wait(self.settings.daemon.leader_lease_seconds / 3):
            self.leader.keep_alive()

    # -- one cycle -----------------------------------------------------------------------
    def run_cycle(self) -> CycleSummary:
        summary = CycleSummary(run_id=new_run_id())
        log = {"run_id": summary.run_id}
        started = time.monotonic()
        now = time.time()
        window = retention_window(self._today(), self.settings.daemon.retention_months)
        readers: dict[str, DeltaTableReader] = {}
        delta_up = True
        for spec in self.settings.tables:
            try:
                readers[spec.name] = self.comparer.latest(spec)
            except ReplicationError as exc:
                delta_up = False
                logger.error("Delta table %s unavailable: %s", spec.name, exc, extra=log)
        postgres_up = True
        try:
            with self.comparer.connect() as conn:
                todo = self._plan(conn, readers, window, now)
                for spec, month, deep in todo:
                    if self._stop.is_set():
                        break
                    self._check(conn, spec, month, readers.get(spec.name), deep, summary)
        except (ReplicationError, psycopg.Error) as exc:
            postgres_up = False
            logger.error("Postgres unavailable: %s", self.comparer.dsn.scrub(str(exc)), extra=log)
        self.sources_up = {"delta": delta_up, "postgres": postgres_up}
        summary.sources_up = dict(self.sources_up)
        if postgres_up and not self._stop.is_set():
            self.leader.try_acquire()
            summary.repaired = self._auto_repair(time.time())
        if delta_up and postgres_up and not self._stop.is_set():
            self.last_cycle_timestamp = time.time()
        logger.info(
            "cycle done: %d comparisons, %d repairs in %.2fs",
            summary.checked,
            summary.repaired,
            time.monotonic() - started,
            extra=log,
        )
        return summary

    def _plan(
        self,
        conn: psycopg.Connection[Any],
        readers: dict[str, DeltaTableReader],
        window: list[YearMonth],
        now: float,
    ) -> list[tuple[TableSpec, YearMonth, bool]]:
        """Which months need a full comparison this cycle, newest first; metadata only."""
        states = {(s.table, s.year_month): s for s in read_all_sync_states(conn)}
        outside = self._written_outside_replicator(conn, states)
        todo: list[tuple[TableSpec, YearMonth, bool]] = []
        for spec in self.settings.tables:
            present = self._months_in_postgres(conn, spec, window)
            reader = readers.get(spec.name)
            for month in window:
                key = (spec.name, str(month))
                state = states.get(key)
                files = tuple(sorted(f.path for f in reader.month_files(month))) if reader else None
                if not files and str(month) not in present and state is None:
                    self.months.pop(key, None)
                    continue
                current = self.months.setdefault(key, MonthState(*key))
                if state is not None:
                    current.replication_failures = state.consecutive_failures
                    if state.synced_at is not None:
                        current.last_sync_timestamp = state.synced_at.timestamp()
                if current.pending_since is not None:
                    current.lag_seconds = max(0.0, now - current.pending_since)
                sync = (
                    None
                    if state is None
                    else (state.delta_version, state.run_id, state.synced_at, state.content_digest)
                )
                inputs = (files, sync, str(month) in present)
                if reader is None:
                    continue  # without Delta nothing can be compared; keep the last status
                # An error may be transient (a read that failed): it is retried every cycle.
                if (
                    current.status in ("unknown", "error")
                    or inputs != current.inputs
                    or spec.name in outside
                ):
                    todo.append((spec, month, False))
                # Recorded as seen only once a comparison completes (see `_check`).
                current.planned_inputs = inputs
        conn.rollback()
        todo.sort(key=lambda item: str(item[1]), reverse=True)  # most recent months first
        return self._with_deep_checks(todo, now)

    def _with_deep_checks(
        self, todo: list[tuple[TableSpec, YearMonth, bool]], now: float
    ) -> list[tuple[TableSpec, YearMonth, bool]]:
        """Adds the rolling deep re-check: the months whose Delta digest was recomputed longest
        ago, a few per cycle, so that every month gets one per `deep_check_period_seconds`."""
        period = self.settings.daemon.deep_check_period_seconds
        due = sorted(
            (
                state
                for state in self.months.values()
                if state.status != "unknown" and now - state.last_deep_check >= period
            ),
            key=lambda s: s.last_deep_check,
        )
        budget = max(1, math.ceil(len(self.months) * self.interval / period))
        planned = {(spec.name, str(month)): i for i, (spec, month, _) in enumerate(todo)}
        for state in due[:budget]:
            spec = self.settings.table(state.table)
            month = YearMonth.parse(state.year_month)
            key = (state.table, state.year_month)
            if key in planned:
                todo[planned[key]] = (spec, month, True)
            else:
                todo.append((spec, month, True))
        return todo

    def _months_in_postgres(
        self, conn: psycopg.Connection[Any], spec: TableSpec, window: list[YearMonth]
    ) -> set[str]:
        """One index probe per month of the window."""
        query = sql.SQL(
            "SELECT m FROM unnest(%s::text[]) AS m WHERE EXISTS"
            " (SELECT 1 FROM {} WHERE year_month = m)"
        ).format(sql.Identifier(spec.postgres_schema, spec.postgres_table))
        return {row[0] for row in conn.execute(query, ([str(m) for m in window],))}

    def _written_outside_replicator(
        self, conn: psycopg.Connection[Any], states: dict[tuple[str, str], SyncState]
    ) -> set[str]:
        """Tables whose row-change counters moved more than the replicator's own writes explain.

        Every write by the replicator shows in sync state (old rows deleted, new rows inserted);
        anything else that changed a table's counters was written around it.
        """
        suspicious: set[str] = set()
        for spec in self.settings.tables:
            row = conn.execute(
                "SELECT coalesce(n_tup_ins + n_tup_upd + n_tup_del, 0)"
                " FROM pg_catalog.pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
                (spec.postgres_schema, spec.postgres_table),
            ).fetchone()
            counter = int(row[0]) if row else 0
            explained = 0
            for key, state in states.items():
                if key[0] != spec.name:
                    continue
                seen = self._sync_seen.get(key)
                if seen is None or (seen.run_id, seen.synced_at) != (state.run_id, state.synced_at):
                    explained += (seen.row_count or 0 if seen else 0) + (state.row_count or 0)
            previous = self._write_counters.get(spec.name)
            if previous is not None and counter - previous > explained:
                logger.warning(
                    "table %s was written outside the replicator: re-checking its months",
                    spec.name,
                    extra={"table": spec.name},
                )
                suspicious.add(spec.name)
            self._write_counters[spec.name] = counter
        self._sync_seen = dict(states)
        return suspicious

    def _check(
        self,
        conn: psycopg.Connection[Any],
        spec: TableSpec,
        month: YearMonth,
        reader: DeltaTableReader | None,
        deep: bool,
        summary: CycleSummary,
    ) -> None:
        self.metrics.checks.labels(table=spec.name).inc()
        with self.metrics.check_duration.labels(table=spec.name).time():
            result = self.comparer.check(spec, month, conn=conn, latest=reader, deep=deep)
        summary.checked += 1
        if result.status == "error":
            self.metrics.check_failures.labels(table=spec.name).inc()
        state = self.months.setdefault((spec.name, str(month)), MonthState(spec.name, str(month)))
        self._record(state, result, deep)
        state.inputs = state.planned_inputs
        self._persist(conn, result)
        level = logging.WARNING if result.status not in ("in_sync", "lagging") else logging.DEBUG
        logger.log(
            level,
            "%s %s: %s %s",
            spec.name,
            month,
            result.status,
            result.reason,
            extra={
                "table": spec.name,
                "year_month": str(month),
                "status": result.status,
                "run_id": summary.run_id,
            },
        )

    def _record(self, state: MonthState, result: TableCheck, deep: bool) -> None:
        now = time.time()
        if result.status in REPAIRABLE and state.status not in REPAIRABLE:
            state.bad_since = now
        elif result.status not in REPAIRABLE:
            state.bad_since = None
        state.status, state.reason = result.status, result.reason
        state.delta_rows, state.postgres_rows = result.delta_rows, result.postgres_rows
        state.lag_seconds = result.lag_seconds
        state.pending_since = now - result.lag_seconds if result.lag_seconds > 0 else None
        state.last_check_timestamp = now
        if result.last_sync_timestamp is not None:
            state.last_sync_timestamp = result.last_sync_timestamp
        state.replication_failures = result.consecutive_failures
        # The deep re-check clock starts at the first comparison of this process.
        if (deep and result.status != "error") or not state.last_deep_check:
            state.last_deep_check = now

    def _persist(self, conn: psycopg.Connection[Any], result: TableCheck) -> None:
        """The last comparison, for `reconciler status`; losing it only loses a report."""
        try:
            conn.rollback()
            conn.read_only = False
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (table_name, year_month, status, reason, checked_at,"
                    " delta_version, synced_version, delta_rows, postgres_rows, lag_seconds)"
                    " VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s, %s)"
                    " ON CONFLICT (table_name, year_month) DO UPDATE SET status = EXCLUDED.status,"
                    " reason = EXCLUDED.reason, checked_at = EXCLUDED.checked_at,"
                    " delta_version = EXCLUDED.delta_version,"
                    " synced_version = EXCLUDED.synced_version, delta_rows = EXCLUDED.delta_rows,"
                    " postgres_rows = EXCLUDED.postgres_rows, lag_seconds = EXCLUDED.lag_seconds"
                ).format(MONTH_CHECK),
                (
                    result.table,
                    result.year_month,
                    result.status,
                    result.reason[:2000],
                    result.delta_version,
                    result.synced_version,
                    result.delta_rows,
                    result.postgres_rows,
                    result.lag_seconds,
                ),
            )
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            logger.warning(
                "could not record the check of %s %s: %s",
                result.table,
                result.year_month,
                self.comparer.dsn.scrub(str(exc)),
            )

    # -- auto-repair ---------------------------------------------------------------------
    def _auto_repair(self, now: float) -> int:
        guard = self.settings.auto_repair
        drifting = sum(1 for s in self.months.values() if s.status == "drift")
        self.circuit_open = drifting > guard.circuit_breaker_months
        if not self.auto_repair_enabled:
            return 0
        if self.circuit_open:
            logger.error(
                "auto-repair suspended: %d months drift (more than %d): that smells of a"
                " systemic problem, not of a month to rewrite",
                drifting,
                guard.circuit_breaker_months,
            )
            return 0
        while self._repair_times and now - self._repair_times[0] > 3600:
            self._repair_times.popleft()
        due = sorted(
            (
                s
                for s in self.months.values()
                if s.status in REPAIRABLE
                and s.bad_since is not None
                and now - s.bad_since >= guard.grace_period_seconds
            ),
            key=lambda s: s.year_month,
            reverse=True,
        )
        repaired = 0
        for state in due:
            if repaired >= guard.max_per_cycle or len(self._repair_times) >= guard.max_per_hour:
                logger.warning(
                    "auto-repair limit reached; %s %s waits", state.table, state.year_month
                )
                break
            if self._stop.is_set() or not self.leader.still_leader():
                break
            spec, month = self.settings.table(state.table), YearMonth.parse(state.year_month)
            if guard.dry_run:
                logger.warning(
                    "auto-repair dry run: would repair %s %s (%s)",
                    state.table,
                    state.year_month,
                    state.status,
                )
                continue
            self._repair_times.append(now)
            repaired += 1
            self.metrics.repairs.labels(table=spec.name).inc()
            result = self.repairer.repair(spec, month)
            if not result.succeeded:
                self.metrics.repair_failures.labels(table=spec.name).inc()
            if result.check_after is not None:
                self._record(state, result.check_after, deep=False)
        return repaired
