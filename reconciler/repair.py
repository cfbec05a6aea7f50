"""Repairing a month: re-replicate it from the latest Delta snapshot through the replicator's
own transactional write (same lock, so it serializes with the ranking job), check it again,
and leave an audit row whatever happens.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reconciler.check import Checker, TableCheck
from reconciler.verdict import Status
from replicator.config import Settings, TableSpec
from replicator.errors import ReplicationError
from replicator.postgres import Database
from replicator.syncstate import reanchor
from replicator.writer import MonthWriter, new_run_id
from replicator.yearmonth import YearMonth

logger = logging.getLogger(__name__)

AUDIT = sql.Identifier("ranking", "repair_audit")
TRIGGERS = ("auto", "manual")


@dataclass
class RepairResult:
    table: str
    year_month: str
    outcome: str  # repaired | reanchored | failed | skipped | dry_run
    status_before: Status
    status_after: Status | None = None
    delta_version: int | None = None
    rows_written: int | None = None
    message: str = ""
    run_id: str = ""
    check_after: TableCheck | None = field(default=None, repr=False)

    @property
    def succeeded(self) -> bool:
        return self.outcome in ("repaired", "reanchored", "skipped", "dry_run")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "check_after"}


class Repairer:
    """Repairs months; `actor` says who asked (an on-call user or the daemon)."""

    def __init__(
        self,
        checker: Checker,
        settings: Settings,
        db: Database,
        *,
        actor: str,
        trigger: str = "manual",
    ) -> None:
        self.checker = checker
        self.settings = settings
        self.db = db
        self.actor = actor
        self.trigger = trigger  # auto (the daemon) | manual (on-call); audited and exported

    @classmethod
    def for_settings(cls, settings: Settings, *, actor: str) -> Repairer:
        db = Database.for_settings(settings, "reconciler-repair")
        return cls(Checker(db, settings), settings, db, actor=actor)

    def repair(
        self,
        spec: TableSpec,
        year_month: YearMonth,
        *,
        dry_run: bool = False,
        force: bool = False,
        before: TableCheck | None = None,
    ) -> RepairResult:
        run_id = new_run_id()
        before = before or self.checker.check(spec, year_month)
        result = RepairResult(
            spec.name,
            str(year_month),
            "skipped",
            before.status,
            run_id=run_id,
            delta_version=before.delta_version,
        )
        log = {"table": spec.name, "year_month": str(year_month), "run_id": run_id}
        if before.status is Status.IN_SYNC and not force:
            if (
                before.reanchor is not None
                and not dry_run
                and self.reanchor(spec, year_month, before)
            ):
                result.outcome = "reanchored"
                result.delta_version = before.reanchor.delta_version
                result.message = (
                    f"already in sync; sync state re-anchored to Delta version "
                    f"{before.reanchor.delta_version} ({before.reason})"
                )
                return result
            result.message = "already in sync (use --force to rewrite it anyway)"
            return result
        if before.status is Status.ERROR:
            # Whatever stops the comparison (a source down, a schema mismatch) would stop the
            # write too; report it instead of trying.
            result.outcome, result.message = "failed", f"cannot repair: {before.reason}"
            self._audit(result, before, before)
            return result
        if dry_run:
            result.outcome = "dry_run"
            result.message = (
                f"would replace {before.postgres_rows} Postgres rows with the "
                f"{before.delta_rows if before.status is not Status.ORPHANED else 0} rows of Delta "
                f"version {before.delta_version} (status now {before.status})"
            )
            logger.info("dry run: %s %s: %s", spec.name, year_month, result.message, extra=log)
            return result
        writer = MonthWriter(self.settings, run_id=run_id, application_name="reconciler-repair")
        try:
            written = writer.write_month(
                spec, year_month, force=True, allow_empty=before.status is Status.ORPHANED
            )
            result.rows_written, result.delta_version = written.rows, written.delta_version
        except ReplicationError as exc:
            result.outcome, result.message = "failed", str(exc)
        after = self.checker.check(spec, year_month)
        result.status_after, result.check_after = after.status, after
        if result.outcome != "failed":
            if after.status is Status.IN_SYNC:
                result.outcome = "repaired"
            else:
                result.outcome = "failed"
                result.message = f"still {after.status} after the rewrite: {after.reason}"
        self._audit(result, before, after)
        level = logging.INFO if result.outcome == "repaired" else logging.ERROR
        logger.log(
            level,
            "repair of %s %s by %s: %s %s",
            spec.name,
            year_month,
            self.actor,
            result.outcome,
            result.message,
            extra=log,
        )
        return result

    def reanchor(
        self, spec: TableSpec, year_month: YearMonth, check: TableCheck
    ) -> dt.datetime | None:
        """Records the new anchor a check proved (see `TableCheck.reanchor`), audited like a
        repair; returns its `verified_at`, or None when a writer got there first (its own
        record then stands)."""
        anchor, state = check.reanchor, check.reanchor_from
        if anchor is None or state is None:
            return None
        log = {"table": spec.name, "year_month": str(year_month)}
        try:
            with self.db.connect() as conn:
                verified_at = reanchor(conn, spec, state, anchor)
                if verified_at is None:
                    logger.info(
                        "re-anchoring %s %s skipped: a writer got there first",
                        spec.name,
                        year_month,
                        extra=log,
                    )
                    return None
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (actor, trigger, table_name, year_month, delta_version,"
                        " status_before, rows_before, digest_before, rows_after, digest_after,"
                        " delta_digest, outcome, message, run_id)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'reanchored',"
                        " %s, %s)"
                    ).format(AUDIT),
                    (
                        self.actor,
                        self.trigger,
                        spec.name,
                        str(year_month),
                        anchor.delta_version,
                        str(check.status),
                        state.row_count,
                        state.content_digest,
                        anchor.row_count,
                        anchor.content_digest,
                        anchor.content_digest,
                        check.reason[:2000],
                        new_run_id(),
                    ),
                )
                conn.commit()
        except (ReplicationError, psycopg.Error) as exc:
            logger.error(
                "could not re-anchor %s %s: %s",
                spec.name,
                year_month,
                self.db.scrub(str(exc)),
                extra=log,
            )
            return None
        logger.info(
            "re-anchored %s %s to Delta version %s by %s: %s",
            spec.name,
            year_month,
            anchor.delta_version,
            self.actor,
            check.reason,
            extra=log,
        )
        return verified_at

    def _audit(self, result: RepairResult, before: TableCheck, after: TableCheck) -> None:
        try:
            with self.db.connect() as conn:
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (actor, trigger, table_name, year_month, delta_version,"
                        " status_before, rows_before, digest_before, rows_after, digest_after,"
                        " delta_digest, outcome, message, run_id)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    ).format(AUDIT),
                    (
                        self.actor,
                        self.trigger,
                        result.table,
                        result.year_month,
                        result.delta_version,
                        before.status,
                        before.postgres_rows,
                        before.postgres_digest,
                        after.postgres_rows,
                        after.postgres_digest,
                        after.delta_digest,
                        result.outcome,
                        result.message[:2000],
                        result.run_id,
                    ),
                )
        except (ReplicationError, psycopg.Error) as exc:  # the audit must not hide the repair
            logger.error("could not write the repair audit row: %s", self.db.scrub(str(exc)))


# Outcomes after which a month's repairs no longer count as failing.
_SETTLED = ("repaired", "reanchored", "skipped")


def repair_counts(conn: psycopg.Connection[Any]) -> dict[tuple[str, str, str], int]:
    """Every audited repair, automatic or manual, by (table, trigger, outcome): what
    `reconciler_repairs_total` exports, the same on every replica."""
    rows = conn.execute(
        sql.SQL("SELECT table_name, trigger, outcome, count(*) FROM {} GROUP BY 1, 2, 3").format(
            AUDIT
        )
    ).fetchall()
    return {(row[0], row[1], row[2]): int(row[3]) for row in rows}


def failing_repairs(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    """By (table, month): failed repairs since the month's last successful one (months whose
    last repair succeeded are absent)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT a.table_name, a.year_month, count(*) FROM {audit} a"
            " WHERE a.outcome = 'failed' AND a.at > coalesce((SELECT max(s.at) FROM {audit} s"
            " WHERE s.table_name = a.table_name AND s.year_month = a.year_month"
            " AND s.outcome = ANY(%s)), '-infinity') GROUP BY 1, 2"
        ).format(audit=AUDIT),
        (list(_SETTLED),),
    ).fetchall()
    return {(row[0], row[1]): int(row[2]) for row in rows}
