"""`MonthRecord`: what is known about one month of one table, in one frozen record.

The checker builds it from the verdict; `ranking.month_check` stores it (findings.py); the
daemon holds it per month (monthstate.py) and followers adopt the leader's as is; `check`,
`status`, the CLI and the exporter render from it. Times are timezone-aware datetimes (UTC)
everywhere; they become epoch seconds only where Prometheus wants them, and text only where a
person reads them. A field reported anywhere is added here once.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from reconciler.verdict import Status
from replicator.delta import ChangeKind
from replicator.month import Month


class DigestSource(enum.StrEnum):
    """Where the Delta digest a month was compared with came from."""

    RECORDED = "recorded"  # the writer's digest of the rows it copied, at sync
    COMPUTED = "computed"  # recomputed from the Delta snapshot now


def timestamp(moment: dt.datetime | None) -> float | None:
    """Epoch seconds, for Prometheus and the JSON members that have always been numbers."""
    return None if moment is None else moment.timestamp()


def utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


@dataclass(frozen=True)
class MonthRecord:
    month: Month
    status: Status = Status.UNKNOWN
    reason: str = ""
    delta_version: int | None = None  # the Delta version Postgres was compared with
    synced_version: int | None = None  # the Delta version sync state anchors
    delta_rows: int | None = None  # rows of that Delta version's month (logical rows)
    postgres_rows: int | None = None
    delta_digest: str | None = None
    postgres_digest: str | None = None
    delta_digest_source: DigestSource | None = None
    delta_change: ChangeKind | None = None  # what Delta did to the month since the sync
    changed_version: int | None = None  # the first Delta version that changed it
    replication_in_flight: bool = False
    lag_seconds: float = 0.0  # as of `checked_at`
    last_sync_at: dt.datetime | None = None
    consecutive_failures: int = 0  # replications recorded as failed since the last success
    last_failure: str | None = None
    checked_at: dt.datetime | None = None
    duration_seconds: float | None = None
    postgres_checked_at: dt.datetime | None = None  # Postgres last re-digested from its rows
    proven_at: dt.datetime | None = None  # both sides last digested from their data
    repair_failures: int = 0  # failed repairs since the last successful one

    # -- what the exporter reads (exporter.metrics.MonthView) ----------------------------
    @property
    def labels(self) -> tuple[str, str]:
        return self.month.labels

    @property
    def table(self) -> str:
        return self.month.table

    @property
    def year_month(self) -> str:
        return self.month.ym

    @property
    def in_sync(self) -> bool:
        return self.status is Status.IN_SYNC

    def lag_at(self, now: dt.datetime) -> float:
        """The lag grows while nothing is checked: it was measured at `checked_at`."""
        if not self.lag_seconds or self.checked_at is None:
            return self.lag_seconds
        return self.lag_seconds + max(0.0, (now - self.checked_at).total_seconds())

    def as_json(self) -> dict[str, Any]:
        """The `check --json` table entry (docs/cli.md)."""
        return {
            "table": self.table,
            "year_month": self.year_month,
            "status": str(self.status),
            "delta_version": self.delta_version,
            "synced_version": self.synced_version,
            "delta_rows": self.delta_rows,
            "postgres_rows": self.postgres_rows,
            "delta_digest": self.delta_digest,
            "postgres_digest": self.postgres_digest,
            "reason": self.reason,
            "replication_in_flight": self.replication_in_flight,
            "lag_seconds": self.lag_seconds,
            "last_sync_timestamp": timestamp(self.last_sync_at),
            "consecutive_failures": self.consecutive_failures,
            "duration_seconds": self.duration_seconds,
            "delta_digest_source": None
            if self.delta_digest_source is None
            else str(self.delta_digest_source),
            "delta_change": None if self.delta_change is None else self.delta_change.value,
            "changed_version": self.changed_version,
            "proven_at": None if self.proven_at is None else self.proven_at.isoformat(),
        }
