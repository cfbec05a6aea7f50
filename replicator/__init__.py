"""The thin writer: replicates a month of each signal table from Delta Lake to Postgres.

The ranking job calls `write_signals_for_year_month(year_month)` right after its Delta writes.
"""

from __future__ import annotations

__version__ = "0.2.0"  # the one version of the project (pyproject reads it from here)

from replicator.config import Settings, TableSpec, load_settings
from replicator.month import Month
from replicator.writer import MonthWriter, WriteOptions, WriteResult, write_months
from replicator.yearmonth import YearMonth


def write_month(  # noqa: PLR0913 (the ranking job's call: keyword options as `replicator write` takes them)
    table: str,
    year_month: str | YearMonth,
    *,
    delta_version: int | None = None,
    allow_empty: bool = False,
    force: bool = False,
    settings: Settings | None = None,
) -> WriteResult:
    """Replicates one month of one configured table (settings from the environment by default)."""
    settings = settings or load_settings()
    month = year_month if isinstance(year_month, YearMonth) else YearMonth.parse(year_month)
    return MonthWriter(settings).write(
        Month.of(settings.table(table), month), WriteOptions(delta_version, allow_empty, force)
    )


def write_signals_for_year_month(
    year_month: str | YearMonth, *, settings: Settings | None = None
) -> list[WriteResult]:
    """Replicates the month of every configured signal table.

    `POSTGRES_DSN` unset: logs that replication is skipped and returns. Failures raise unless
    `POSTGRES_SIGNALS_WRITE_REQUIRED=false`, in which case they are logged, recorded in
    `ranking.signal_sync_state`, and returned with status `failed`.
    """
    settings = settings or load_settings()
    month = year_month if isinstance(year_month, YearMonth) else YearMonth.parse(year_month)
    return write_months(settings, month, settings.tables)


__all__ = [
    "Month",
    "MonthWriter",
    "Settings",
    "TableSpec",
    "WriteResult",
    "YearMonth",
    "__version__",
    "write_month",
    "write_signals_for_year_month",
]
