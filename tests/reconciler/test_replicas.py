"""Two replicas against one database, as the Kubernetes manifests deploy them: only the leader
compares and writes findings, the follower exports what the leader found; repairs, automatic
and manual, are counted from the audit table, the same on both; a month whose repairs keep
failing says so for as long as it stays broken, whatever the repair budget."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.daemon import Daemon
from replicator.config import AutoRepairSettings, Settings
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_delta import WriteMonth
from tests.months import month_key

MONTH = {"table": "ranking_signal", "year_month": "2026-10"}


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def corrupting_trigger(pg: psycopg.Connection[Any]) -> Iterator[None]:
    """Every write of the month is spoiled right after its COPY: repairs keep failing."""
    pg.execute(
        "CREATE FUNCTION ranking.spoil() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " UPDATE ranking.ranking_signal SET rank = -1 WHERE year_month = '2026-10'"
        " AND rank = 1; RETURN NULL; END $$"
    )
    pg.execute(
        "CREATE TRIGGER spoil AFTER INSERT ON ranking.ranking_signal"
        " FOR EACH STATEMENT EXECUTE FUNCTION ranking.spoil()"
    )
    try:
        yield
    finally:
        pg.execute("DROP TRIGGER IF EXISTS spoil ON ranking.ranking_signal")
        pg.execute("DROP FUNCTION IF EXISTS ranking.spoil()")


def test_the_follower_exports_the_leaders_findings_and_failing_repairs(
    settings: Settings,
    write_month: WriteMonth,
    make_daemon: Callable[..., Daemon],
    pg: psycopg.Connection[Any],
    cli_env: dict[str, str],
    corrupting_trigger: None,
) -> None:
    write_month("ranking_signal", "2026-10", rows=20)
    write_month("composite_signal_daily", "2026-10", rows=20)
    MonthWriter(settings).write_month(
        settings.table("composite_signal_daily"), YearMonth.parse("2026-10")
    )
    guard = AutoRepairSettings(enabled=True, grace_period_seconds=0, max_per_hour=2)
    leader, follower = make_daemon(guard), make_daemon(guard)
    leader.run_cycle()
    follower.run_cycle()
    assert leader.leader.held and not follower.leader.held
    for _ in range(4):  # two failed repairs spend the hourly budget; the month stays broken
        leader.run_cycle()
        follower.run_cycle()
    audit = pg.execute("SELECT trigger, outcome FROM ranking.repair_audit ORDER BY id").fetchall()
    assert audit == [("auto", "failed"), ("auto", "failed")]
    for daemon in (leader, follower):
        # missing: each repair's proof failed, so nothing it wrote was committed
        assert sample(daemon, "reconciler_month_status_code", **MONTH) == 3
        assert sample(daemon, "reconciler_month_repair_failures", **MONTH) == 2
        assert sample(daemon, "reconciler_month_last_check_duration_seconds", **MONTH) > 0  # type: ignore[operator]
        assert (
            sample(
                daemon,
                "reconciler_repairs_total",
                table="ranking_signal",
                trigger="auto",
                outcome="failed",
                mode="full",  # never synced: repaired in full, whose proof failed
            )
            == 2
        )
        assert (
            sample(
                daemon, "reconciler_repair_failures_total", table="ranking_signal", trigger="auto"
            )
            == 2
        )
    # Only the leader compared (and so only it wrote findings).
    assert sample(follower, "reconciler_checks_total", table="ranking_signal") == 0
    assert sample(leader, "reconciler_checks_total", table="ranking_signal") >= 1  # type: ignore[operator]
    composite = {"table": "composite_signal_daily", "year_month": "2026-10"}
    assert sample(follower, "reconciler_month_status_code", **composite) == 0

    # On-call fixes the cause and repairs by hand: counted as manual, on both replicas.
    pg.execute("DROP TRIGGER spoil ON ranking.ranking_signal")
    result = CliRunner().invoke(
        main, ["repair", "--year-month", "2026-10", "--table", "ranking_signal"]
    )
    assert result.exit_code == 0, result.output
    leader.run_cycle()
    follower.run_cycle()
    for daemon in (leader, follower):
        assert (
            sample(
                daemon,
                "reconciler_repairs_total",
                table="ranking_signal",
                trigger="manual",
                outcome="repaired",
                mode="full",  # never synced: nothing to repair narrowly
            )
            == 1
        )
        assert sample(daemon, "reconciler_month_repair_failures", **MONTH) == 0
        assert sample(daemon, "reconciler_month_status_code", **MONTH) == 0


def test_a_new_leader_compares_every_month_and_stale_findings_are_forgotten(
    settings: Settings,
    write_month: WriteMonth,
    make_daemon: Callable[..., Daemon],
    pg: psycopg.Connection[Any],
) -> None:
    write_month("ranking_signal", "2026-10", rows=20)
    write_month("composite_signal_daily", "2026-10", rows=20)
    for table in ("ranking_signal", "composite_signal_daily"):
        MonthWriter(settings).write_month(settings.table(table), YearMonth.parse("2026-10"))
    first, second = make_daemon(), make_daemon()
    first.run_cycle()
    second.run_cycle()
    assert second.months[month_key("ranking_signal", "2026-10")].status == "in_sync"
    # A finding of a month that exists nowhere (left over, say, by a deleted test month).
    pg.execute(
        "INSERT INTO ranking.month_check (table_name, year_month, status, checked_at)"
        " VALUES ('ranking_signal', '2026-09', 'orphaned', now())"
    )
    first.leader.release()
    first.stop()
    second.run_cycle()  # takes over
    assert second.leader.held
    assert sample(second, "reconciler_checks_total", table="ranking_signal") == 1
    assert pg.execute(
        "SELECT count(*) FROM ranking.month_check WHERE year_month = '2026-09'"
    ).fetchone() == (0,)


def test_the_dead_man_follows_the_leader_not_the_follower(
    settings: Settings, write_month: WriteMonth, make_daemon: Callable[..., Daemon]
) -> None:
    """A follower completes cycles while comparing nothing: it exports the leader's last
    complete cycle, so a leader that hangs shows on every replica."""
    write_month("ranking_signal", "2026-10", rows=10)
    write_month("composite_signal_daily", "2026-10", rows=10)
    leader, follower = make_daemon(), make_daemon()
    leader.run_cycle()
    follower.run_cycle()
    assert leader.leader.held and not follower.leader.held
    beat = leader.reconciler.last_cycle
    assert beat is not None
    assert follower.reconciler.last_cycle == beat  # the leader's own clock, read from Postgres
    follower.run_cycle()  # the leader "hangs": no cycle of its own
    follower.run_cycle()
    assert follower.reconciler.last_cycle == beat
    leader.run_cycle()
    follower.run_cycle()
    assert follower.reconciler.last_cycle > beat  # type: ignore[operator]


def test_a_reload_keeps_the_leader_lock_when_the_database_is_the_same(
    settings: Settings, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon()
    daemon.run_cycle()
    lock = daemon.leader
    assert lock.held
    daemon.reload()
    assert daemon.leader is lock and lock.held
