"""`check` and `check --deep` of one big month with parallelism 1 and 2 on both sides.

    python -m benchmarks.bench_parallel [--rows 20000000] [--layout plain|partitioned]

Each run is a fresh process (its own peak RSS, from /proc), after one warm-up check so that
every run reads a warm page cache. Parallelism 1: one Postgres process per digest
(`digest.postgres_parallelism = 1`) and one hashing thread (`digest.delta_parallelism = 1`);
parallelism 2: two of each. The per-side seconds come from the check's own accounting (the
`reconciler_digest_seconds_total` counters), so the effect on each side shows apart from the
other: a deep check already runs its two sides at the same time, one core each.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

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
from replicator.config import available_cores
from replicator.layout import Layout
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

MONTH = YearMonth.parse("2026-10")


def run_check(dsn: str, root: str, parallelism: int, deep: bool) -> dict[str, float]:
    code = (
        "import json\n"
        "from benchmarks.common import settings_for\n"
        "from reconciler.check import Checker\n"
        "from replicator.config import with_overrides\n"
        "from replicator.month import Month\n"
        "from replicator.yearmonth import YearMonth\n"
        f"s = with_overrides(settings_for({dsn!r}, {root!r}), digest={{"
        f"'postgres_parallelism': {parallelism}, 'delta_parallelism': {parallelism}}})\n"
        "m = Month.of(s.table('ranking_signal'), YearMonth(2026, 10))\n"
        "r = Checker.for_settings(s).check(m,"
        f" deep={deep})\n"
        "assert r.status == 'in_sync', r.reason\n"
        "print(json.dumps({'seconds': r.duration_seconds, 'rows': r.postgres_rows,"
        " 'postgres': r.work.get('postgres', [0, 0])[1],"
        " 'delta': r.work.get('delta', [0, 0])[1]}))\n"
    )
    peak, out = peak_rss_of(code)
    return {**json.loads(out), "peak": peak}


def delta_alone(dsn: str, root: str, workers: int) -> float:
    """The Delta side's digest by itself, on `workers` threads (no Postgres work beside it)."""
    code = (
        "import time\n"
        "from benchmarks.common import settings_for\n"
        "from reconciler.sides import DeltaSide\n"
        "from replicator.delta import DeltaTableReader\n"
        "from replicator.schema import reconcile_schemas, postgres_columns\n"
        "from replicator.postgres import Database\n"
        "from replicator.month import Month\n"
        "from replicator.yearmonth import YearMonth\n"
        f"s = settings_for({dsn!r}, {root!r})\n"
        "spec = s.table('ranking_signal')\n"
        "reader = DeltaTableReader(spec, s.table_uri(spec), {})\n"
        "with Database.for_settings(s).connect() as conn:\n"
        "    schema = reconcile_schemas(spec, reader.columns(), postgres_columns(conn, spec))\n"
        "started = time.perf_counter()\n"
        f"DeltaSide(reader, schema, YearMonth(2026, 10), 131072, workers={workers}).digest()\n"
        "print(time.perf_counter() - started)\n"
    )
    return float(peak_rss_of(code)[1])


def bucket_split(dsn: str, parallelism: int) -> float:
    """The alternative to parallel query: `parallelism` connections sharing one snapshot, each
    digesting the rows whose hash falls in its share (each still reads the whole month)."""
    row = "hashtextextended(entity_id || signal_name || coalesce(value::text, ''), 0)"
    query = (
        f"SELECT count(*), sum(h) FROM (SELECT {row} AS h FROM ranking.ranking_signal"
        " WHERE year_month = '2026-10') s WHERE (h & %s) = %s"
    )
    with psycopg.connect(dsn) as lead:
        lead.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        (snapshot,) = lead.execute("SELECT pg_export_snapshot()").fetchone()  # type: ignore[misc]

        def part(share: int) -> None:
            with psycopg.connect(dsn) as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
                conn.execute(query, (parallelism - 1, share)).fetchone()

        started = time.perf_counter()
        with ThreadPoolExecutor(parallelism) as pool:
            list(pool.map(part, range(parallelism)))
        return time.perf_counter() - started


