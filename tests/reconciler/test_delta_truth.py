"""Delta truth, round 2 (#20), beyond the maintenance matrix: rows of a DEFAULT partition, a
drift only a deep check sees standing across restarts, messages that name the version compared,
partition values that are not months, and a Delta version that does not exist."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from reconciler.check import Checker
from reconciler.cli import main
from reconciler.daemon import Daemon
from reconciler.repair import Repairer
from reconciler.sample import ranking_signal, write_delta_month
from replicator.config import DaemonSettings, Settings, with_overrides
from replicator.delta import DeltaTableReader
from replicator.errors import DeltaError
from replicator.month import Month
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.deltalog import DeltaLog
from tests.months import month_key

OCT, AUG = YearMonth.parse("2026-10"), YearMonth.parse("2026-08")


def statuses(cli_env: dict[str, str]) -> dict[tuple[str, str], str]:
    done = CliRunner().invoke(main, ["status", "--json"])
    return {(m["table"], m["year_month"]): m["status"] for m in json.loads(done.stdout)["months"]}


pytestmark = pytest.mark.both_layouts


def test_a_default_partition_is_found_each_cycle_and_warned_about(
    settings: Settings,
    write_month: Any,
    pg: psycopg.Connection[Any],
    make_daemon: Callable[..., Daemon],
    cli_env: dict[str, str],
    layout: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_month("ranking_signal", "2026-10", rows=20)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    if layout == "partitioned":
        pg.execute(
            "CREATE TABLE ranking.ranking_signal_default PARTITION OF ranking.ranking_signal"
            " DEFAULT"
        )
        # A table owner puts rows of a month Delta does not have into it.
        pg.execute(
            "INSERT INTO ranking.ranking_signal SELECT '2026-08', signal_date - 61, entity_id,"
            " signal_name, value, rank, computed_at FROM ranking.ranking_signal LIMIT 5"
        )
        from reconciler.migrate import migrate
        from replicator.postgres import Database

        migrate(Database.for_settings(settings), settings.tables)
        assert "has a DEFAULT partition" in caplog.text
    else:
        pg.execute(
            "INSERT INTO ranking.ranking_signal SELECT '2026-08', signal_date - 61, entity_id,"
            " signal_name, value, rank, computed_at FROM ranking.ranking_signal LIMIT 5"
        )
    daemon = make_daemon()
    daemon.run_cycle()
    assert daemon.months[month_key("ranking_signal", "2026-08")].status == "orphaned"
    assert daemon.months[month_key("ranking_signal", "2026-10")].status == "in_sync"
    check = Checker.for_settings(settings).check(Month.of(settings.table("ranking_signal"), AUG))
    assert check.status == "orphaned"
    assert statuses(cli_env)[("ranking_signal", "2026-08")] == "orphaned"


def test_a_drift_only_a_deep_check_sees_stands_across_restarts_until_repaired(
    settings: Settings,
    delta_root: str,
    pg: psycopg.Connection[Any],
    cli_env: dict[str, str],
) -> None:
    spec = settings.table("ranking_signal")
    uri = settings.table_uri(spec)
    write_delta_month(uri, OCT, ranking_signal(OCT, 200, seed=1))
    log = DeltaLog(uri)
    assert log.delete_with_deletion_vectors("2026-10", lambda t: pc.less(t.column("rank"), 10))
    MonthWriter(settings).write_month(spec, OCT)  # 190 rows
    month = Month.of(spec, OCT)
    checker = Checker.for_settings(settings)
    # An un-delete that claims no data change shows in the log's counts already, and its
    # message names the version compared and what it holds.
    log.undelete_claiming_no_change("2026-10")
    latest = DeltaTableReader(spec, uri, {}).version
    undeleted = checker.check(month)
    assert undeleted.status == "drift"
    assert f"Delta version {latest} has 200, Postgres has 190" in undeleted.reason
    write_delta_month(uri, OCT, ranking_signal(OCT, 200, seed=1))
    assert log.delete_with_deletion_vectors("2026-10", lambda t: pc.less(t.column("rank"), 10))
    MonthWriter(settings).write_month(spec, OCT)
    # Other rows hidden, as many: neither the files nor the counts can tell; the rows can.
    log.move_deletion_vectors_claiming_no_change("2026-10")
    assert checker.check(month).status == "in_sync"  # what metadata cannot see
    deep = checker.check(month, deep=True)
    assert deep.status == "drift" and "row hashes differ" in deep.reason
    proving = with_overrides(
        settings,
        daemon=DaemonSettings(
            interval_seconds=0.1, metrics_addr="127.0.0.1:0", deep_check_period_seconds=0.001
        ),
    )

    def cycle() -> str:
        daemon = Daemon(lambda: proving)
        try:
            daemon.run_cycle()
            return str(daemon.months[month_key("ranking_signal", "2026-10")].status)
        finally:
            daemon.stop()
            daemon.leader.release()

    assert cycle() == "drift"  # compared, then proved in the same cycle
    quiet = with_overrides(proving, daemon={"deep_check_period_seconds": 86400.0})
    restarted = Daemon(lambda: quiet)  # its first cycle is a plain check
    try:
        restarted.run_cycle()
        standing = restarted.months[month_key("ranking_signal", "2026-10")]
        assert standing.status == "drift" and "found by a deep check" in standing.record.reason
    finally:
        restarted.stop()
        restarted.leader.release()
    assert checker.check(month).status == "drift"  # a plain check keeps it too
    assert statuses(cli_env)[("ranking_signal", "2026-10")] == "drift"
    repaired = Repairer.for_settings(settings, actor="test").repair(month)
    assert repaired.outcome == "repaired"
    assert checker.check(month).status == "in_sync"


def test_partition_values_that_are_not_months_are_warned_about_and_exported(
    settings: Settings, delta_root: str, make_daemon: Callable[..., Daemon]
) -> None:
    from deltalake import write_deltalake

    spec = settings.table("ranking_signal")
    uri = settings.table_uri(spec)
    write_delta_month(uri, OCT, ranking_signal(OCT, 10))
    odd = ranking_signal(OCT, 3, seed=4)
    odd = odd.set_column(
        0,
        "year_month",
        pc.cast(
            pc.binary_join_element_wise(odd.column("year_month"), "x", ""), odd.schema.field(0).type
        ),
    )
    write_deltalake(uri, odd, mode="append", partition_by=["year_month"])
    daemon = make_daemon()
    daemon.run_cycle()
    value = daemon.metrics.registry.get_sample_value(
        "reconciler_delta_invalid_partitions", {"table": "ranking_signal"}
    )
    assert value == 1


def test_a_delta_version_that_does_not_exist_says_so(settings: Settings, delta_root: str) -> None:
    spec = settings.table("ranking_signal")
    uri = settings.table_uri(spec)
    write_delta_month(uri, OCT, ranking_signal(OCT, 10))
    with pytest.raises(DeltaError) as refused:
        DeltaTableReader(spec, uri, {}, version=99)
    assert "Delta version 99 does not exist (the latest is 0)" in str(refused.value)
    assert "Kernel error" not in str(refused.value)
