"""The reconciliation and drift-monitoring daemon: compares Delta with Postgres month by month."""

__version__ = "0.1.0"
