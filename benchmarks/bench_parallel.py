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
        "from replicator.yearmonth import YearMonth\n"
        f"s = with_overrides(settings_for({dsn!r}, {root!r}), digest={{"
        f"'postgres_parallelism': {parallelism}, 'delta_parallelism': {parallelism}}})\n"
        "r = Checker.for_settings(s).check(s.table('ranking_signal'), YearMonth(2026, 10),"
        f" deep={deep})\n"
        "assert r.status == 'in_sync', r.reason\n"
        "print(json.dumps({'seconds': r.duration_seconds, 'rows': r.postgres_rows,"
        " 'postgres': r.work.get('postgres', [0, 0])[1],"
        " 'delta': r.work.get('delta', [0, 0])[1]}))\n"
    )
    peak, out = peak_rss_of(code)
    return {**json.loads(out), "peak": peak}


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
    rows: list[tuple[str, str]] = [
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
    report(f"{parser_args.rows:,}-row month of ranking_signal, {layout} layout", rows)


if __name__ == "__main__":
    main()
