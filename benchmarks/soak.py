"""Soak: the daemon (auto-repair on) over 36 months x 2 tables while faults are injected at
random; at the end every month must be in sync (deep check), no drift may have been reported
where none was injected, and memory, file descriptors and connections must stay flat.

    python -m benchmarks.soak [--minutes 5] [--rows 5000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable

import psutil
import psycopg

from benchmarks.common import DEFAULT_SERVER, report, scratch_database, settings_for, tempdir
from reconciler.check import Checker
from reconciler.daemon import Daemon
from reconciler.sample import GENERATORS, write_delta_month
from replicator.config import AutoRepairSettings, DaemonSettings, with_overrides
from replicator.errors import ReplicationError
from replicator.month import Month
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

MONTHS = 36


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default=os.environ.get("BENCH_DSN", DEFAULT_SERVER))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    now = time.gmtime()
    months = [YearMonth(now.tm_year, now.tm_mon).shifted(-i) for i in range(MONTHS)]
    with tempdir() as root, scratch_database(args.server, "reconciler_soak") as dsn:
        settings = with_overrides(
            settings_for(dsn, root),
            daemon=DaemonSettings(
                interval_seconds=1.0,
                retention_months=MONTHS,
                deep_check_period_seconds=120,
                leader_lease_seconds=10,
            ),
            auto_repair=AutoRepairSettings(
                enabled=True,
                grace_period_seconds=2,
                max_per_cycle=3,
                max_per_hour=10_000,
                circuit_breaker_months=6,
            ),
        )
        for spec in settings.tables:
            for month in months:
                write_delta_month(
                    settings.table_uri(spec),
                    month,
                    GENERATORS[spec.name](month, args.rows, seed=month.lock_key),
                )
                MonthWriter(settings).write_month(spec, month)
        daemon = Daemon(lambda: settings)
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        process = psutil.Process()
        injected_drift: set[tuple[str, str]] = set()
        false_drift: set[tuple[str, str]] = set()
        faults: dict[str, int] = {}
        samples: list[tuple[float, float, int, int]] = []

        def sample() -> None:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                ).fetchone()
            samples.append(
                (
                    time.monotonic(),
                    process.memory_info().rss / 2**20,
                    process.num_fds(),
                    int(row[0]) if row else 0,
                )
            )

        def watch_for_false_drift() -> None:
            for key, state in list(daemon.months.items()):
                if state.status == "drift" and key not in injected_drift:
                    false_drift.add(key)

        def fault() -> None:
            spec = rng.choice(settings.tables)
            month = rng.choice(months)
            kind = rng.choice(["drift", "rewrite", "rewrite_late", "terminate", "write_cut"])
            faults[kind] = faults.get(kind, 0) + 1
            with psycopg.connect(dsn, autocommit=True) as conn:
                if kind == "drift":
                    injected_drift.add((spec.name, str(month)))
                    table = f"ranking.{spec.postgres_table}"
                    conn.execute(
                        f"DELETE FROM {table} WHERE year_month = %s"
                        " AND ctid IN (SELECT ctid FROM "
                        + table
                        + " WHERE year_month = %s LIMIT 3)",
                        (str(month), str(month)),
                    )
                elif kind in ("rewrite", "rewrite_late"):
                    data = GENERATORS[spec.name](
                        month, args.rows + rng.randint(-50, 50), seed=rng.randint(0, 10**6)
                    )
                    write_delta_month(settings.table_uri(spec), month, data)
                    if kind == "rewrite":
                        MonthWriter(settings).write_month(spec, month)
                    else:
                        threading.Timer(
                            5.0, lambda: MonthWriter(settings).write_month(spec, month)
                        ).start()
                elif kind == "terminate":
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name LIKE 'reconciler%'"
                        " AND datname = current_database()"
                    )
                else:
                    writer = threading.Thread(
                        target=lambda: _quietly(
                            lambda: MonthWriter(settings).write_month(spec, month, force=True)
                        )
                    )
                    writer.start()
                    time.sleep(0.05)
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'replicator'"
                        " AND datname = current_database()"
                    )
                    writer.join()

        deadline = time.monotonic() + args.minutes * 60
        sample()
        while time.monotonic() < deadline:
            fault()
            for _ in range(10):
                watch_for_false_drift()
                time.sleep(0.3)
            if len(samples) < 2 or time.monotonic() - samples[-1][0] > 20:
                sample()
        # Let the last late replications land, then everything must settle.
        time.sleep(6)
        for spec in settings.tables:
            for month in months:
                MonthWriter(settings).write_month(spec, month, force=True)
        settle = time.monotonic() + 120
        while time.monotonic() < settle and any(
            s.status != "in_sync" for s in daemon.months.values()
        ):
            watch_for_false_drift()
            time.sleep(1)
        sample()
        daemon.stop()
        thread.join(timeout=30)
        daemon.leader.release()
        checker = Checker.for_settings(settings)
        wrong = [
            (spec.name, str(m))
            for spec in settings.tables
            for m in months
            if checker.check(Month.of(spec, m), deep=True).status != "in_sync"
        ]
        first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
        report(
            f"soak, {args.minutes:g} min, {MONTHS} months x 2 tables of {args.rows:,} rows",
            [
                ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(faults.items()))),
                (
                    "months not in sync at the end (deep check)",
                    str(len(wrong)) + (f" {wrong}" if wrong else ""),
                ),
                (
                    "false drift reported",
                    str(len(false_drift)) + (f" {sorted(false_drift)}" if false_drift else ""),
                ),
                ("RSS MiB (after warm-up -> end)", f"{first[1]:.0f} -> {last[1]:.0f}"),
                ("open fds (after warm-up -> end)", f"{first[2]} -> {last[2]}"),
                ("Postgres connections (after warm-up -> end)", f"{first[3]} -> {last[3]}"),
            ],
        )


def _quietly(action: Callable[[], object]) -> None:
    """A write that the soak cuts on purpose: its failure is expected (and recorded)."""
    with contextlib.suppress(ReplicationError):
        action()


if __name__ == "__main__":
    main()
