"""The reconciliation and drift-monitoring daemon: compares Delta with Postgres month by month.

For notebooks: `reconciler.diff_month("ranking_signal", "2026-10").to_pandas()` (imported on
first use, so that the command line starts without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicator import __version__

if TYPE_CHECKING:
    from reconciler.diff import diff_month


def __getattr__(name: str) -> Any:
    if name == "diff_month":
        from reconciler.diff import diff_month

        return diff_month
    raise AttributeError(f"module 'reconciler' has no attribute {name!r}")


__all__ = ["__version__", "diff_month"]
