"""Digests on every core, proven harmless: the same bits whatever the parallelism of either
side (a property test over month sizes, batch sizes and worker counts); Postgres's digest query
really runs in parallel when allowed; and the daemon's limits (statement_timeout, pacing) act
and are exported."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from reconciler.check import Checker
from reconciler.daemon import Daemon
from reconciler.sides import DeltaSide, PostgresSide, QueryLimits
from replicator.config import DigestSettings, Settings, with_overrides
from replicator.delta import DeltaTableReader
from replicator.month import Month
from replicator.postgres import Database, Session
from replicator.schema import postgres_columns, reconcile_schemas
from replicator.secrets import Dsn
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_db import LAYOUTS
from tests.fix_delta import WriteMonth

pytestmark = LAYOUTS
OCT = YearMonth.parse("2026-10")
# Make the planner choose a parallel plan for any size of month, so that parallelism acts.
EAGER = ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0")


def sides(
    settings: Settings, conn: Session, batch_rows: int
) -> tuple[Callable[[int], DeltaSide], Callable[[int], PostgresSide]]:
    spec = settings.table("ranking_signal")
    month = Month.of(spec, OCT)
    reader = DeltaTableReader(spec, settings.table_uri(spec), {})
    schema = reconcile_schemas(spec, reader.columns(), postgres_columns(conn, spec))

    def delta(workers: int) -> DeltaSide:
        return DeltaSide(reader, schema, month, batch_rows, workers=workers)

    def postgres(parallelism: int) -> PostgresSide:
        return PostgresSide(conn, schema, month, limits=QueryLimits(parallelism))

    return delta, postgres


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.integers(min_value=0, max_value=6000),
    seed=st.integers(min_value=0, max_value=1000),
    batch_rows=st.sampled_from([7, 100, 4096]),
    workers=st.integers(min_value=2, max_value=6),
    parallelism=st.integers(min_value=2, max_value=4),
)
def test_digests_are_identical_whatever_the_parallelism(
    settings: Settings,
    write_month: WriteMonth,
    pg_dsn: str,
    rows: int,
    seed: int,
    batch_rows: int,
    workers: int,
    parallelism: int,
) -> None:
    write_month("ranking_signal", "2026-10", rows=rows, seed=seed)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT, allow_empty=True)
    with Database(Dsn(pg_dsn)).session() as conn:
        delta, postgres = sides(settings, conn, batch_rows)
        for setting in EAGER:
            conn.execute(f"SET {setting}")
        serial = delta(1).digest()
        assert delta(workers).digest() == serial
        assert postgres(1).digest() == serial
        assert postgres(parallelism).digest() == serial


def test_the_postgres_digest_runs_in_parallel_when_allowed(
    settings: Settings, write_month: WriteMonth, pg_dsn: str
) -> None:
    write_month("ranking_signal", "2026-10", rows=20_000)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    with Database(Dsn(pg_dsn)).session() as conn:
        _, postgres = sides(settings, conn, 4096)
        for setting in EAGER:
            conn.execute(f"SET {setting}")
        conn.commit()
        launched = []
        for parallelism in (1, 3):
            side = postgres(parallelism)
            side.limits.apply(conn)
            explained = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(side.digest_query())
            (document,) = conn.fetchone(explained)  # type: ignore[misc]
            plan = json.dumps(document)
            launched.append(sum(map(int, re.findall(r'"Workers Launched": (\d+)', plan))))
            conn.rollback()
        assert launched[0] == 0 and launched[1] >= 1, launched


def test_a_digest_past_its_statement_timeout_is_an_error_not_a_hang(
    settings: Settings, write_month: WriteMonth
) -> None:
    write_month("ranking_signal", "2026-10", rows=200_000)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    hurried = with_overrides(settings, digest={"statement_timeout_seconds": 0.001})
    result = Checker.for_settings(hurried).check(
        Month.of(settings.table("ranking_signal"), OCT), deep=True
    )
    assert result.status == "error"
    assert "statement timeout" in result.reason


def test_pacing_and_digest_work_are_exported(
    settings: Settings, write_month: WriteMonth, make_daemon: Callable[..., Daemon]
) -> None:
    for month in ("2026-09", "2026-10"):
        write_month("ranking_signal", month, rows=30_000)
        write_month("composite_signal_daily", month, rows=1000)
    daemon = make_daemon()
    daemon.apply(
        with_overrides(
            daemon.settings, digest=DigestSettings(postgres_max_share=0.5, postgres_parallelism=1)
        )
    )
    for month in ("2026-09", "2026-10"):
        for table in ("ranking_signal", "composite_signal_daily"):
            MonthWriter(daemon.settings).write_month(
                daemon.settings.table(table), YearMonth.parse(month)
            )

    class Recorded(threading.Event):
        """The cycle's stop event, recording the pauses it is asked to wait."""

        waits: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout or 0.0)
            return super().wait(timeout)

    stop = Recorded()
    daemon.reconciler.run_cycle(stop)
    registry = daemon.metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    rows = value("reconciler_digest_rows_total", side="postgres")
    seconds = value("reconciler_digest_seconds_total", side="postgres")
    paused = value("reconciler_digest_paused_seconds_total")
    assert rows == 2 * 30_000 + 2 * 1000  # every month's Postgres side, once
    assert seconds > 0 and paused == pytest.approx(seconds, rel=0.01)
    assert sum(stop.waits) == pytest.approx(paused)  # and the daemon did wait that long
    assert len(stop.waits) == 4  # after each of the four comparisons
