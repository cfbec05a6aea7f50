"""One cycle of the daemon: read the metadata, plan, compare, record findings, repair.

The cheap work comes first. From the Delta log (the files of each month), sync state and
Postgres's table statistics the cycle builds a `CycleSnapshot`; `planner.plan` picks the months
that may have changed (and the deep re-checks due); only those are compared. A cycle in which
nothing changed reads no table data. Auto-repair follows `autorepair.plan_repairs`, and runs only
on the leader, which checks its lease right before every repair.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from exporter.metrics import DaemonView, Metrics
from reconciler.autorepair import HOUR, plan_repairs
from reconciler.check import Checker, TableCheck
from reconciler.findings import forget_findings, read_findings, record_finding
from reconciler.leader import LeaderLock
from reconciler.monthstate import (
    DeltaInputs,
    MonthInputs,
    MonthKey,
    MonthState,
    MonthStates,
    SyncAnchor,
)
from reconciler.outsidewrites import OutsideWriteDetector
from reconciler.pacing import Pacer
from reconciler.planner import CycleSnapshot, MonthMetadata, Periods, PlannedCheck, plan
from reconciler.repair import TRIGGERS, Repairer, failing_repairs, repair_counts
from reconciler.verdict import EXPORTED, Status
from replicator.config import Settings, TableSpec
from replicator.delta import ChangeKind, DeltaTableReader
from replicator.errors import DeltaError, NotMigratedError, PostgresError, ReplicationError
from replicator.postgres import Database
from replicator.schema import postgres_columns
from replicator.syncstate import SyncState, read_all_sync_states
from replicator.writer import new_run_id
from replicator.yearmonth import YearMonth, current_month, retention_window

logger = logging.getLogger(__name__)


@dataclass
class CycleSummary:
    run_id: str
    checked: int = 0
    repaired: int = 0
    sources_up: dict[str, bool] = field(default_factory=dict)


class Reconciler:
    """The daemon's work between two waits; its state lives as long as the process."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.months = MonthStates()
        self.sources_up: dict[str, bool] = {}  # nothing exported until measured
        self.last_cycle_timestamp: float | None = None
        self.circuit_open = False
        self._outside = OutsideWriteDetector()
        self._repair_history: collections.deque[float] = collections.deque()
        self._remembered = False  # the periodic checks' clocks were read from month_check
        self.repairs: dict[tuple[str, str, str], int] = {}
        self.problem: str | None = None  # why the last cycle could not run, if not a source

    def configure(
        self, settings: Settings, leader: LeaderLock, *, auto_repair: bool, interval: float
    ) -> None:
        """(Re)builds everything that depends on the configuration; keeps what was learnt."""
        self.settings = settings
        self.leader = leader
        self.auto_repair = auto_repair
        self.interval = interval
        self.db = Database(
            settings.require_dsn(), "reconciler-daemon", settings.postgres.connect_timeout_seconds
        )
        self.checker = Checker(self.db, settings)
        digest = settings.digest
        self.pacer = Pacer(digest.postgres_max_share, digest.postgres_rows_per_second)
        # The audit names the instance: with two daemons, which one repaired matters.
        self.repairer = Repairer(
            self.checker,
            settings,
            self.db,
            actor=f"reconciler-daemon:{socket.gethostname()}:{os.getpid()}",
            trigger="auto",
        )
        self.months.keep_tables(spec.name for spec in settings.tables)
        self.metrics.declare_tables(spec.name for spec in settings.tables)

    # -- what the exporter and the probes see --------------------------------------------
    def window(self) -> list[YearMonth]:
        return retention_window(current_month(), self.settings.daemon.retention_months)

    def view(self) -> DaemonView:
        return DaemonView(
            self.months.views(str(m) for m in self.window()),
            dict(self.sources_up),
            self.last_cycle_timestamp,
            self.leader.held,
            self.circuit_open,
            tuple(str(s) for s in EXPORTED),
            {str(s): s.severity for s in EXPORTED},
            dict(self.repairs),
        )

    def ready(self) -> tuple[bool, str]:
        if self.problem is not None:
            return False, self.problem
        if self.last_cycle_timestamp is None:
            return False, "no cycle completed yet"
        age = time.time() - self.last_cycle_timestamp
        if age > 3 * self.interval + 30:
            return False, f"last complete cycle {age:.0f}s ago"
        down = [name for name, up in self.sources_up.items() if not up]
        if down:
            return False, "source down: " + ", ".join(down)
        return True, "ready"

    # -- one cycle -----------------------------------------------------------------------
    def run_cycle(self, stop: threading.Event) -> CycleSummary:
        summary = CycleSummary(run_id=new_run_id())
        log = {"run_id": summary.run_id}
        started, now = time.monotonic(), time.time()
        readers: dict[str, DeltaTableReader] = {}
        up = {"delta": True, "postgres": True}
        for spec in self.settings.tables:
            try:
                readers[spec.name] = self.checker.latest(spec)
            except ReplicationError as exc:
                up["delta"] = False
                logger.error("Delta table %s unavailable: %s", spec.name, exc, extra=log)
        leading = False
        try:
            with self.db.connect() as conn:
                leading = self.leader.try_acquire()
                if leading:
                    self._lead(conn, readers, now, up, stop, summary, log)
                else:
                    self._follow(conn, now)
        except (PostgresError, psycopg.Error) as exc:
            failure = (
                exc if isinstance(exc, PostgresError) else self.db.translate(exc, "a query failed")
            )
            if isinstance(failure, NotMigratedError):
                # Postgres answered: it is not down, but nothing can be compared until migrated.
                self.problem = str(failure)
                logger.error("%s", failure, extra=log)
            else:
                up["postgres"] = False
                logger.error("Postgres unavailable: %s", failure, extra=log)
        else:
            self.problem = None
        self.sources_up = dict(up)
        summary.sources_up = dict(up)
        if leading and up["postgres"] and not stop.is_set():
            summary.repaired = self._auto_repair(time.time(), stop)
        if not leading:
            self.circuit_open = False  # the leader's to say
        complete = all(up.values()) and self.problem is None and not stop.is_set()
        if up["postgres"] and self.problem is None:
            self._after_cycle(log, leading=leading, complete=complete)
        if complete and leading:
            self.last_cycle_timestamp = time.time()
        logger.info(
            "cycle done: %d comparisons, %d repairs in %.2fs",
            summary.checked,
            summary.repaired,
            time.monotonic() - started,
            extra=log,
        )
        return summary

    def _lead(
        self,
        conn: psycopg.Connection[Any],
        readers: dict[str, DeltaTableReader],
        now: float,
        up: dict[str, bool],
        stop: threading.Event,
        summary: CycleSummary,
        log: dict[str, str],
    ) -> None:
        """The leader compares what may have changed and records what it found."""
        self._remember(conn)
        snapshot = self._snapshot(conn, readers, now, up, log)
        forget_findings(self.db, conn, self._observe(snapshot))
        daemon = self.settings.daemon
        periods = Periods(
            self.interval,
            daemon.postgres_check_period_seconds,
            daemon.deep_check_period_seconds,
        )
        syncs = {meta.key: meta.sync for meta in snapshot.months}
        for check in plan(snapshot, self.months, periods):
            if stop.is_set() or not self.leader.still_leader():
                break  # a deposed leader must not write findings beside the new one
            reader = readers.get(check.table)
            self._check(conn, check, reader, syncs.get(check.key), summary, stop)

    def _follow(self, conn: psycopg.Connection[Any], now: float) -> None:
        """A follower compares nothing: it exports what the leader found (so two replicas
        neither double the load nor write the same rows). Should it take over, it compares
        every month once, since it never saw their inputs itself."""
        tables = {spec.name for spec in self.settings.tables}
        states = {(s.table, s.year_month): s for s in read_all_sync_states(conn)}
        findings = {k: f for k, f in read_findings(conn).items() if k[0] in tables}
        conn.rollback()
        for key in [k for k in self.months if k not in findings]:
            self.months.forget(key)
        for key, finding in findings.items():
            self.months.ensure(key).adopt(finding, states.get(key), now)
        self._remembered = True  # the periodic clocks came with the findings

    def _after_cycle(self, log: dict[str, str], *, leading: bool, complete: bool) -> None:
        """The leader records its complete cycle (the heartbeat every replica exports as the
        dead-man's switch); every replica reads the audited repairs (the same on each, manual
        ones included) and each month's failed repairs since its last successful one."""
        heartbeat: dt.datetime | None = None
        try:
            with self.db.connect() as conn:
                if leading and complete:
                    conn.execute(
                        "INSERT INTO ranking.leader_heartbeat (instance, cycle_completed_at)"
                        " VALUES (%s, now()) ON CONFLICT (singleton) DO UPDATE"
                        " SET instance = EXCLUDED.instance,"
                        " cycle_completed_at = EXCLUDED.cycle_completed_at",
                        (self.repairer.actor,),
                    )
                    conn.commit()
                elif complete:
                    row = conn.execute(
                        "SELECT cycle_completed_at FROM ranking.leader_heartbeat"
                    ).fetchone()
                    heartbeat = row[0] if row else None
                counts = repair_counts(conn)
                failing = failing_repairs(conn)
        except (PostgresError, psycopg.Error) as exc:
            failure = self.db.scrub(str(exc))
            logger.warning("could not keep the cycle's books: %s", failure, extra=log)
            return
        if heartbeat is not None:
            self.last_cycle_timestamp = heartbeat.timestamp()
        for spec in self.settings.tables:
            for trigger in TRIGGERS:
                for outcome in ("repaired", "failed"):
                    counts.setdefault((spec.name, trigger, outcome), 0)
        self.repairs = counts
        for key, state in self.months.items():
            in_sync = state.status is Status.IN_SYNC
            state.repair_failures = 0 if in_sync else failing.get(key, 0)

    def _remember(self, conn: psycopg.Connection[Any]) -> None:
        """Once per process: when each month was last re-digested, as an earlier process
        recorded it, so that a restart never postpones a periodic check."""
        if self._remembered:
            return
        for key, finding in read_findings(conn).items():
            if key[0] in {spec.name for spec in self.settings.tables}:
                self.months.ensure(key).remember(finding)
        conn.rollback()
        self._remembered = True

    def _snapshot(
        self,
        conn: psycopg.Connection[Any],
        readers: dict[str, DeltaTableReader],
        now: float,
        up: dict[str, bool],
        log: dict[str, str],
    ) -> CycleSnapshot:
        """The metadata of every month in the window; Delta's failures mark Delta down only."""
        states = {(s.table, s.year_month): s for s in read_all_sync_states(conn)}
        suspicious, suspicious_months = self._outside.suspicious(conn, self.settings.tables, states)
        window = self.window()
        readable = set(readers)
        months: list[MonthMetadata] = []
        for spec in self.settings.tables:
            present = _months_in_postgres(conn, spec, window)
            reader = readers.get(spec.name)
            deltas: dict[str, DeltaInputs] | None = None
            schema = ""
            if reader is not None:
                try:
                    deltas = {
                        str(m): _delta_inputs(reader, m, states.get((spec.name, str(m))))
                        for m in window
                    }
                    schema = _schema_inputs(conn, spec, reader)
                except DeltaError as exc:
                    up["delta"] = False
                    readable.discard(spec.name)
                    deltas = None
                    logger.error("Delta table %s unreadable: %s", spec.name, exc, extra=log)
            for month in window:
                key = (spec.name, str(month))
                state = states.get(key)
                delta = deltas.get(str(month)) if deltas is not None else None
                in_delta = delta is not None and delta.in_delta
                if not in_delta and str(month) not in present and state is None:
                    continue
                inputs = MonthInputs(delta, SyncAnchor.of(state), str(month) in present, schema)
                months.append(MonthMetadata(spec.name, month, inputs, state))
        conn.rollback()
        return CycleSnapshot(now, tuple(months), frozenset(readable), suspicious, suspicious_months)

    def _observe(self, snapshot: CycleSnapshot) -> list[MonthKey]:
        """Months that exist nowhere any more are forgotten; those of readable tables are
        returned (their findings go too). The others learn their metadata."""
        seen = {meta.key for meta in snapshot.months}
        gone = []
        for spec in self.settings.tables:
            for month in self.window():
                key = (spec.name, str(month))
                if key not in seen:
                    self.months.forget(key)
                    if spec.name in snapshot.readable_tables:
                        gone.append(key)
        for meta in snapshot.months:
            self.months.ensure(meta.key).observe(meta.sync, meta.inputs, snapshot.now)
        return gone

    def _check(
        self,
        conn: psycopg.Connection[Any],
        check: PlannedCheck,
        reader: DeltaTableReader | None,
        sync: SyncState | None,
        summary: CycleSummary,
        stop: threading.Event,
    ) -> None:
        spec = self.settings.table(check.table)
        self.metrics.checks.labels(table=spec.name).inc()
        with self.metrics.check_duration.labels(table=spec.name).time():
            result = self.checker.check(
                spec, check.year_month, conn=conn, latest=reader, deep=check.deep
            )
        for side, (rows, seconds) in result.work.items():
            self.metrics.digest_rows.labels(side=side).inc(rows)
            self.metrics.digest_seconds.labels(side=side).inc(seconds)
        if "postgres" in result.work:
            pause = self.pacer.pause_after(*result.work["postgres"])
            if pause > 0:
                self.metrics.digest_paused.inc(pause)
                stop.wait(pause)
        summary.checked += 1
        if result.status is Status.ERROR:
            self.metrics.check_failures.labels(table=spec.name).inc()
        self.months.ensure(check.key).record(result, deep=check.deep, now=time.time())
        record_finding(self.db, conn, result, deep=check.deep)
        if result.reanchor is not None:
            self._reanchor(spec, result, check)
        quiet = result.status in (Status.IN_SYNC, Status.LAGGING)
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "%s %s: %s %s (%s)",
            spec.name,
            check.year_month,
            result.status,
            result.reason,
            check.why,
            extra={
                "table": spec.name,
                "year_month": str(check.year_month),
                "status": result.status,
                "run_id": summary.run_id,
            },
        )

    def _reanchor(self, spec: TableSpec, result: TableCheck, check: PlannedCheck) -> None:
        """Only the leader writes sync state; a follower leaves it to the leader. The month's
        next inputs are the re-anchored ones: nothing to compare again for that."""
        if not self.leader.still_leader():
            return
        verified_at = self.repairer.reanchor(spec, check.year_month, result)
        state = self.months.get(check.key)
        anchor, old = result.reanchor, result.reanchor_from
        if verified_at is None or state is None or state.planned is None:
            return
        assert anchor is not None and old is not None
        planned = state.planned
        delta = planned.delta
        if delta is not None:
            delta = dataclasses.replace(
                delta,
                table_id=anchor.delta_table_id,
                change=ChangeKind.UNCHANGED,
                changed_version=None,
            )
        sync = SyncAnchor(
            anchor.delta_version, old.run_id, old.synced_at, anchor.content_digest, verified_at
        )
        state.compared = dataclasses.replace(planned, delta=delta, sync=sync)
        state.anchored_at = verified_at.timestamp()

    # -- auto-repair ---------------------------------------------------------------------
    def _auto_repair(self, now: float, stop: threading.Event) -> int:
        guard = self.settings.auto_repair
        while self._repair_history and now - self._repair_history[0] > HOUR:
            self._repair_history.popleft()
        decided = plan_repairs(
            self.months.values(), self._repair_history, guard, enabled=self.auto_repair, now=now
        )
        self.circuit_open = decided.circuit_open
        if decided.circuit_open and self.auto_repair:
            logger.error(
                "auto-repair suspended: %d months drift (more than %d): that smells of a"
                " systemic problem, not of a month to rewrite",
                decided.drifting,
                guard.circuit_breaker_months,
            )
            return 0
        repaired = 0
        for state in decided.repair:
            if stop.is_set() or not self.leader.still_leader():
                break
            if decided.dry_run:
                logger.warning(
                    "auto-repair dry run: would repair %s %s (%s)",
                    state.table,
                    state.year_month,
                    state.status,
                )
                continue
            self._repair(state, now)
            repaired += 1
        if decided.waiting and self.auto_repair and not decided.dry_run:
            first = decided.waiting[0]
            logger.warning("auto-repair limit reached; %s %s waits", first.table, first.year_month)
        return repaired

    def _repair(self, state: MonthState, now: float) -> None:
        spec = self.settings.table(state.table)
        self._repair_history.append(now)
        result = self.repairer.repair(spec, YearMonth.parse(state.year_month))
        if result.check_after is not None:
            state.record(result.check_after, deep=False, now=time.time())


