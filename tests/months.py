"""`month_key(table, "YYYY-MM")`: a `Month` key by name, for tests that look months up."""

from __future__ import annotations

from replicator.config import DEFAULT_TABLES, TableSpec
from replicator.month import Month

_SPECS = {spec.name: spec for spec in DEFAULT_TABLES}


def month_key(table: str, year_month: str) -> Month:
    """Months are equal by table name and month, whatever the spec says."""
    return Month.of(_SPECS.get(table) or TableSpec(table, ("signal_date",)), year_month)
