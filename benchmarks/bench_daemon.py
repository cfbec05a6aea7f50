"""Cost of a daemon cycle over 36 months x 2 tables: idle, and after one month changed.

    python -m benchmarks.bench_daemon [--rows 1000000] [--layout plain|partitioned]

Baseline: the first cycle (every month compared once, as after a start). Then an idle cycle
(nothing changed: metadata only), a cycle after one month was rewritten in Delta and replicated
(that month compared again), and a cycle after every month of every table was Z-ordered
(data-neutral commits: metadata only, no digest).
"""

from __future__ import annotations

import argparse
import time

import pyarrow as pa
from deltalake import DeltaTable

from benchmarks.common import arguments, report, scratch_database, settings_for, tempdir, timed
from reconciler.daemon import Daemon
from reconciler.sample import GENERATORS, write_delta_month
from replicator.config import DaemonSettings, with_overrides
from replicator.layout import Layout
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

MONTHS = 36


def main() -> None:
    args = arguments(__doc__ or "", rows=1_000_000)
    now = time.gmtime()
    months = [YearMonth(now.tm_year, now.tm_mon).shifted(-i) for i in range(MONTHS)]
    layouts = [Layout(args.layout)] if args.layout else list(Layout)
    for layout in layouts:
        measure(args, months, layout)


def measure(args: argparse.Namespace, months: list[YearMonth], layout: Layout) -> None:
    with tempdir() as root, scratch_database(args.server, layout=layout) as dsn:
        settings = with_overrides(
            settings_for(dsn, root), daemon=DaemonSettings(retention_months=MONTHS)
        )
        started = time.perf_counter()
        for spec in settings.tables:
            template = GENERATORS[spec.name](months[0], args.rows)
            for month in months:
                # The same rows relabelled per month: generating 72 months is not what we time.
                label = pa.array([str(month)] * template.num_rows, pa.string())
                data = template.set_column(0, template.schema.field(0), label)
                write_delta_month(settings.table_uri(spec), month, data)
                MonthWriter(settings).write_month(spec, month)
        setup = time.perf_counter() - started
        daemon = Daemon(lambda: settings)
        first, summary = timed(daemon.run_cycle)
        assert summary.checked == MONTHS * len(settings.tables), summary
        idle, idle_summary = timed(daemon.run_cycle)
        spec = settings.table("ranking_signal")
        write_delta_month(
            settings.table_uri(spec), months[3], GENERATORS[spec.name](months[3], args.rows, seed=9)
        )
        MonthWriter(settings).write_month(spec, months[3])
        changed, changed_summary = timed(daemon.run_cycle)
        for spec in settings.tables:
            DeltaTable(settings.table_uri(spec)).optimize.z_order(["entity_id"])
        optimized, optimized_summary = timed(daemon.run_cycle)
        settled, settled_summary = timed(daemon.run_cycle)
        report(
            f"daemon cycle, {MONTHS} months x {len(settings.tables)} tables of "
            f"{args.rows:,} rows, {layout} layout (set-up {setup:.0f} s)",
            [
                (
                    "first cycle (all months compared)",
                    f"{first:7.2f} s  ({summary.checked} comparisons)",
                ),
                (
                    "idle cycle (nothing changed)",
                    f"{idle:7.2f} s  ({idle_summary.checked} comparisons, target < 1 s)",
                ),
                (
                    "cycle after one month changed",
                    f"{changed:7.2f} s  ({changed_summary.checked} comparisons)",
                ),
                (
                    "cycle after Z-order of every month",
                    f"{optimized:7.2f} s  ({optimized_summary.checked} comparisons, target 0)",
                ),
                (
                    "idle cycle after that",
                    f"{settled:7.2f} s  ({settled_summary.checked} comparisons, target < 1 s)",
                ),
                ("idle / first", f"{idle / first:7.3f}"),
            ],
        )
        daemon.leader.release()


if __name__ == "__main__":
    main()
