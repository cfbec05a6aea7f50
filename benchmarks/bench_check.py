"""`reconciler check` and `diff` against reladiff's hashdiff and against reading the month out.

    python -m benchmarks.bench_check [--rows 2000000] [--big-rows 10000000]

All in one run on one month of `ranking_signal`:
  * COPY (the month) TO STDOUT, read to the end: the cost of reading the month out once;
  * `reconciler check` end to end (Delta and Postgres digests), cold;
  * reladiff hashdiff of the same rows held in two Postgres tables;
  * `reconciler diff` and reladiff finding 10 changed rows;
  * peak memory of `check` on a `--big-rows` month.

Each time is the median of three runs (the machine's cores are shared and noisy).
"""

from __future__ import annotations

import time

import psycopg
import reladiff

from benchmarks.common import (
    arguments,
    median_of,
    peak_rss_of,
    report,
    scratch_database,
    settings_for,
    tempdir,
    write_delta,
)
from reconciler.check import Checker
from reconciler.diff import diff_month
from replicator.month import Month
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

MONTH = YearMonth.parse("2026-10")
RUNS = 3
VALUES = ("signal_date", "entity_id", "signal_name", "value", "rank", "computed_at")


def copy_out(dsn: str) -> float:
    started = time.perf_counter()
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY (SELECT * FROM ranking.ranking_signal WHERE year_month = '2026-10') TO STDOUT"
        ) as copy,
    ):
        for _ in copy:
            pass
    return time.perf_counter() - started


def reladiff_run(dsn: str) -> int:
    """hashdiff of ranking.rs_a against ranking.rs_b; returns the differences found."""
    # sqeleton wants a URI: the scratch database is on the same server as the DSN.
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    uri = (
        f"postgresql://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:"
        f"{info.get('port', 5432)}/{info['dbname']}"
    )
    table_a = reladiff.connect_to_table(uri, ("ranking", "rs_a"), "id", extra_columns=VALUES)
    table_b = reladiff.connect_to_table(uri, ("ranking", "rs_b"), "id", extra_columns=VALUES)
    differences = list(
        reladiff.diff_tables(table_a, table_b, algorithm=reladiff.Algorithm.HASHDIFF)
    )
    return len(differences)


