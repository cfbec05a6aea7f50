"""Replicator write throughput versus a bare `adbc_ingest` of the same Arrow data, in both
table layouts, the dead tuples ten rewrites leave, and the peak memory of writing a large month.

    python -m benchmarks.bench_replicator [--rows 2000000] [--big-rows 10000000]

The baseline ingests the month, read into memory first, into an empty table with the indexes
the layout gives a month: the year_month index of the plain table, none for a partition.
Autovacuum is off on the plain table, so its dead tuples are what autovacuum would have to
clean; the partitioned table's partitions are dropped whole.
"""

from __future__ import annotations

import argparse

import adbc_driver_postgresql.dbapi as adbc
import psycopg
from deltalake import DeltaTable

from benchmarks.common import (
    arguments,
    dead_tuples,
    peak_rss_of,
    report,
    scratch_database,
    settings_for,
    tempdir,
    timed,
    write_delta,
)
from replicator.layout import Layout
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

MONTH = YearMonth.parse("2026-10")


def bare_ingest(dsn: str, root: str) -> float:
    """Baseline: the month read into memory, then one adbc_ingest into an empty table."""
    data = DeltaTable(f"{root}/ranking_signal").to_pyarrow_table()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # INCLUDING ALL: the plain table's index; a partitioned parent has none to copy.
        conn.execute("CREATE TABLE ranking.bare (LIKE ranking.ranking_signal INCLUDING ALL)")
    conn_adbc = adbc.connect(dsn)
    try:
        with conn_adbc.cursor() as cur:
            seconds, _ = timed(
                lambda: cur.adbc_ingest("bare", data, mode="append", db_schema_name="ranking")
            )
        conn_adbc.commit()
    finally:
        conn_adbc.close()
    return seconds


REWRITES = 10


def main() -> None:
    args = arguments(__doc__ or "", rows=2_000_000)
    with tempdir() as root:
        write_delta(root, "ranking_signal", MONTH, args.rows)
        for layout in Layout:
            with scratch_database(args.server, layout=layout) as dsn:
                measure(dsn, root, layout, args.rows)
    big_month(args)


def measure(dsn: str, root: str, layout: Layout, rows: int) -> None:
    settings = settings_for(dsn, root)
    spec = settings.table("ranking_signal")
    if layout is Layout.PLAIN:  # (a partitioned table's partitions are new on every write)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE ranking.ranking_signal SET (autovacuum_enabled = off)")
    baseline = bare_ingest(dsn, root)
    first, _ = timed(lambda: MonthWriter(settings).write_month(spec, MONTH))
    rewrite, _ = timed(lambda: MonthWriter(settings).write_month(spec, MONTH))
    for _ in range(REWRITES - 1):
        MonthWriter(settings).write_month(spec, MONTH)
    dead = dead_tuples(dsn)
    report(
        f"replicator write, {rows:,} rows of ranking_signal, {layout} layout",
        [
            ("baseline adbc_ingest (bare)", f"{baseline:6.2f} s  {rows / baseline:12,.0f} rows/s"),
            ("replicator write, first", f"{first:6.2f} s  {rows / first:12,.0f} rows/s"),
            ("replicator write, rewrite", f"{rewrite:6.2f} s  {rows / rewrite:12,.0f} rows/s"),
            ("ratio first/baseline throughput", f"{baseline / first:6.2f}  (target >= 0.70)"),
            (
                "ratio rewrite/baseline throughput",
                f"{baseline / rewrite:6.2f}"
                + ("  (target >= 0.90)" if layout is Layout.PARTITIONED else ""),
            ),
            (
                f"dead tuples after {REWRITES} rewrites",
                f"{dead:12,}" + ("  (target 0)" if layout is Layout.PARTITIONED else ""),
            ),
        ],
    )


def big_month(args: argparse.Namespace) -> None:
    if args.big_rows:
        with tempdir() as root, scratch_database(args.server) as dsn:
            write_delta(root, "ranking_signal", MONTH, args.big_rows)
            code = (
                "from benchmarks.common import settings_for\n"
                "from replicator.writer import MonthWriter\n"
                "from replicator.yearmonth import YearMonth\n"
                f"s = settings_for({dsn!r}, {root!r})\n"
                "r = MonthWriter(s).write_month(s.table('ranking_signal'), YearMonth(2026, 10))\n"
                "print(r.rows, round(r.duration_seconds, 2))\n"
            )
            peak, out = peak_rss_of(code)
            rows, seconds = out.split()
            report(
                f"peak memory of one write, {int(rows):,} rows",
                [
                    ("peak RSS", f"{peak:8.0f} MiB  (target < 1024 MiB)"),
                    ("duration", f"{float(seconds):8.2f} s"),
                ],
            )


if __name__ == "__main__":
    main()
