"""A narrow repair against a full rewrite of the same month, as on-call runs them (the CLI, a
fresh process each), with the dead tuples each leaves on the plain layout.

    python -m benchmarks.bench_repair [--rows 2000000] [--big-rows 20000000] [--layout plain]

The month is replicated, then drifted as issue 21 describes: 10 rows changed, 5 deleted, 5
duplicated and 5 foreign rows inserted in Postgres (25 rows repaired: 20 deleted, 15
inserted). The narrow repair is `reconciler repair --mode narrow`; the full rewrite is
`replicator write --force` of the same month. Medians of three runs (one for the big month).
Autovacuum is off on the table, so dead tuples are what autovacuum would have to clean.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import psycopg

from benchmarks.common import (
    arguments,
    dead_tuples,
    report,
    scratch_database,
    settings_for,
    tempdir,
    write_delta,
)
from replicator.layout import Layout
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

MONTH = YearMonth.parse("2026-10")
BIN = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin"
TABLE = "ranking.ranking_signal"
OCTOBER = "year_month = '2026-10'"


def tamper(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        first = conn.execute(f"SELECT min(entity_id) FROM {TABLE} WHERE {OCTOBER}").fetchone()
        entity = first[0] if first else ""
        pick = f"{OCTOBER} AND entity_id = %s AND signal_name = 'ctr'"
        rows = conn.execute(
            f"SELECT ctid FROM {TABLE} WHERE {pick} ORDER BY signal_date LIMIT 25",
            (entity,),
        ).fetchall()
        tids = [r[0] for r in rows]
        conn.execute(f"UPDATE {TABLE} SET value = -1 WHERE ctid = ANY(%s)", (tids[0:10],))
        conn.execute(f"DELETE FROM {TABLE} WHERE ctid = ANY(%s)", (tids[10:15],))
        conn.execute(
            f"INSERT INTO {TABLE} SELECT * FROM {TABLE} WHERE ctid = ANY(%s)",
            (tids[15:20],),
        )
        conn.execute(
            f"INSERT INTO {TABLE} SELECT year_month, signal_date, 'foreign-' || entity_id,"
            f" signal_name, value, rank, computed_at FROM {TABLE} WHERE ctid = ANY(%s)",
            (tids[20:25],),
        )


def cli(env: dict[str, str], *argv: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stdout


def measure(server: str, rows: int, layout: Layout, runs: int) -> None:
    with tempdir() as root, scratch_database(server, layout=layout) as dsn:
        write_delta(root, "ranking_signal", MONTH, rows)
        settings = settings_for(dsn, root)
        MonthWriter(settings).write_month(settings.table("ranking_signal"), MONTH)
        if layout is Layout.PLAIN:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"ALTER TABLE {TABLE} SET (autovacuum_enabled = off)")
        env = {**os.environ, "POSTGRES_DSN": dsn, "SIGNALS_DELTA_ROOT": root}
        month = ["--year-month", str(MONTH), "--table", "ranking_signal"]
        narrow, full, narrow_dead, full_dead = [], [], [], []
        changed = 0
        for _ in range(runs):
            tamper(dsn)
            before = dead_tuples(dsn)
            seconds, out = cli(
                env, str(BIN / "reconciler"), "repair", *month, "--mode", "narrow", "--json"
            )
            (table,) = json.loads(out)["tables"]
            assert table["mode"] == "narrow", table
            changed = table["rows_deleted"] + table["rows_inserted"]
            narrow.append(seconds)
            narrow_dead.append(dead_tuples(dsn) - before)
            tamper(dsn)
            before = dead_tuples(dsn)
            seconds, _ = cli(env, str(BIN / "replicator"), "write", *month, "--force")
            full.append(seconds)
            full_dead.append(dead_tuples(dsn) - before)
        n, f = statistics.median(narrow), statistics.median(full)
        target = 0.4 if rows <= 5_000_000 else 0.15
        plain = layout is Layout.PLAIN
        report(
            f"repair of {rows:,} rows with 25 differing, {layout} layout (median of {runs})",
            [
                ("full rewrite (replicator write --force)", f"{f:7.2f} s"),
                ("narrow repair (reconciler repair --mode narrow)", f"{n:7.2f} s"),
                ("narrow / full", f"{n / f:7.2f}  (target <= {target})"),
                ("rows deleted + inserted by the narrow repair", f"{changed:7,}"),
                (
                    "dead tuples added, narrow",
                    f"{statistics.median(narrow_dead):7,.0f}"
                    + (f"  (target <= {2 * changed})" if plain else "  (the partition's)"),
                ),
                ("dead tuples added, full rewrite", f"{statistics.median(full_dead):12,.0f}"),
            ],
        )


def main() -> None:
    args = arguments(__doc__ or "", rows=2_000_000)
    layout = Layout(args.layout) if args.layout else Layout.PLAIN
    measure(args.server, args.rows, layout, runs=3)
    if args.big_rows:
        measure(args.server, args.big_rows, layout, runs=1)


if __name__ == "__main__":
    main()
