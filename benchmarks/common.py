"""Shared set-up for the benchmark harnesses: a scratch database, Delta months, timing."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from reconciler.migrate import migrate
from reconciler.sample import GENERATORS, write_delta_month
from replicator.config import Settings, load_settings
from replicator.layout import Layout
from replicator.postgres import Database
from replicator.secrets import Dsn
from replicator.yearmonth import YearMonth

T = TypeVar("T")
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def arguments(description: str, rows: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--server",
        default=os.environ.get("BENCH_DSN", DEFAULT_SERVER),
        help="admin DSN of the Postgres server to benchmark against",
    )
    parser.add_argument("--rows", type=int, default=rows, help="rows in the benchmark month")
    parser.add_argument(
        "--layout",
        choices=[layout.value for layout in Layout],
        default=None,
        help="table layout (default: each harness's own; bench_replicator measures both)",
    )
    parser.add_argument(
        "--big-rows",
        type=int,
        default=10_000_000,
        help="rows of the month whose peak memory is measured (0: skip)",
    )
    return parser.parse_args()


@contextlib.contextmanager
def scratch_database(
    server: str, name: str = "reconciler_bench", layout: Layout | None = None
) -> Iterator[str]:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server, dbname=name)
    migrate(Database(Dsn(dsn)), layout=layout)
    try:
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def write_delta(
    root: str, table: str, month: YearMonth, rows: int, chunk: int = 2_000_000, seed: int = 0
) -> None:
    """Writes `rows` rows of one month in chunks (so a 10M-row month needs no 10M-row table)."""
    for start in range(0, rows, chunk):
        data = GENERATORS[table](month, min(chunk, rows - start), seed + start)
        if start:
            # Later chunks append with entity ids shifted so that keys stay unique.
            import pyarrow as pa
            import pyarrow.compute as pc
            from deltalake import write_deltalake

            ids = pc.binary_join_element_wise(data.column("entity_id"), pa.scalar(f"-c{start}"), "")
            data = data.set_column(data.schema.get_field_index("entity_id"), "entity_id", ids)
            write_deltalake(f"{root}/{table}", data, mode="append", partition_by=["year_month"])
        else:
            write_delta_month(f"{root}/{table}", month, data)


def settings_for(dsn: str, root: str) -> Settings:
    return load_settings(dsn=dsn, delta_root=root, environ={})


def timed(func: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def median_of(runs: int, func: Callable[[], T]) -> tuple[float, T]:
    """The median wall time of `runs` calls (this machine's cores are shared and noisy: one
    run can be off by a third either way), with the last call's result."""
    times, result = [], None
    for _ in range(runs):
        seconds, result = timed(func)
        times.append(seconds)
    assert result is not None
    return statistics.median(times), result


def peak_rss_of(code: str) -> tuple[float, str]:
    """Runs `code` in a fresh Python; returns (that process's own peak RSS in MiB, its stdout)."""
    # VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss into a forked child.
    probe = (
        "\nimport re as _re, sys as _s\n"
        "_hwm = _re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print('PEAK', _hwm, file=_s.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code + probe],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    peak_kib = next(
        int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK ")
    )
    return peak_kib / 1024.0, done.stdout


def tempdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="reconciler-bench-")


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


def dead_tuples(dsn: str, table: str = "ranking_signal") -> int:
    """Dead tuples of the table and its partitions, once the writers' statistics are flushed."""
    time.sleep(1.5)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(s.n_dead_tup), 0) FROM pg_stat_user_tables s"
            " WHERE s.relid = %s::regclass OR s.relid IN"
            " (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
            (f"ranking.{table}", f"ranking.{table}"),
        ).fetchone()
    return int(row[0]) if row else 0
