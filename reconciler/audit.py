"""`ranking.repair_audit`: a row for every repair and re-anchoring, automatic or manual, and the
counts every replica exports from it (`reconciler_repairs_total`)."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from psycopg import sql

from replicator.errors import PostgresError
from replicator.month import Month
from replicator.postgres import Database, Session

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
    REFUSED = "refused"  # --mode narrow where a narrow repair is not possible: nothing done
    FAILED = "failed"

    @property
    def succeeded(self) -> bool:
        return self not in (Outcome.FAILED, Outcome.REFUSED)

    @property
    def settles(self) -> bool:
        """After it, the month's earlier failed repairs no longer count as failing."""
        return self in (Outcome.REPAIRED, Outcome.REANCHORED, Outcome.SKIPPED)


class Mode(enum.StrEnum):
    """How a repair rewrote the month, as audited and exported."""

    NARROW = "narrow"  # only the differing rows
    FULL = "full"  # the whole month
    NONE = "none"  # nothing written: a re-anchoring, or a repair that could not start


@dataclass(frozen=True)
class AuditRow:
    month: Month
    actor: str
    trigger: Trigger
    outcome: Outcome
    mode: Mode
    run_id: str
    delta_version: int | None = None
    status_before: str = ""
    rows_before: int | None = None
    digest_before: str | None = None
    rows_after: int | None = None
    digest_after: str | None = None
    delta_digest: str | None = None
    rows_deleted: int | None = None
    rows_inserted: int | None = None
    message: str = ""


_INSERT = sql.SQL(
    "INSERT INTO {} (actor, trigger, table_name, year_month, delta_version, status_before,"
    " rows_before, digest_before, rows_after, digest_after, delta_digest, outcome, message,"
    " run_id, mode, rows_deleted, rows_inserted)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
).format(AUDIT)


def insert_audit(conn: Session, row: AuditRow) -> None:
    """The audit row, in the caller's transaction."""
    conn.execute(
        _INSERT,
        (
            row.actor,
            str(row.trigger),
            row.month.table,
            row.month.ym,
            row.delta_version,
            row.status_before,
            row.rows_before,
            row.digest_before,
            row.rows_after,
            row.digest_after,
            row.delta_digest,
            str(row.outcome),
            row.message[:2000],
            row.run_id,
            None if row.mode is Mode.NONE else str(row.mode),
            row.rows_deleted,
            row.rows_inserted,
        ),
    )


def write_audit(db: Database, row: AuditRow) -> None:
    """The audit row, committed on its own; a failure is logged (it must not hide the repair)."""
    try:
        with db.session() as conn:
            insert_audit(conn, row)
            conn.commit()
    except PostgresError as exc:
        logger.error("could not write the repair audit row of %s: %s", row.month, exc)


RepairKey = tuple[str, Trigger, Outcome, Mode]  # (table, trigger, outcome, mode)


def repair_counts(conn: Session) -> dict[RepairKey, int]:
    """Every audited repair, automatic or manual, by (table, trigger, outcome, mode): what
    `reconciler_repairs_total` exports, the same on every replica. Repairs audited before
    narrow repairs existed were full ones."""
    rows = conn.fetchall(
        sql.SQL(
            "SELECT table_name, trigger, outcome, coalesce(mode, CASE WHEN outcome ="
            " 'reanchored' THEN 'none' ELSE 'full' END), count(*) FROM {} GROUP BY 1, 2, 3, 4"
        ).format(AUDIT)
    )
    return {(r[0], Trigger(r[1]), Outcome(r[2]), Mode(r[3])): int(r[4]) for r in rows}


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
