"""The leader's cycle: read the metadata, plan, compare, record findings, re-anchor, repair.

The cheap work comes first. From the Delta log (the files of each month), sync state and
Postgres's table statistics the snapshot reader builds a `CycleSnapshot`; `planner.plan` picks
the months that may have changed (and the periodic re-checks due); only those are compared. A
cycle in which nothing changed reads no table data. Auto-repair follows
`autorepair.plan_repairs`; the leader checks its lease right before every repair.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import threading
from dataclasses import dataclass, field

from exporter.metrics import Metrics
from reconciler.autorepair import HOUR, plan_repairs
from reconciler.check import CheckResult
from reconciler.context import Context
from reconciler.findings import anchor_key, forget_findings, read_findings, record_finding
from reconciler.monthstate import MonthStates, SyncAnchor
from reconciler.pacing import ProofBudget
from reconciler.planner import CycleSnapshot, PlannedCheck, plan
from reconciler.snapshot import SnapshotReader
from reconciler.verdict import Status
from replicator.delta import ChangeKind, DeltaTableReader
from replicator.month import Month
from replicator.postgres import Session

logger = logging.getLogger(__name__)


@dataclass
class CycleSummary:
    run_id: str
    checked: int = 0
    repaired: int = 0
    sources_up: dict[str, bool] = field(default_factory=dict)


class LeaderCycle:
    """What the leader does each cycle; holds what it learns across cycles (the periodic
    checks' clocks, the repair history)."""

    def __init__(self, months: MonthStates, metrics: Metrics, context: Context) -> None:
        self.months = months
        self.metrics = metrics
        self.context = context
        self.snapshots = SnapshotReader(context.settings.tables)
        self.budget = ProofBudget(context.settings.daemon.deep_check_budget)
        self.circuit_open = False
        self.invalid_partitions: dict[str, int] = {}  # table -> Delta partition values not months
        self._repair_history: collections.deque[dt.datetime] = collections.deque()
        self._remembered = False  # the periodic checks' clocks were read from month_check
        # This cycle's checks: a repair of one of these months starts from its check.
        self._checked_now: dict[Month, CheckResult] = {}

    def reconfigure(self, context: Context) -> None:
        self.context = context
        self.snapshots.tables = context.settings.tables
        self.budget.share = context.settings.daemon.deep_check_budget

    def forget_clocks(self) -> None:
        """A follower's clocks came with the leader's findings: nothing to read again."""
        self._remembered = True

    def run(
        self,
        conn: Session,
        readers: dict[str, DeltaTableReader],
        stop: threading.Event,
        summary: CycleSummary,
    ) -> dict[str, str]:
        """Compares what may have changed and records what it found; returns the Delta tables
        that could not be read, with why."""
        self._remember(conn)
        read = self.snapshots.read(conn, readers, self.context.window(), dt.datetime.now(dt.UTC))
        self.invalid_partitions = {t: len(v) for t, v in read.invalid_partitions.items()}
        for table, values in sorted(read.invalid_partitions.items()):
            shown = ", ".join(repr(v) for v in values[:5]) + (" ..." if len(values) > 5 else "")
            logger.warning(
                "Delta table %s has %d partition value(s) that are not months (YYYY-MM): %s;"
                " their rows belong to no month and are never compared",
                table,
                len(values),
                shown,
                extra={"table": table},
            )
        forget_findings(conn, self._observe(read.snapshot))
        self._checked_now.clear()
        planned = plan(read.snapshot, self.months, self.context.periods)
        proofs = list(planned.proofs)
        for planned_check in [
            *planned.checks,
            *(PlannedCheck(m, True, "proof due") for m in proofs),
        ]:
            if stop.is_set() or not self.context.leader.still_leader():
                break  # a deposed leader must not write findings beside the new one
            check, wanted = planned_check, planned_check.month in proofs
            if check.deep and not wanted:
                continue  # proved already in this cycle, as part of its other check
            if wanted and self.budget.allows(dt.datetime.now(dt.UTC)):
                proofs.remove(check.month)
                check = dataclasses.replace(check, deep=True)
            elif check.deep:
                continue  # the Delta budget is spent for now: the next cycle proves on
            self._check(conn, check, readers.get(check.month.table), stop, summary)
        return read.unreadable

    def _remember(self, conn: Session) -> None:
        """Once per process: when each month was last re-digested, as an earlier process
        recorded it, so that a restart never postpones a periodic check."""
        if self._remembered:
            return
        for month, found in read_findings(conn, self.context.settings.tables).items():
            self.months.ensure(month).remember(found)
        conn.rollback()
        self._remembered = True

    def _observe(self, snapshot: CycleSnapshot) -> list[Month]:
        """Months that exist nowhere any more are forgotten; those of readable tables are
        returned (their findings go too). The others learn their metadata."""
        seen = {meta.month for meta in snapshot.months}
        gone = []
        for spec in self.context.settings.tables:
            for year_month in self.context.window():
                month = Month.of(spec, year_month)
                if month not in seen:
                    self.months.forget(month)
                    if spec.name in snapshot.readable_tables:
                        gone.append(month)
        for meta in snapshot.months:
            state = self.months.ensure(meta.month)
            state.observe(meta.sync)
            state.planned = meta.inputs
        return gone

    def _check(
        self,
        conn: Session,
        check: PlannedCheck,
        reader: DeltaTableReader | None,
        stop: threading.Event,
        summary: CycleSummary,
    ) -> None:
        table = check.month.table
        started = dt.datetime.now(dt.UTC)
        self.metrics.checks.labels(table=table).inc()
        with self.metrics.check_duration.labels(table=table).time():
            result = self.context.checker.examine(
                check.month, conn=conn, latest=reader, deep=check.deep
            )
        self._pace(result, stop)
        if check.deep and "delta" in result.work:
            self.budget.spent(started, result.work["delta"][2])
        summary.checked += 1
        if result.status is Status.ERROR:
            self.metrics.check_failures.labels(table=table).inc()
        self.months.ensure(check.month).checked(result.record, deep=check.deep)
        self._checked_now[check.month] = result
        record_finding(conn, result.record, deep=result.deep, anchor=anchor_key(result.sync))
        if result.reanchor is not None:
            self._reanchor(result)
        quiet = result.status in (Status.IN_SYNC, Status.LAGGING)
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "%s: %s %s (%s)",
            check.month,
            result.status,
            result.record.reason,
            check.why,
            extra={**check.month.log, "status": result.status, "run_id": summary.run_id},
        )

    def _pace(self, result: CheckResult, stop: threading.Event) -> None:
        for side, (rows, seconds, _) in result.work.items():
            self.metrics.digest_rows.labels(side=side).inc(rows)
            self.metrics.digest_seconds.labels(side=side).inc(seconds)
        if "postgres" in result.work:
            rows, seconds, _ = result.work["postgres"]
            pause = self.context.pacer.pause_after(rows, seconds)
            if pause > 0:
                self.metrics.digest_paused.inc(pause)
                stop.wait(pause)

    def _reanchor(self, result: CheckResult) -> None:
        """Only the leader writes sync state. The month's next inputs are the re-anchored ones:
        nothing to compare again for that."""
        if not self.context.leader.still_leader():
            return
        verified_at = self.context.repairer.reanchor(result)
        state = self.months.get(result.month)
        if verified_at is None or state is None or state.planned is None:
            return
        assert result.reanchor is not None
        anchor, old = result.reanchor.anchor, result.reanchor.replaces
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
        state.anchored_at = verified_at

    # -- auto-repair ---------------------------------------------------------------------
    def auto_repair(self, stop: threading.Event) -> int:
        now = dt.datetime.now(dt.UTC)
        guard = self.context.settings.auto_repair
        while self._repair_history and now - self._repair_history[0] > HOUR:
            self._repair_history.popleft()
        decided = plan_repairs(
            self.months.values(),
            self._repair_history,
            guard,
            enabled=self.context.auto_repair,
            now=now,
        )
        self.circuit_open = decided.circuit_open
        if decided.circuit_open and self.context.auto_repair:
            logger.error(
                "auto-repair suspended: %d months drift (more than %d): that smells of a"
                " systemic problem, not of a month to rewrite",
                decided.drifting,
                guard.circuit_breaker_months,
            )
            return 0
        repaired = 0
        for state in decided.repair:
            if stop.is_set() or not self.context.leader.still_leader():
                break
            if decided.dry_run:
                logger.warning(
                    "auto-repair dry run: would repair %s (%s)", state.month, state.record.status
                )
                continue
            self._repair_history.append(now)
            before = self._checked_now.get(state.month)
            result = self.context.repairer.repair(state.month, before=before)
            if result.after is not None:
                state.checked(result.after, deep=False)
            repaired += 1
        if decided.waiting and self.context.auto_repair and not decided.dry_run:
            logger.warning("auto-repair limit reached; %s waits", decided.waiting[0].month)
        return repaired