def _delta_inputs(
    reader: DeltaTableReader, month: YearMonth, state: SyncState | None
) -> DeltaInputs:
    """What Delta says of a month relative to its anchor (commits are read only when the
    month's file set differs from the anchor's, and each commit once per process)."""
    if state is None or state.delta_version is None:
        return DeltaInputs(
            reader.table_id, reader.has_month(month), None, None, reader.month_fingerprint(month)
        )
    change = reader.month_change(
        month, version=state.delta_version, table_id=state.delta_table_id, files=state.delta_files
    )
    return DeltaInputs(
        reader.table_id, reader.has_month(month), change.kind, change.since_version, None
    )


def _schema_inputs(conn: psycopg.Connection[Any], spec: TableSpec, reader: DeltaTableReader) -> str:
    """The table's columns on both sides: a schema change on either side is a change."""
    delta = ",".join(f"{c.name}:{c.type}" for c in reader.columns())
    postgres = ",".join(f"{name}:{kind}" for name, kind, _ in postgres_columns(conn, spec))
    return f"{delta}|{postgres}"


def _months_in_postgres(
    conn: psycopg.Connection[Any], spec: TableSpec, window: list[YearMonth]
) -> set[str]:
    """The months of the window holding rows: one index probe per month on a plain table; on a
    partitioned one, the first row of each month's partition (a probe through the parent would
    read every partition: the month is a value the planner cannot prune by in advance)."""
    months = [str(m) for m in window]
    partitions = conn.execute(
        "SELECT substring(pg_catalog.pg_get_expr(p.relpartbound, p.oid)"
        " FROM 'IN \\(''([0-9-]+)''\\)'), n.nspname, p.relname"
        " FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace"
        " WHERE i.inhparent = %s::regclass",
        (spec.qualified_name,),
    ).fetchall()
    if not partitions:  # a plain table (or a partitioned one with no partition yet)
        query = sql.SQL(
            "SELECT m FROM unnest(%s::text[]) AS m"
            " WHERE EXISTS (SELECT 1 FROM {} WHERE year_month = m)"
        ).format(sql.Identifier(spec.postgres_schema, spec.postgres_table))
        return {row[0] for row in conn.execute(query, (months,))}
    probes = [
        sql.SQL("SELECT {} WHERE EXISTS (SELECT 1 FROM {} LIMIT 1)").format(
            sql.Literal(month), sql.Identifier(schema, name)
        )
        for month, schema, name in partitions
        if month in months
    ]
    if not probes:
        return set()
    return {row[0] for row in conn.execute(sql.SQL(" UNION ALL ").join(probes))}
