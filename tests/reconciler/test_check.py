"""Statuses of `reconciler check` and the command lines of check and diff."""

from __future__ import annotations

import json
from typing import Any

import deltalake
import psycopg
import pytest
from click.testing import CliRunner

from reconciler.check import Checker
from reconciler.cli import main
from replicator.config import Settings
from replicator.month import Month
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_db import LAYOUTS, SilentServer
from tests.fix_delta import WriteMonth

pytestmark = LAYOUTS  # every check runs on both table layouts

OCT = YearMonth.parse("2026-10")


def check(settings: Settings, table: str = "ranking_signal", deep: bool = False) -> Any:
    return Checker.for_settings(settings).check(Month.of(settings.table(table), OCT), deep=deep)


def replicate(settings: Settings, table: str = "ranking_signal", **kwargs: Any) -> None:
    MonthWriter(settings).write_month(settings.table(table), OCT, **kwargs)


class TestStatuses:
    def test_in_sync_then_lagging_after_a_new_delta_version(
        self, settings: Settings, write_month: WriteMonth
    ) -> None:
        write_month("ranking_signal", "2026-10", rows=50, seed=1)
        replicate(settings)
        first = check(settings)
        assert first.status == "in_sync", first.reason
        write_month("ranking_signal", "2026-09", rows=5)  # another month: still in sync
        result = check(settings)
        assert (result.status, result.delta_version, result.synced_version) == ("in_sync", 1, 0)
        write_month("ranking_signal", "2026-10", rows=60, seed=2)
        result = check(settings)
        assert (result.status, result.delta_version, result.synced_version) == ("lagging", 2, 0)
        assert result.lag_seconds > 0
        assert result.postgres_rows == result.delta_rows == 50  # compared with version 0

    def test_missing_when_never_synced(self, settings: Settings, write_month: WriteMonth) -> None:
        write_month("ranking_signal", "2026-10", rows=5)
        assert check(settings).status == "missing"

    def test_orphaned_when_delta_lost_the_month(
        self, settings: Settings, write_month: WriteMonth
    ) -> None:
        write_month("ranking_signal", "2026-10", rows=5)
        replicate(settings)
        deltalake.DeltaTable(settings.table_uri(settings.table("ranking_signal"))).delete(
            "year_month = '2026-10'"
        )
        assert check(settings).status == "orphaned"

    def test_rows_without_a_sync_record_are_drift(
        self, settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
    ) -> None:
        write_month("ranking_signal", "2026-10", rows=5)
        replicate(settings)
        pg.execute("DELETE FROM ranking.signal_sync_state")
        result = check(settings)
        assert result.status == "drift" and "without a sync record" in result.reason

    def test_replication_in_flight_is_lagging_not_drift(
        self, settings: Settings, write_month: WriteMonth, pg_dsn: str
    ) -> None:
        write_month("ranking_signal", "2026-10", rows=5)
        replicate(settings)
        with psycopg.connect(pg_dsn) as writer:
            writer.execute(
                "SELECT pg_advisory_xact_lock(hashtext('ranking.ranking_signal'), %s)",
                (OCT.lock_key,),
            )
            writer.execute("DELETE FROM ranking.ranking_signal WHERE year_month = '2026-10'")
            result = check(settings)
            assert (result.status, result.replication_in_flight) == ("lagging", True)
            writer.rollback()
        assert check(settings).status == "in_sync"

    def test_a_vacuumed_synced_version_falls_back_to_the_recorded_digest(
        self, settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
    ) -> None:
        write_month("ranking_signal", "2026-10", rows=5, seed=1)
        replicate(settings)
        write_month("ranking_signal", "2026-10", rows=6, seed=2)
        table = deltalake.DeltaTable(settings.table_uri(settings.table("ranking_signal")))
        table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
        # The digest recorded at sync still proves what Postgres holds: Delta moved on.
        assert check(settings).status == "lagging"
        deep = check(settings, deep=True)  # the files of version 0 are gone: nothing to re-read
        assert (deep.status, deep.delta_digest_source) == ("lagging", "recorded")
        pg.execute("DELETE FROM ranking.ranking_signal WHERE rank = 1")
        assert check(settings, deep=True).status == "drift"

    def test_recorded_and_recomputed_digests_agree(
        self, settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
    ) -> None:
        write_month("ranking_signal", "2026-10", rows=300, seed=4)
        replicate(settings)
        fast, deep = check(settings), check(settings, deep=True)
        assert (fast.delta_digest_source, deep.delta_digest_source) == ("recorded", "computed")
        assert fast.delta_digest == deep.delta_digest == deep.postgres_digest
        pg.execute("UPDATE ranking.signal_sync_state SET content_digest = NULL")
        assert check(settings).delta_digest_source == "computed"
        pg.execute("UPDATE ranking.ranking_signal SET value = -value WHERE rank = 7")
        assert check(settings).status == check(settings, deep=True).status == "drift"

    def test_a_digest_of_the_previous_contract_is_recomputed_and_re_anchored(
        self, settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
    ) -> None:
        """After an upgrade from rh1 (a NULL boolean was f) the recorded digests are of another
        contract: never compared, recomputed from both sides, then re-anchored."""
        write_month("ranking_signal", "2026-10", rows=40)
        replicate(settings)
        pg.execute(
            "UPDATE ranking.signal_sync_state SET content_digest ="
            " replace(content_digest, 'rh2:', 'rh1:')"
        )
        checker = Checker.for_settings(settings)
        result = checker.examine(Month.of(settings.table("ranking_signal"), OCT))
        assert result.status == "in_sync", result.record.reason
        assert result.record.delta_digest_source == "computed"
        assert result.reanchor is not None and result.reanchor.anchor.content_digest.startswith(
            "rh2:"
        )

    def test_month_in_neither_side_is_an_error(
        self, settings: Settings, write_month: WriteMonth
    ) -> None:
        write_month("ranking_signal", "2026-09", rows=5)
        result = check(settings)
        assert result.status == "error" and "neither" in result.reason

    def test_unreachable_delta_is_an_error(self, settings: Settings) -> None:
        result = check(settings)
        assert result.status == "error" and "no Delta table" in result.reason


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_check_and_diff_json_and_exit_codes(
    cli_env: dict[str, str],
    write_month: WriteMonth,
    settings: Settings,
    pg: psycopg.Connection[Any],
) -> None:
    write_month("ranking_signal", "2026-10", rows=30)
    write_month("composite_signal_daily", "2026-10", rows=20)
    replicate(settings)
    replicate(settings, "composite_signal_daily")
    result = run("check", "--year-month", "2026-10", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "in_sync"
    assert [t["table"] for t in document["tables"]] == ["ranking_signal", "composite_signal_daily"]
    for field in (
        "status",
        "delta_version",
        "synced_version",
        "delta_rows",
        "postgres_rows",
        "delta_digest",
        "postgres_digest",
    ):
        assert field in document["tables"][0]

    pg.execute(
        "UPDATE ranking.ranking_signal SET rank = rank + 1"
        " WHERE entity_id = 'entity-0' AND signal_date = '2026-10-02'"
    )
    result = run("check", "--year-month", "2026-10", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "drift"
    result = run("diff", "--year-month", "2026-10", "--table", "ranking_signal", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    (changed,) = document["changed"]
    assert changed["key"] == {
        "signal_date": "2026-10-02",
        "entity_id": "entity-0",
        "signal_name": "ctr",
    }
    assert list(changed["key"]) == ["signal_date", "entity_id", "signal_name"]  # key order
    assert changed["columns"] == ["rank"]
    assert changed["values"]["rank"]["postgres"] == changed["values"]["rank"]["delta"] + 1
    assert document["truncated"] is False
    human = run("diff", "--year-month", "2026-10", "--table", "ranking_signal")
    assert "1 changed" in human.stdout and "rank  Delta" in human.stdout

    pg.execute("DELETE FROM ranking.ranking_signal WHERE entity_id = 'entity-0'")
    limited = run(
        "diff", "--year-month", "2026-10", "--table", "ranking_signal", "--json", "--limit", "2"
    )
    document = json.loads(limited.stdout)
    assert document["truncated"] is True
    assert len(document["only_in_delta"]) + len(document["changed"]) == 2
    assert document["totals"]["only_in_delta"] + document["totals"]["changed"] > 2


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--year-month", "2026-13"],
        ["check", "--year-month", "2026-1"],
        ["diff", "--year-month", "../x", "--table", "ranking_signal"],
        ["diff", "--year-month", "2026-10"],
        ["diff", "--year-month", "2026-10", "--table", "nope"],
        ["diff", "--year-month", "2026-10", "--table", "ranking_signal", "--limit", "0"],
        ["check", "--year-month", "2026-10", "--table", "x;drop"],
    ],
)
def test_bad_arguments_exit_2_before_connecting(
    args: list[str], silent_server: SilentServer
) -> None:
    result = CliRunner().invoke(main, [*args, "--dsn", silent_server.dsn()])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert silent_server.accepted == []
