"""Replicator write throughput versus a bare `adbc_ingest` of the same Arrow data, and the peak
memory of writing a large month.

    python -m benchmarks.bench_replicator [--rows 2000000] [--big-rows 10000000]
"""

from __future__ import annotations

import adbc_driver_postgresql.dbapi as adbc
import psycopg
from deltalake import DeltaTable

from benchmarks.common import (
    arguments,
    peak_rss_of,
    report,
    scratch_database,
    settings_for,
    tempdir,
    timed,
    write_delta,
)
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

MONTH = YearMonth.parse("2026-10")


def bare_ingest(dsn: str, root: str) -> float:
    """Baseline: the month read into memory, then one adbc_ingest into an empty table."""
    data = DeltaTable(f"{root}/ranking_signal").to_pyarrow_table()
    with psycopg.connect(dsn, autocommit=True) as conn:
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


def main() -> None:
    args = arguments(__doc__ or "", rows=2_000_000)
    with tempdir() as root, scratch_database(args.server) as dsn:
        write_delta(root, "ranking_signal", MONTH, args.rows)
        settings = settings_for(dsn, root)
        spec = settings.table("ranking_signal")
        baseline = bare_ingest(dsn, root)
        first, _ = timed(lambda: MonthWriter(settings).write_month(spec, MONTH))
        rewrite, _ = timed(lambda: MonthWriter(settings).write_month(spec, MONTH))
        report(
            f"replicator write, {args.rows:,} rows of ranking_signal",
            [
                (
                    "baseline adbc_ingest (bare)",
                    f"{baseline:6.2f} s  {args.rows / baseline:12,.0f} rows/s",
                ),
                ("replicator write, first", f"{first:6.2f} s  {args.rows / first:12,.0f} rows/s"),
                (
                    "replicator write, rewrite",
                    f"{rewrite:6.2f} s  {args.rows / rewrite:12,.0f} rows/s",
                ),
                ("ratio first/baseline throughput", f"{baseline / first:6.2f}  (target >= 0.70)"),
                ("ratio rewrite/baseline throughput", f"{baseline / rewrite:6.2f}"),
            ],
        )
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
