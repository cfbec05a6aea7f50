"""Two daemon processes against one database: one leader repairs; a killed or frozen leader is
replaced within its lease, and a frozen one never repairs after it wakes. A daemon killed in
the middle of a repair leaves the month atomic, and the next one repairs it once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from reconciler.sample import ranking_signal, write_delta_month
from replicator.config import Settings
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_daemon import DaemonProcess
from tests.fix_delta import WriteMonth
from tests.waiting import until

pytestmark = pytest.mark.slow
OCT = YearMonth.parse("2026-10")


def audit_actors(pg: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in pg.execute("SELECT actor FROM ranking.repair_audit ORDER BY id")]


def cycles_after(daemon: DaemonProcess, count: int) -> None:
    """Waits until the leader has completed `count` more cycles, as `daemon` exports them
    (a follower exports the leader's heartbeat)."""
    for _ in range(count):
        mark = time.time()
        until(
            lambda mark=mark: (
                (daemon.metric("reconciler_last_cycle_timestamp_seconds") or 0) > mark
            ),
            30,
            "another complete cycle",
        )


def test_leader_frozen_past_its_lease_is_replaced_and_never_repairs(
    daemons: Callable[[], DaemonProcess],
    settings: Settings,
    write_month: WriteMonth,
    pg: psycopg.Connection[Any],
) -> None:
    for table in ("ranking_signal", "composite_signal_daily"):
        write_month(table, "2026-10", rows=50)
        MonthWriter(settings).write_month(settings.table(table), OCT)
    first = daemons()
    until(first.leader, 30, "the first daemon to lead")
    second = daemons()
    until(lambda: second.metric("reconciler_leader") == 0.0, 30, "the second daemon to stand by")
    os.kill(first.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    until(second.leader, 30, "the second daemon to take over")
    assert time.monotonic() - frozen_at < 15  # about one lease plus a cycle
    pg.execute("DELETE FROM ranking.ranking_signal WHERE rank < 5")  # drift, while frozen
    os.kill(first.proc.pid, signal.SIGCONT)
    until(lambda: bool(audit_actors(pg)), 30, "a repair")
    until(lambda: first.metric("reconciler_leader") == 0.0, 30, "the woken daemon to step down")
    cycles_after(first, 2)  # two more complete cycles: a late repair would be in the audit
    actors = audit_actors(pg)
    assert actors and all(a.endswith(f":{second.proc.pid}") for a in actors), actors


def test_leader_killed_is_replaced(
    daemons: Callable[[], DaemonProcess], settings: Settings, write_month: WriteMonth
) -> None:
    for table in ("ranking_signal", "composite_signal_daily"):
        write_month(table, "2026-10", rows=10)
    first = daemons()
    until(first.leader, 30, "the first daemon to lead")
    second = daemons()
    until(lambda: second.metric("reconciler_leader") == 0.0, 30, "the second daemon to stand by")
    first.proc.kill()
    killed_at = time.monotonic()
    until(second.leader, 30, "the second daemon to take over")
    assert time.monotonic() - killed_at < 10


def test_daemon_killed_mid_repair_leaves_the_month_atomic_and_it_is_repaired_once(
    daemons: Callable[[], DaemonProcess],
    settings: Settings,
    write_month: WriteMonth,
    pg: psycopg.Connection[Any],
) -> None:
    write_month("composite_signal_daily", "2026-10", rows=10)
    MonthWriter(settings).write_month(settings.table("composite_signal_daily"), OCT)
    write_delta_month(
        settings.table_uri(settings.table("ranking_signal")), OCT, ranking_signal(OCT, 300_000)
    )  # never replicated: missing
    first = daemons()

    def copying() -> bool:
        row = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'COPY%'"
            " AND datname = current_database()"
        ).fetchone()
        return bool(row and row[0])

    until(copying, 60, "the repair's COPY")
    first.proc.kill()
    first.proc.wait(timeout=10)
    counts = pg.execute("SELECT count(*) FROM ranking.ranking_signal").fetchone()
    assert counts in ((0,), (300_000,))  # all or nothing
    assert audit_actors(pg) == [] or counts == (300_000,)
    second = daemons()
    until(
        lambda: (
            pg.execute(
                "SELECT count(*) FROM ranking.repair_audit WHERE outcome = 'repaired'"
            ).fetchone()
            == (1,)
        ),
        60,
        "the repair",
    )
    assert pg.execute("SELECT count(*) FROM ranking.ranking_signal").fetchone() == (300_000,)
    cycles_after(second, 2)
    outcomes = [row[0] for row in pg.execute("SELECT outcome FROM ranking.repair_audit")]
    assert outcomes == ["repaired"]  # repaired once
    assert second.proc.poll() is None
