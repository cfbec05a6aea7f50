"""The reconciliation and drift-monitoring daemon: compares Delta with Postgres month by month.

For notebooks: `reconciler.diff_month("ranking_signal", "2026-10").to_pandas()`.
"""

from reconciler.diff import diff_month
from replicator import __version__

__all__ = ["__version__", "diff_month"]
