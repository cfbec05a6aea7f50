"""Faults of the Postgres server itself, on an embedded server of its own that the tests kill
(`-m immediate`, i.e. SIGQUIT to the postmaster) and restart."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from reconciler.daemon import Daemon
from reconciler.sample import composite_signal_daily, ranking_signal, write_delta_month
from replicator.config import DaemonSettings, Settings, with_overrides
from replicator.errors import PostgresError
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_db import KillableServer
from tests.waiting import until

pytestmark = pytest.mark.slow
OCT = YearMonth.parse("2026-10")


def month_state(uri: str) -> tuple[Any, ...]:
    with psycopg.connect(uri) as conn:
        count = conn.execute("SELECT count(*) FROM ranking.ranking_signal").fetchone()
        state = conn.execute(
            "SELECT delta_version, row_count FROM ranking.signal_sync_state"
            " WHERE table_name = 'ranking_signal'"
        ).fetchone()
    return (count[0] if count else None, state)


def test_postgres_stopped_immediately_during_a_write(
    killable: KillableServer, killable_settings: Settings
) -> None:
    spec = killable_settings.table("ranking_signal")
    uri = killable_settings.table_uri(spec)
    write_delta_month(uri, OCT, ranking_signal(OCT, 1_000, seed=1))
    writer = MonthWriter(killable_settings)  # one writer object, reused after the restart
    writer.write_month(spec, OCT)
    write_delta_month(uri, OCT, ranking_signal(OCT, 400_000, seed=2))
    errors: list[BaseException] = []

    def write() -> None:
        try:
            writer.write_month(spec, OCT)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()

    def copying() -> bool:
        with psycopg.connect(killable.uri) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'COPY%'"
            ).fetchone()
        return bool(row and row[0])

    until(copying)
    killable.kill_immediately()
    thread.join(timeout=60)
    assert len(errors) == 1 and isinstance(errors[0], PostgresError)
    killable.restart()
    assert month_state(killable.uri) == (1_000, (0, 1_000))  # crash recovery: the old month
    writer.write_month(spec, OCT)  # no restart of the caller needed
    assert month_state(killable.uri) == (400_000, (1, 400_000))


def test_daemon_survives_postgres_down_without_false_drift(
    killable: KillableServer, killable_settings: Settings
) -> None:
    for spec, make in (
        (killable_settings.table("ranking_signal"), ranking_signal),
        (killable_settings.table("composite_signal_daily"), composite_signal_daily),
    ):
        write_delta_month(killable_settings.table_uri(spec), OCT, make(OCT, 500))
        MonthWriter(killable_settings).write_month(spec, OCT)
    configured = with_overrides(
        killable_settings,
        daemon=DaemonSettings(interval_seconds=0.5, leader_lease_seconds=5.0),
        postgres={"connect_timeout_seconds": 2},
    )
    daemon = Daemon(lambda: configured)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        until(lambda: daemon.reconciler.last_cycle is not None)
        assert {m.status for m in daemon.months.values()} == {"in_sync"}
        killable.kill_immediately()
        until(lambda: daemon.reconciler.sources_up["postgres"] is False, timeout=30)
        down_since = time.monotonic()
        statuses: set[str] = set()
        while time.monotonic() - down_since < 60:  # Postgres away for a minute
            statuses |= {m.status for m in daemon.months.values()}
            assert thread.is_alive()
            time.sleep(0.5)
        assert statuses == {"in_sync"}  # no false drift while Postgres is away
        assert (
            daemon.metrics.registry.get_sample_value("reconciler_source_up", {"source": "postgres"})
            == 0
        )
        killable.restart()
        back = time.monotonic()
        until(lambda: daemon.reconciler.sources_up["postgres"], timeout=30)
        # Recovery within a cycle or two (the back-off is at most four intervals).
        assert time.monotonic() - back < 10
        assert {m.status for m in daemon.months.values()} == {"in_sync"}
    finally:
        daemon.stop()
        thread.join(timeout=15)
        daemon.leader.release()
