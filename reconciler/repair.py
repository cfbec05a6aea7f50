"""Repairing a month: re-replicate it from the latest Delta snapshot through the replicator's
own transactional write (same lock, so it serializes with the ranking job), check it again,
and leave an audit row whatever happens.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from reconciler.check import Checker, CheckResult
from reconciler.record import MonthRecord
from reconciler.verdict import Status
from replicator.config import Settings
from replicator.errors import PostgresError, ReplicationError
from replicator.month import Month
from replicator.postgres import Database, Session
from replicator.syncstate import reanchor
from replicator.writer import MonthWriter, WriteOptions, new_run_id

logger = logging.getLogger(__name__)

AUDIT = sql.Identifier("ranking", "repair_audit")


class Trigger(enum.StrEnum):
    """Who asked for a repair; audited and exported."""

    AUTO = "auto"  # the daemon
    MANUAL = "manual"  # on-call, `reconciler repair`


class Outcome(enum.StrEnum):
    """What became of one month's repair."""

    REPAIRED = "repaired"
    REANCHORED = "reanchored"  # already in sync; sync state moved to the proven identity
    SKIPPED = "skipped"  # already in sync
    DRY_RUN = "dry_run"
    FAILED = "failed"

    @property
    def succeeded(self) -> bool:
        return self is not Outcome.FAILED

    @property
    def settles(self) -> bool:
        """After it, the month's earlier failed repairs no longer count as failing."""
        return self in (Outcome.REPAIRED, Outcome.REANCHORED, Outcome.SKIPPED)


# Outcomes written to the audit (a dry run and a month already in sync write none).
AUDITED = (Outcome.REPAIRED, Outcome.REANCHORED, Outcome.FAILED)


@dataclass
class RepairResult:
    month: Month
    outcome: Outcome
    status_before: Status
    status_after: Status | None = None
    delta_version: int | None = None
    rows_written: int | None = None
    message: str = ""
    run_id: str = ""
    after: MonthRecord | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome.succeeded

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.month.table,
            "year_month": self.month.ym,
            "outcome": str(self.outcome),
            "status_before": str(self.status_before),
            "status_after": None if self.status_after is None else str(self.status_after),
            "delta_version": self.delta_version,
            "rows_written": self.rows_written,
            "message": self.message,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class _Audit:
    result: RepairResult
    before: MonthRecord
    after: MonthRecord


