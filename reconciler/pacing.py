"""Pacing the daemon's Postgres digest work, so that a rolling check of many large months
cannot saturate the serving copy (`digest.postgres_max_share`, `digest.postgres_rows_per_second`).

After each comparison that digested Postgres, the daemon pauses before the next one: long enough
that digesting takes at most `max_share` of the wall time, and that rows go no faster than
`rows_per_second`. A pure function of the work done; the cycle does the waiting (and stops
waiting when asked to stop).
"""

from __future__ import annotations

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
