"""One cycle of the daemon, and the view it exports: open the Delta tables, take or keep the
leader lock, then lead (`leading.LeaderCycle`) or follow (`following.follow`), and keep the
books every replica exports (the leader's heartbeat, the audited repairs).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time

from exporter.metrics import DaemonView, Metrics
from reconciler.audit import Mode, Outcome, RepairKey, Trigger, failing_repairs, repair_counts
from reconciler.context import Context
from reconciler.following import follow
from reconciler.leader import beat, last_beat
from reconciler.leading import CycleSummary, LeaderCycle
from reconciler.monthstate import MonthStates
from reconciler.verdict import EXPORTED, Status
from replicator.delta import DeltaTableReader
from replicator.errors import NotMigratedError, PostgresError, ReplicationError
from replicator.writer import new_run_id

logger = logging.getLogger(__name__)


class Reconciler:
    """The daemon's work between two waits; its state lives as long as the process."""

    def __init__(self, metrics: Metrics, context: Context) -> None:
        self.metrics = metrics
        self.context = context
        self.months = MonthStates()
        self.leading = LeaderCycle(self.months, metrics, context)
        self.sources_up: dict[str, bool] = {}  # nothing exported until measured
        self.last_cycle: dt.datetime | None = None
        self.repairs: dict[RepairKey, int] = {}
        self.problem: str | None = None  # why the last cycle could not run, if not a source
        self.configure(context)

    def configure(self, context: Context) -> None:
        """A new configuration; keeps what was learnt."""
        self.context = context
        self.leading.reconfigure(context)
        self.months.keep_tables(spec.name for spec in context.settings.tables)
        self.metrics.declare_tables(spec.name for spec in context.settings.tables)

    # -- what the exporter and the probes see --------------------------------------------
    def view(self) -> DaemonView:
        now = dt.datetime.now(dt.UTC)
        return DaemonView(
            self.months.views(self.context.window(), now),
            dict(self.sources_up),
            self.last_cycle,
            self.context.leader.held,
            self.leading.circuit_open,
            tuple(str(s) for s in EXPORTED),
            {str(s): s.code for s in Status.by_severity()},
            {tuple(map(str, key)): n for key, n in self.repairs.items()},  # type: ignore[misc]
            self._invalid_partitions(),
        )

    def _invalid_partitions(self) -> dict[str, int]:
        """Per table, on the leader only (a follower reads no Delta table)."""
        if not self.context.leader.held:
            return {}
        found = self.leading.invalid_partitions
        return {spec.name: found.get(spec.name, 0) for spec in self.context.settings.tables}

    def ready(self) -> tuple[bool, str]:
        if self.problem is not None:
            return False, self.problem
        down = [name for name, up in self.sources_up.items() if not up]
        if "postgres" in down:
            return False, "Postgres unavailable (see the daemon's log)"
        if self.last_cycle is None:
            return False, "no cycle completed yet"
        age = (dt.datetime.now(dt.UTC) - self.last_cycle).total_seconds()
        if age > 3 * self.context.interval + 30:
            return False, f"last complete cycle {age:.0f}s ago"
        if down:
            return False, "source down: " + ", ".join(down)
        return True, "ready"

    # -- one cycle -----------------------------------------------------------------------
    def run_cycle(self, stop: threading.Event) -> CycleSummary:
        summary = CycleSummary(run_id=new_run_id())
        log = {"run_id": summary.run_id}
        started = time.monotonic()
        readers, up = self._open_delta(log)
        leading = False
        try:
            with self.context.db.session() as conn:
                leading = self.context.leader.try_acquire()
                if leading:
                    unreadable = self.leading.run(conn, readers, stop, summary)
                    for table, why in unreadable.items():
                        up["delta"] = False
                        logger.error("Delta table %s unreadable: %s", table, why, extra=log)
                else:
                    follow(conn, self.months, self.context.settings)
                    self.leading.forget_clocks()
        except NotMigratedError as exc:
            # Postgres answered: it is not down, but nothing can be compared until migrated.
            self.problem = str(exc)
            logger.error("%s", exc, extra=log)
        except PostgresError as exc:
            if stop.is_set():  # the daemon is stopping: it cancelled the statement itself
                logger.info("stopping: the statement under way was cancelled", extra=log)
            else:
                up["postgres"] = False
                logger.error("Postgres unavailable: %s", exc, extra=log)
            self.problem = None
        else:
            self.problem = None
        self.sources_up = dict(up)
        summary.sources_up = dict(up)
        if leading and up["postgres"] and not stop.is_set():
            summary.repaired = self.leading.auto_repair(stop)
        if not leading:
            self.leading.circuit_open = False  # the leader's to say
        complete = all(up.values()) and self.problem is None and not stop.is_set()
        kept = up["postgres"] and self.problem is None
        if kept:
            kept = self._keep_books(log, leading=leading, complete=complete)
        if complete and leading and not kept:
            self.last_cycle = dt.datetime.now(dt.UTC)  # no heartbeat recorded: our own clock
        logger.info(
            "cycle done: %d comparisons, %d repairs in %.2fs",
            summary.checked,
            summary.repaired,
            time.monotonic() - started,
            extra=log,
        )
        return summary

    def _open_delta(
        self, log: dict[str, str]
    ) -> tuple[dict[str, DeltaTableReader], dict[str, bool]]:
        readers: dict[str, DeltaTableReader] = {}
        up = {"delta": True, "postgres": True}
        for spec in self.context.settings.tables:
            try:
                readers[spec.name] = self.context.checker.latest(spec)
            except ReplicationError as exc:
                up["delta"] = False
                logger.error("Delta table %s unavailable: %s", spec.name, exc, extra=log)
        return readers, up

    def _keep_books(self, log: dict[str, str], *, leading: bool, complete: bool) -> bool:
        """The leader records its complete cycle (the heartbeat every replica exports as the
        dead-man's switch); every replica reads the audited repairs (the same on each, manual
        ones included) and each month's failed repairs since its last successful one."""
        heartbeat: dt.datetime | None = None
        try:
            with self.context.db.session() as conn:
                if leading and complete:
                    heartbeat = beat(conn, self.context.repairer.actor)
                elif complete:
                    heartbeat = last_beat(conn)
                counts = repair_counts(conn)
                failing = failing_repairs(conn)
        except PostgresError as exc:
            logger.warning("could not keep the cycle's books: %s", exc, extra=log)
            return False
        if heartbeat is not None:
            self.last_cycle = heartbeat
        for spec in self.context.settings.tables:
            for trigger in Trigger:
                for outcome in (Outcome.REPAIRED, Outcome.FAILED):
                    for mode in (Mode.NARROW, Mode.FULL):
                        counts.setdefault((spec.name, trigger, outcome, mode), 0)
        self.repairs = counts
        for month, state in self.months.items():
            failures = 0 if state.record.in_sync else failing.get(month.labels, 0)
            state.record = dataclasses.replace(state.record, repair_failures=failures)
        return heartbeat is not None or not (leading and complete)