class Repairer:
    """Repairs months; `actor` says who asked (an on-call user or the daemon)."""

    def __init__(
        self,
        checker: Checker,
        settings: Settings,
        *,
        actor: str,
        trigger: Trigger = Trigger.MANUAL,
    ) -> None:
        self.checker = checker
        self.settings = settings
        self.db: Database = checker.db.named("reconciler-repair")
        self.actor = actor
        self.trigger = trigger

    @classmethod
    def for_settings(cls, settings: Settings, *, actor: str) -> Repairer:
        db = Database.for_settings(settings, "reconciler-repair")
        return cls(Checker(db, settings), settings, actor=actor)

    def repair(
        self,
        month: Month,
        *,
        dry_run: bool = False,
        force: bool = False,
        before: CheckResult | None = None,
    ) -> RepairResult:
        """Repairs the month; `before` is the check it follows (made now when not given)."""
        run_id = new_run_id()
        checked = before or self.checker.examine(month)
        record = checked.record
        result = RepairResult(
            month, Outcome.SKIPPED, record.status, run_id=run_id, delta_version=record.delta_version
        )
        log = {**month.log, "run_id": run_id}
        if record.status is Status.IN_SYNC and not force:
            return self._in_sync(result, checked, dry_run)
        if record.status is Status.ERROR:
            # Whatever stops the comparison (a source down, a schema mismatch) would stop the
            # write too; report it instead of trying.
            result.outcome, result.message = Outcome.FAILED, f"cannot repair: {record.reason}"
            self._audit(_Audit(result, record, record))
            return result
        if dry_run:
            rows = record.delta_rows if record.status is not Status.ORPHANED else 0
            result.outcome = Outcome.DRY_RUN
            result.message = (
                f"would replace {record.postgres_rows} Postgres rows with the {rows} rows of "
                f"Delta version {record.delta_version} (status now {record.status})"
            )
            logger.info("dry run: %s: %s", month, result.message, extra=log)
            return result
        writer = MonthWriter(self.settings, run_id=run_id, application_name="reconciler-repair")
        try:
            written = writer.write(
                month, WriteOptions(force=True, allow_empty=record.status is Status.ORPHANED)
            )
            result.rows_written, result.delta_version = written.rows, written.delta_version
        except ReplicationError as exc:
            result.outcome, result.message = Outcome.FAILED, str(exc)
        after = self.checker.check(month)
        result.status_after, result.after = after.status, after
        if result.outcome is not Outcome.FAILED:
            if after.status is Status.IN_SYNC:
                result.outcome = Outcome.REPAIRED
            else:
                result.outcome = Outcome.FAILED
                result.message = f"still {after.status} after the rewrite: {after.reason}"
        self._audit(_Audit(result, record, after))
        level = logging.INFO if result.outcome is Outcome.REPAIRED else logging.ERROR
        logger.log(
            level,
            "repair of %s by %s: %s%s",
            month,
            self.actor,
            result.outcome,
            f": {result.message}" if result.message else "",
            extra=log,
        )
        return result

    def _in_sync(self, result: RepairResult, checked: CheckResult, dry_run: bool) -> RepairResult:
        proposal = checked.reanchor
        if proposal is not None and not dry_run and self.reanchor(checked):
            result.outcome = Outcome.REANCHORED
            result.delta_version = proposal.anchor.delta_version
            result.message = (
                f"already in sync; sync state re-anchored to Delta version "
                f"{proposal.anchor.delta_version} ({checked.record.reason})"
            )
            return result
        result.message = "already in sync (use --force to rewrite it anyway)"
        return result

    def reanchor(self, checked: CheckResult) -> dt.datetime | None:
        """Records the new anchor a check proved (see `CheckResult.reanchor`), audited like a
        repair; returns its `verified_at`, or None when a writer got there first (its own
        record then stands)."""
        proposal, month = checked.reanchor, checked.month
        if proposal is None:
            return None
        anchor, state = proposal.anchor, proposal.replaces
        try:
            with self.db.session() as conn:
                verified_at = reanchor(conn, state, anchor)
                if verified_at is None:
                    logger.info(
                        "re-anchoring %s skipped: a writer got there first", month, extra=month.log
                    )
                    return None
                before = MonthRecord(
                    month,
                    checked.status,
                    checked.record.reason,
                    postgres_rows=state.row_count,
                    postgres_digest=state.content_digest,
                )
                after = dataclasses.replace(
                    before,
                    postgres_rows=anchor.row_count,
                    postgres_digest=anchor.content_digest,
                    delta_digest=anchor.content_digest,
                )
                result = RepairResult(
                    month,
                    Outcome.REANCHORED,
                    checked.status,
                    delta_version=anchor.delta_version,
                    message=checked.record.reason,
                    run_id=new_run_id(),
                )
                self._insert_audit(conn, _Audit(result, before, after))
                conn.commit()
        except PostgresError as exc:
            logger.error("could not re-anchor %s: %s", month, exc, extra=month.log)
            return None
        logger.info(
            "re-anchored %s to Delta version %s by %s: %s",
            month,
            anchor.delta_version,
            self.actor,
            checked.record.reason,
            extra=month.log,
        )
        return verified_at

    def _insert_audit(self, conn: Session, audit: _Audit) -> None:
        result, before, after = audit.result, audit.before, audit.after
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (actor, trigger, table_name, year_month, delta_version,"
                " status_before, rows_before, digest_before, rows_after, digest_after,"
                " delta_digest, outcome, message, run_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            ).format(AUDIT),
            (
                self.actor,
                str(self.trigger),
                result.month.table,
                result.month.ym,
                result.delta_version,
                str(before.status),
                before.postgres_rows,
                before.postgres_digest,
                after.postgres_rows,
                after.postgres_digest,
                after.delta_digest,
                str(result.outcome),
                result.message[:2000],
                result.run_id,
            ),
        )

    def _audit(self, audit: _Audit) -> None:
        try:
            with self.db.session() as conn:
                self._insert_audit(conn, audit)
                conn.commit()
        except PostgresError as exc:  # the audit must not hide the repair
            logger.error("could not write the repair audit row: %s", exc)


def repair_counts(conn: Session) -> dict[tuple[str, Trigger, Outcome], int]:
    """Every audited repair, automatic or manual, by (table, trigger, outcome): what
    `reconciler_repairs_total` exports, the same on every replica."""
    rows = conn.fetchall(
        sql.SQL("SELECT table_name, trigger, outcome, count(*) FROM {} GROUP BY 1, 2, 3").format(
            AUDIT
        )
    )
    return {(row[0], Trigger(row[1]), Outcome(row[2])): int(row[3]) for row in rows}


def failing_repairs(conn: Session) -> dict[tuple[str, str], int]:
    """By (table, month): failed repairs since the month's last successful one (months whose
    last repair succeeded are absent)."""
    settled = [str(o) for o in Outcome if o.settles]
    rows = conn.fetchall(
        sql.SQL(
            "SELECT a.table_name, a.year_month, count(*) FROM {audit} a"
            " WHERE a.outcome = 'failed' AND a.at > coalesce((SELECT max(s.at) FROM {audit} s"
            " WHERE s.table_name = a.table_name AND s.year_month = a.year_month"
            " AND s.outcome = ANY(%s)), '-infinity') GROUP BY 1, 2"
        ).format(audit=AUDIT),
        (settled,),
    )
    return {(row[0], row[1]): int(row[2]) for row in rows}
