"""`Month`: one month of one configured table, the unit everything is written, checked, locked,
recorded and exported by; the one place where a month becomes text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from replicator.config import TableSpec
from replicator.yearmonth import YearMonth


@dataclass(frozen=True, order=True)
class Month:
    """(table, year-month): a dict key (equal by table name and month, whatever else the spec
    says, so a month keeps its identity across a configuration reload), the advisory lock key,
    and the labels of its logs and metrics."""

    table: str
    year_month: YearMonth
    spec: TableSpec = field(compare=False, repr=False)

    @classmethod
    def of(cls, spec: TableSpec, year_month: YearMonth | str) -> Month:
        month = year_month if isinstance(year_month, YearMonth) else YearMonth.parse(year_month)
        return cls(spec.name, month, spec)

    @property
    def ym(self) -> str:
        """The month as the `year_month` column and Delta's partition value hold it."""
        return str(self.year_month)

    def __str__(self) -> str:
        return f"{self.table} {self.year_month}"

    @property
    def lock_key(self) -> tuple[str, int]:
        """The transaction-scoped advisory lock of the month's writers: (the qualified table,
        hashed by Postgres's `hashtext`, and YYYYMM)."""
        return (self.spec.qualified_name, self.year_month.lock_key)

    @property
    def labels(self) -> tuple[str, str]:
        """(table, year_month): the month's Prometheus labels."""
        return (self.table, self.ym)

    @property
    def log(self) -> dict[str, str]:
        """The `extra` of a log record about this month (JSON logs carry both fields)."""
        return {"table": self.table, "year_month": self.ym}


def months_of(specs: tuple[TableSpec, ...], year_month: YearMonth) -> list[Month]:
    """The month of each table."""
    return [Month.of(spec, year_month) for spec in specs]
