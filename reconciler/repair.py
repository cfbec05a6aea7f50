"""Repairing a month from the check it follows: narrowly (only the rows that differ,
`reconciler.narrow`) when few rows differ, else in full through the replicator's own
transactional write (same lock, so it serializes with the ranking job). Either way the month is
proven equal to the Delta version it was repaired from before the transaction commits, so no
second check is needed; an audit row is left whatever happens.

`--mode auto` (the default) chooses narrow when the month was synced from the same Delta table
under the same columns and the rows that differ are at most `repair.narrow_max_rows` and at most
`repair.narrow_max_share` of the month, else full; `narrow` refuses where a narrow repair is not
possible; `full` is always the whole month.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from reconciler.audit import AuditRow, Mode, Outcome, Trigger, insert_audit, write_audit
from reconciler.check import Checker, CheckResult
from reconciler.narrow import NarrowNotPossible, NarrowRepair, ProofFailed, RowChanges
from reconciler.record import DigestSource, MonthRecord
from reconciler.verdict import Status
from replicator.config import RepairMode, Settings
from replicator.delta import ChangeKind
from replicator.errors import PostgresError, ReplicationError
from replicator.month import Month
from replicator.postgres import Database
from replicator.syncstate import reanchor
from replicator.writer import MonthWriter, WriteOptions, WriteStatus, new_run_id

logger = logging.getLogger(__name__)

# Months a narrow repair cannot mend: nothing synced to compare with, or nothing to keep.
_ALWAYS_FULL = frozenset({Status.MISSING, Status.ORPHANED})

__all__ = ["Mode", "Outcome", "RepairResult", "Repairer", "Trigger"]


@dataclass
class RepairResult:
    month: Month
    outcome: Outcome
    status_before: Status
    status_after: Status | None = None
    mode: Mode = Mode.NONE
    delta_version: int | None = None
    rows_deleted: int | None = None
    rows_inserted: int | None = None
    changes: RowChanges | None = None
    message: str = ""
    run_id: str = ""
    after: MonthRecord | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome.succeeded

    @property
    def summary(self) -> str:
        """One line for people: what was done, and how."""
        if self.outcome is Outcome.REPAIRED and self.changes is not None:
            return f"repaired {self.changes.describe()}"
        if self.outcome is Outcome.REPAIRED:
            return f"repaired in full: {self.rows_inserted:,} rows from Delta"
        return str(self.outcome)

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.month.table,
            "year_month": self.month.ym,
            "outcome": str(self.outcome),
            "mode": None if self.mode is Mode.NONE else str(self.mode),
            "status_before": str(self.status_before),
            "status_after": None if self.status_after is None else str(self.status_after),
            "delta_version": self.delta_version,
            "rows_deleted": self.rows_deleted,
            "rows_inserted": self.rows_inserted,
            "rows_written": self.rows_inserted,  # kept for scripts written before modes
            "changes": None if self.changes is None else dataclasses.asdict(self.changes),
            "message": self.message,
            "run_id": self.run_id,
        }


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
        mode: RepairMode | None = None,
        dry_run: bool = False,
        force: bool = False,
        before: CheckResult | None = None,
    ) -> RepairResult:
        """Repairs the month; `before` is the check it follows (made now when not given)."""
        mode = mode or self.settings.repair.mode
        checked = before or self.checker.examine(month)
        record = checked.record
        result = RepairResult(
            month,
            Outcome.SKIPPED,
            record.status,
            run_id=new_run_id(),
            delta_version=record.delta_version,
        )
        if record.status is Status.IN_SYNC and not force:
            return self._in_sync(result, checked, dry_run)
        if record.status is Status.ERROR:
            # Whatever stops the comparison (a source down, a schema mismatch) would stop the
            # write too; report it instead of trying.
            result.outcome, result.message = Outcome.FAILED, f"cannot repair: {record.reason}"
            self._audit(result, record)
            return result
        if dry_run:
            return self._dry_run(result, record, mode)
        narrow = mode is not RepairMode.FULL and record.status not in _ALWAYS_FULL
        if narrow and self._narrow(result, mode):
            pass  # done narrowly, refused, or failed for good
        else:
            self._full(result, record)
        self._audit(result, record)
        self._log(result)
        return result

    # -- the two ways ----------------------------------------------------------------------
    def _narrow(self, result: RepairResult, mode: RepairMode) -> bool:
        """A narrow repair; False when a full one should be made instead (auto mode)."""
        repair = NarrowRepair(self.db, self.settings, result.month, result.run_id)
        try:
            done = repair.run()
        except NarrowNotPossible as exc:
            if mode is RepairMode.NARROW:
                result.outcome = Outcome.REFUSED
                result.message = f"a narrow repair is not possible: {exc}"
                return True
            logger.info("%s: repairing in full: %s", result.month, exc, extra=result.month.log)
            result.message = f"in full: {exc}"
            return False
        except ProofFailed as exc:
            if mode is RepairMode.NARROW:
                result.outcome, result.mode, result.message = Outcome.FAILED, Mode.NARROW, str(exc)
                return True
            logger.warning("%s; repairing in full", exc, extra=result.month.log)
            result.message = f"in full: {exc}"
            return False
        except ReplicationError as exc:
            result.outcome, result.mode, result.message = Outcome.FAILED, Mode.NARROW, str(exc)
            return True
        result.outcome, result.mode, result.changes = Outcome.REPAIRED, Mode.NARROW, done.changes
        result.delta_version = done.delta_version
        result.rows_deleted, result.rows_inserted = done.changes.deleted, done.changes.inserted
        result.after = self._after(
            result.month, done.delta_version, done.digest.rows, done.digest.hex
        )
        result.status_after = Status.IN_SYNC
        return True

    def _full(self, result: RepairResult, record: MonthRecord) -> None:
        """The month rewritten by the replicator's write, proven before it commits."""
        result.mode = Mode.FULL
        writer = MonthWriter(
            self.settings, run_id=result.run_id, application_name="reconciler-repair"
        )
        options = WriteOptions(force=True, allow_empty=record.status is Status.ORPHANED, prove=True)
        try:
            written = writer.write(result.month, options)
        except ReplicationError as exc:
            result.outcome, result.message = Outcome.FAILED, str(exc)
            return
        if written.status is not WriteStatus.WRITTEN:  # best-effort mode: reported, not raised
            result.outcome, result.message = Outcome.FAILED, written.message
            return
        result.outcome, result.delta_version = Outcome.REPAIRED, written.delta_version
        result.rows_deleted, result.rows_inserted = record.postgres_rows, written.rows
        result.after = self._after(
            result.month, written.delta_version, written.rows, written.digest
        )
        result.status_after = Status.IN_SYNC

    def _after(
        self, month: Month, version: int | None, rows: int, digest: str | None
    ) -> MonthRecord:
        """The month as the repair proved it, in the transaction that wrote it."""
        now = dt.datetime.now(dt.UTC)
        return MonthRecord(
            month,
            Status.IN_SYNC,
            f"repaired from Delta version {version}",
            delta_version=version,
            synced_version=version,
            delta_rows=rows,
            postgres_rows=rows,
            delta_digest=digest,
            postgres_digest=digest,
            delta_digest_source=DigestSource.COMPUTED,
            delta_change=ChangeKind.UNCHANGED,
            last_sync_at=now,
            checked_at=now,
            postgres_checked_at=now,
            proven_at=now,
        )

    def _dry_run(self, result: RepairResult, record: MonthRecord, mode: RepairMode) -> RepairResult:
        result.outcome = Outcome.DRY_RUN
        full = (
            f"would rewrite the month in full: replace {record.postgres_rows} Postgres rows with "
            f"the {record.delta_rows if record.status is not Status.ORPHANED else 0} rows of "
            f"Delta version {record.delta_version} (status now {record.status})"
        )
        if mode is RepairMode.FULL or record.status in _ALWAYS_FULL:
            result.mode, result.message = Mode.FULL, full
            return result
        try:
            changes = NarrowRepair(self.db, self.settings, result.month, result.run_id).plan()
        except NarrowNotPossible as exc:
            if mode is RepairMode.NARROW:
                result.outcome = Outcome.REFUSED
                result.message = f"a narrow repair is not possible: {exc}"
            else:
                result.mode, result.message = Mode.FULL, f"{full} (not narrowly: {exc})"
            return result
        result.mode, result.changes = Mode.NARROW, changes
        result.rows_deleted, result.rows_inserted = changes.deleted, changes.inserted
        result.message = f"would repair narrowly: {changes.describe()}"
        return result

    # -- already in sync -------------------------------------------------------------------
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
                insert_audit(
                    conn,
                    AuditRow(
                        month,
                        self.actor,
                        self.trigger,
                        Outcome.REANCHORED,
                        Mode.NONE,
                        new_run_id(),
                        delta_version=anchor.delta_version,
                        status_before=str(checked.status),
                        rows_before=state.row_count,
                        digest_before=state.content_digest,
                        rows_after=anchor.row_count,
                        digest_after=anchor.content_digest,
                        delta_digest=anchor.content_digest,
                        message=checked.record.reason,
                    ),
                )
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

    # -- books -----------------------------------------------------------------------------
    def _audit(self, result: RepairResult, before: MonthRecord) -> None:
        if result.outcome is Outcome.REFUSED:
            return  # nothing was attempted
        after = result.after or before
        write_audit(
            self.db,
            AuditRow(
                result.month,
                self.actor,
                self.trigger,
                result.outcome,
                result.mode,
                result.run_id,
                delta_version=result.delta_version,
                status_before=str(before.status),
                rows_before=before.postgres_rows,
                digest_before=before.postgres_digest,
                rows_after=after.postgres_rows,
                digest_after=after.postgres_digest,
                delta_digest=after.delta_digest,
                rows_deleted=result.rows_deleted,
                rows_inserted=result.rows_inserted,
                message=result.message,
            ),
        )

    def _log(self, result: RepairResult) -> None:
        level = logging.INFO if result.outcome is Outcome.REPAIRED else logging.ERROR
        logger.log(
            level,
            "repair of %s by %s: %s%s",
            result.month,
            self.actor,
            result.summary,
            f" ({result.message})" if result.message else "",
            extra={**result.month.log, "run_id": result.run_id},
        )
