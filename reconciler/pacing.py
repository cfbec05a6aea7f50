"""Pacing the daemon's digest work: its Postgres digests, so that a rolling check of many large
months cannot saturate the serving copy (`digest.postgres_max_share`,
`digest.postgres_rows_per_second`), and the Delta side of its proofs (`daemon.deep_check_budget`).

After each comparison that digested Postgres, the daemon pauses before the next one: long enough
that digesting takes at most `max_share` of the wall time, and that rows go no faster than
`rows_per_second`. A pure function of the work done; the cycle does the waiting (and stops
waiting when asked to stop).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Pacer:
    max_share: float = 1.0  # 1: never pause for the share
    rows_per_second: int = 0  # 0: no row budget

    def pause_after(self, rows: float, seconds: float) -> float:
        """Seconds to wait after a digest of `rows` rows that took `seconds`."""
        wait = 0.0
        if self.max_share < 1.0:
            wait = seconds * (1.0 / self.max_share - 1.0)
        if self.rows_per_second > 0:
            wait = max(wait, rows / self.rows_per_second - seconds)
        return max(0.0, wait)


@dataclass
class ProofBudget:
    """The Delta side of the daemon's proofs uses at most `share` of one core: after a proof
    that took `cpu` seconds of this process's CPU, the next starts no sooner than `cpu / share`
    after it started. Nothing waits: the cycle simply proves nothing more until then."""

    share: float
    next_allowed: dt.datetime | None = None

    def allows(self, now: dt.datetime) -> bool:
        return self.next_allowed is None or now >= self.next_allowed

    def spent(self, started: dt.datetime, cpu_seconds: float) -> None:
        self.next_allowed = started + dt.timedelta(seconds=cpu_seconds / self.share)
