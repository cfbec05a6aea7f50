"""Sample ranking signals, written to real Delta tables: for the demo, the tests and benchmarks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from replicator.yearmonth import YearMonth

RANKING_SIGNAL = pa.schema(
    [
        pa.field("year_month", pa.string(), False),
        pa.field("signal_date", pa.date32(), False),
        pa.field("entity_id", pa.string(), False),
        pa.field("signal_name", pa.string(), False),
        pa.field("value", pa.float64(), True),
        pa.field("rank", pa.int32(), True),
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), False),
    ]
)

COMPOSITE_SIGNAL_DAILY = pa.schema(
    [
        pa.field("year_month", pa.string(), False),
        pa.field("signal_date", pa.date32(), False),
        pa.field("entity_id", pa.string(), False),
        pa.field("composite_score", pa.float64(), True),
        pa.field("signal_count", pa.int32(), False),
        pa.field("model_version", pa.string(), True),
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), False),
    ]
)

SCHEMAS: Mapping[str, pa.Schema] = {
    "ranking_signal": RANKING_SIGNAL,
    "composite_signal_daily": COMPOSITE_SIGNAL_DAILY,
}
SIGNAL_NAMES = ("ctr", "conversion", "freshness", "quality")


def _days(year_month: YearMonth) -> int:
    following = year_month.shifted(1)
    first = dt.date(year_month.year, year_month.month, 1)
    return (dt.date(following.year, following.month, 1) - first).days


def ranking_signal(year_month: YearMonth, rows: int, seed: int = 0) -> pa.Table:
    """`rows` distinct (signal_date, entity_id, signal_name) rows of one month."""
    rng = np.random.default_rng(seed)
    index = np.arange(rows, dtype=np.int64)
    days = _days(year_month)
    names = len(SIGNAL_NAMES)
    first = (dt.date(year_month.year, year_month.month, 1) - dt.date(1970, 1, 1)).days
    entity = index // (days * names)
    values = rng.random(rows)
    values[rng.random(rows) < 0.01] = np.nan  # some NULLs, below
    computed = np.int64(first) * 86_400_000_000 + rng.integers(0, 86_400_000_000, rows)
    return pa.table(
        {
            "year_month": pa.array(np.full(rows, str(year_month), dtype=object), pa.string()),
            "signal_date": pa.array((first + index % days).astype(np.int32), pa.date32()),
            "entity_id": pa.array(np.char.add("entity-", entity.astype(str)), pa.string()),
            "signal_name": pa.array(np.array(SIGNAL_NAMES)[(index // days) % names], pa.string()),
            "value": pa.array(values, pa.float64(), mask=np.isnan(values)),
            "rank": pa.array((index % 1000).astype(np.int32), pa.int32()),
            "computed_at": pa.array(computed, pa.timestamp("us", tz="UTC")),
        },
        schema=RANKING_SIGNAL,
    )


def composite_signal_daily(year_month: YearMonth, rows: int, seed: int = 0) -> pa.Table:
    """`rows` distinct (signal_date, entity_id) rows of one month."""
    rng = np.random.default_rng(seed + 1)
    index = np.arange(rows, dtype=np.int64)
    days = _days(year_month)
    first = (dt.date(year_month.year, year_month.month, 1) - dt.date(1970, 1, 1)).days
    computed = np.int64(first) * 86_400_000_000 + rng.integers(0, 86_400_000_000, rows)
    versions = np.array(["m-2026.1", "m-2026.2", ""], dtype=object)[index % 3]
    return pa.table(
        {
            "year_month": pa.array(np.full(rows, str(year_month), dtype=object), pa.string()),
            "signal_date": pa.array((first + index % days).astype(np.int32), pa.date32()),
            "entity_id": pa.array(np.char.add("entity-", (index // days).astype(str)), pa.string()),
            "composite_score": pa.array(rng.normal(size=rows), pa.float64()),
            "signal_count": pa.array((index % 7 + 1).astype(np.int32), pa.int32()),
            "model_version": pa.array(versions, pa.string(), mask=index % 11 == 0),
            "computed_at": pa.array(computed, pa.timestamp("us", tz="UTC")),
        },
        schema=COMPOSITE_SIGNAL_DAILY,
    )


GENERATORS = {"ranking_signal": ranking_signal, "composite_signal_daily": composite_signal_daily}


def write_delta_month(
    uri: str,
    year_month: YearMonth,
    data: pa.Table,
    storage_options: Mapping[str, str] | None = None,
) -> None:
    """Overwrites one month of a Delta table, as the ranking job does (replaceWhere)."""
    write_deltalake(
        uri,
        data,
        mode="overwrite",
        partition_by=["year_month"],
        predicate=f"year_month = '{year_month}'",
        storage_options=dict(storage_options) if storage_options else None,
    )