def main() -> None:
    args = arguments(__doc__ or "", rows=2_000_000)
    with tempdir() as root, scratch_database(args.server) as dsn:
        write_delta(root, "ranking_signal", MONTH, args.rows)
        settings = settings_for(dsn, root)
        spec = settings.table("ranking_signal")
        MonthWriter(settings).write_month(spec, MONTH)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # reladiff cannot key on a date: its tables get an integer key, the same row
            # numbered the same in both, with a primary key index for its range queries.
            for name in ("rs_a", "rs_b"):
                conn.execute(
                    f"CREATE TABLE ranking.{name} AS SELECT row_number() OVER"
                    " (ORDER BY signal_date, entity_id, signal_name) AS id, *"
                    " FROM ranking.ranking_signal WHERE year_month = '2026-10'"
                )
                conn.execute(f"ALTER TABLE ranking.{name} ADD PRIMARY KEY (id)")
            conn.execute("VACUUM ANALYZE ranking.ranking_signal")
            conn.execute("VACUUM ANALYZE ranking.rs_a")
            conn.execute("VACUUM ANALYZE ranking.rs_b")
        copy_seconds = min(copy_out(dsn) for _ in range(2))
        checker = Checker.for_settings(settings)
        checker.check(
            Month.of(spec, YearMonth.parse("2026-09"))
        )  # connection and hash self-test warm-up
        check_seconds, result = median_of(RUNS, lambda: checker.check(Month.of(spec, MONTH)))
        assert (result.status, result.delta_digest_source) == ("in_sync", "recorded")
        deep_seconds, deep = median_of(
            RUNS, lambda: checker.check(Month.of(spec, MONTH), deep=True)
        )
        assert (deep.status, deep.delta_digest_source) == ("in_sync", "computed")
        reladiff_seconds, found = median_of(RUNS, lambda: reladiff_run(dsn))
        assert found == 0
        report(
            f"check, {args.rows:,} rows of ranking_signal",
            [
                ("COPY (month) TO STDOUT", f"{copy_seconds:6.2f} s"),
                ("reladiff hashdiff (two Postgres tables)", f"{reladiff_seconds:6.2f} s"),
                ("reconciler check (digest recorded at sync)", f"{check_seconds:6.2f} s"),
                ("reconciler check --deep (Delta re-read)", f"{deep_seconds:6.2f} s"),
                (
                    "check vs reladiff",
                    f"{reladiff_seconds / check_seconds:6.2f}x faster  (target >= 3)",
                ),
                ("check --deep vs reladiff", f"{reladiff_seconds / deep_seconds:6.2f}x faster"),
                ("check / COPY", f"{check_seconds / copy_seconds:6.2f}  (target < 1)"),
                ("check --deep / COPY", f"{deep_seconds / copy_seconds:6.2f}"),
            ],
        )

        with psycopg.connect(dsn, autocommit=True) as conn:
            # The same 10 rows change in Postgres and in reladiff's second table.
            conn.execute(
                "CREATE TABLE ranking.changed AS SELECT signal_date, entity_id,"
                " signal_name FROM ranking.rs_a ORDER BY random() LIMIT 10"
            )
            for table in ("ranking.ranking_signal", "ranking.rs_b"):
                conn.execute(
                    f"UPDATE {table} t SET rank = coalesce(t.rank, 0) + 1"
                    " FROM ranking.changed c WHERE (t.signal_date, t.entity_id, t.signal_name)"
                    " = (c.signal_date, c.entity_id, c.signal_name)"
                )
        diff_seconds, diff = median_of(
            RUNS, lambda: diff_month(spec.name, MONTH, settings=settings, limit=100)
        )
        reladiff_diff_seconds, reladiff_found = median_of(RUNS, lambda: reladiff_run(dsn))
        report(
            "diff with 10 changed rows",
            [
                (
                    "reladiff hashdiff",
                    f"{reladiff_diff_seconds:6.2f} s  ({reladiff_found} rows: + and - per change)",
                ),
                (
                    "reconciler diff",
                    f"{diff_seconds:6.2f} s  ({diff.totals['changed']} changed keys)",
                ),
                (
                    "reconciler check --deep (same month)",
                    f"{deep_seconds:6.2f} s  (diff / deep {diff_seconds / deep_seconds:.2f},"
                    " target <= 1.5)",
                ),
                (
                    "speed-up vs reladiff",
                    f"{reladiff_diff_seconds / diff_seconds:6.2f}x  (target >= 5)",
                ),
            ],
        )

    if args.big_rows:
        with tempdir() as root, scratch_database(args.server) as dsn:
            write_delta(root, "ranking_signal", MONTH, args.big_rows)
            settings = settings_for(dsn, root)
            MonthWriter(settings).write_month(settings.table("ranking_signal"), MONTH)
            code = (
                "from benchmarks.common import settings_for\n"
                "from reconciler.check import Checker\n"
                "from replicator.month import Month\n"
                "from replicator.yearmonth import YearMonth\n"
                f"s = settings_for({dsn!r}, {root!r})\n"
                "m = Month.of(s.table('ranking_signal'), YearMonth(2026, 10))\n"
                "r = Checker.for_settings(s).check(m,"
                " deep=True)\n"
                "print(r.status, r.delta_rows, round(r.duration_seconds, 2))\n"
            )
            peak, out = peak_rss_of(code)
            status, rows, seconds = out.split()
            report(
                f"peak memory of check --deep, {int(rows):,} rows",
                [
                    ("status", status),
                    ("peak RSS", f"{peak:8.0f} MiB  (target < 512 MiB)"),
                    ("duration", f"{float(seconds):8.2f} s"),
                ],
            )


if __name__ == "__main__":
    main()
