"""The `YYYY-MM` month that partitions every signal table, and the window of months watched."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

_PATTERN = re.compile(r"([0-9]{4})-([0-9]{2})")


@dataclass(frozen=True, order=True)
class YearMonth:
    """A calendar month, rendered and parsed strictly as `YYYY-MM`."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.year <= 9999 or not 1 <= self.month <= 12:
            raise ValueError(f"not a valid year-month: {self.year:04d}-{self.month:02d}")

    @classmethod
    def parse(cls, text: str) -> YearMonth:
        match = _PATTERN.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"year-month must look like YYYY-MM (e.g. 2026-10), got {text!r}")
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12 or year < 1:
            raise ValueError(f"year-month {text!r} names no calendar month")
        return cls(year, month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def shifted(self, months: int) -> YearMonth:
        index = self.year * 12 + (self.month - 1) + months
        return YearMonth(index // 12, index % 12 + 1)

    @property
    def lock_key(self) -> int:
        """A stable int4 identifying the month inside an advisory lock key."""
        return self.year * 100 + self.month


def current_month(now: float | None = None) -> YearMonth:
    """The calendar month (UTC) of `now` (default: the current time)."""
    moment = time.gmtime(now)
    return YearMonth(moment.tm_year, moment.tm_mon)


def retention_window(today: YearMonth, months: int) -> list[YearMonth]:
    """The months watched and exported: `today` and the `months - 1` before it, newest first."""
    return [today.shifted(-i) for i in range(months)]