def parallel_query(dsn: str, parallelism: int) -> tuple[float, int]:
    """The same digest as one query under parallel query; (seconds, workers launched)."""
    row = "hashtextextended(entity_id || signal_name || coalesce(value::text, ''), 0)"
    with psycopg.connect(dsn) as conn:
        conn.execute(f"SET max_parallel_workers_per_gather = {parallelism - 1}")
        started = time.perf_counter()
        (plan,) = conn.execute(  # type: ignore[misc]
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*), sum(h) FROM (SELECT"
            f" {row} AS h FROM ranking.ranking_signal WHERE year_month = '2026-10') s"
        ).fetchone()
        seconds = time.perf_counter() - started
    launched = sum(map(int, re.findall(r'"Workers Launched": (\d+)', json.dumps(plan))))
    return seconds, launched


def main() -> None:
    parser_args = arguments(__doc__ or "", rows=20_000_000)
    layout = Layout(parser_args.layout or "plain")
    with tempdir() as root, scratch_database(parser_args.server, layout=layout) as dsn:
        setup, _ = timed(lambda: write_delta(root, "ranking_signal", MONTH, parser_args.rows))
        settings = settings_for(dsn, root)
        write, _ = timed(
            lambda: MonthWriter(settings).write_month(settings.table("ranking_signal"), MONTH)
        )
        run_check(dsn, root, 2, deep=True)  # warm-up: both sides read once
        runs = {(deep, p): run_check(dsn, root, p, deep) for deep in (False, True) for p in (1, 2)}
        alone = {p: delta_alone(dsn, root, p) for p in (1, 2)}
        split = {p: bucket_split(dsn, p) for p in (1, 2)}
        query = {p: parallel_query(dsn, p) for p in (1, 2)}
    rows: list[tuple[str, str]] = [
        ("host", f"{available_cores()} cores for this process"),
        ("set-up", f"Delta {setup:.0f} s, replicator write {write:.0f} s"),
    ]
    for deep, name in ((False, "check"), (True, "check --deep")):
        one, two = runs[deep, 1], runs[deep, 2]
        rows += [
            (
                f"{name}, parallelism 1",
                f"{one['seconds']:7.2f} s  peak {one['peak']:5.0f} MiB"
                f"  (Postgres {one['postgres']:.2f} s, Delta {one['delta']:.2f} s)",
            ),
            (
                f"{name}, parallelism 2",
                f"{two['seconds']:7.2f} s  peak {two['peak']:5.0f} MiB"
                f"  (Postgres {two['postgres']:.2f} s, Delta {two['delta']:.2f} s)",
            ),
            (
                f"{name}: speed-up",
                f"{one['seconds'] / two['seconds']:7.2f}x  (target >= 1.6; peak target < 512 MiB)",
            ),
        ]
        if deep:
            rows.append(
                (
                    "  per side, 1 -> 2",
                    f"Postgres {one['postgres'] / two['postgres']:.2f}x,"
                    f" Delta {one['delta'] / two['delta']:.2f}x",
                )
            )
        else:
            rows.append(
                (
                    "  Postgres rows/s at parallelism 2",
                    f"{two['rows'] / two['postgres']:12,.0f}",
                )
            )
    rows += [
        (
            "Delta digest alone, 1 -> 2 threads",
            f"{alone[1]:7.2f} s -> {alone[2]:.2f} s  ({alone[1] / alone[2]:.2f}x)",
        ),
        (
            "Postgres: parallel query, 1 -> 2 processes",
            f"{query[1][0]:7.2f} s -> {query[2][0]:.2f} s  ({query[1][0] / query[2][0]:.2f}x,"
            f" {query[2][1]} worker launched)",
        ),
        (
            "Postgres: bucket-range split, 1 -> 2 queries",
            f"{split[1]:7.2f} s -> {split[2]:.2f} s  ({split[1] / split[2]:.2f}x)",
        ),
    ]
    report(f"{parser_args.rows:,}-row month of ranking_signal, {layout} layout", rows)


if __name__ == "__main__":
    main()
