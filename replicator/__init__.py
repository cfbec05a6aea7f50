"""The thin writer: replicates a month of each signal table from Delta Lake to Postgres.

The ranking job calls `write_signals_for_year_month(year_month)` right after its Delta writes.
The writer and what it needs (Delta, Arrow, the drivers) are imported on first use, so that a
command line that only asks for `--version` or `--help` starts at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"  # the one version of the project (pyproject reads it from here)

if TYPE_CHECKING:
    from replicator.config import Settings, TableSpec
    from replicator.month import Month
    from replicator.writer import MonthWriter, WriteResult
    from replicator.yearmonth import YearMonth

_LAZY = {
    "Settings": "replicator.config",
    "TableSpec": "replicator.config",
    "Month": "replicator.month",
    "MonthWriter": "replicator.writer",
    "WriteResult": "replicator.writer",
    "YearMonth": "replicator.yearmonth",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'replicator' has no attribute {name!r}")


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
    from replicator.config import load_settings
    from replicator.month import Month
    from replicator.writer import MonthWriter, WriteOptions

    settings = settings or load_settings()
    return MonthWriter(settings).write(
        Month.of(settings.table(table), year_month), WriteOptions(delta_version, allow_empty, force)
    )


def write_signals_for_year_month(
    year_month: str | YearMonth, *, settings: Settings | None = None
) -> list[WriteResult]:
    """Replicates the month of every configured signal table.

    `POSTGRES_DSN` unset: logs that replication is skipped and returns. Failures raise unless
    `POSTGRES_SIGNALS_WRITE_REQUIRED=false`, in which case they are logged, recorded in
    `ranking.signal_sync_state`, and returned with status `failed`.
    """
    from replicator.config import load_settings
    from replicator.writer import write_months
    from replicator.yearmonth import YearMonth

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
