"""Narrow repairs: only the rows that differ are deleted and inserted, in one proven transaction,
on both layouts; `--mode` chooses, refuses or falls back; races and faults leave the month
exactly as it was or exactly repaired."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo

import reconciler.narrow as narrow
from reconciler.check import Checker
from reconciler.cli import main
from reconciler.repair import Repairer
from reconciler.sample import ranking_signal, write_delta_month
from replicator.config import RepairMode, Settings, with_overrides
from replicator.contract import MonthDigest
from replicator.month import Month
from replicator.secrets import Dsn
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_db import LAYOUTS
from tests.fix_proxy import CommitSwallowingProxy
from tests.waiting import until

pytestmark = LAYOUTS
OCT = YearMonth.parse("2026-10")
ROWS = 1_000  # one row per rank (rank = index % 1000)
TABLE = "ranking.ranking_signal"


def month(settings: Settings) -> Month:
    return Month.of(settings.table("ranking_signal"), OCT)


def content(pg: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return sorted(
        pg.execute(
            f"SELECT signal_date, entity_id, signal_name, value, rank, computed_at FROM {TABLE}"
            " WHERE year_month = '2026-10'"
        ).fetchall(),
        key=repr,
    )


@pytest.fixture
def synced(settings: Settings, pg: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """October written to Delta and replicated; returns what Postgres held then."""
    uri = settings.table_uri(settings.table("ranking_signal"))
    write_delta_month(uri, OCT, ranking_signal(OCT, ROWS, seed=1))
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    return content(pg)


def tamper(pg: psycopg.Connection[Any]) -> None:
    """10 rows changed, 5 deleted, 5 duplicated, 5 foreign rows inserted (the benchmark's)."""
    october = "year_month = '2026-10'"
    pg.execute(f"UPDATE {TABLE} SET value = -1 WHERE {october} AND rank BETWEEN 0 AND 9")
    pg.execute(f"DELETE FROM {TABLE} WHERE {october} AND rank BETWEEN 10 AND 14")
    pg.execute(
        f"INSERT INTO {TABLE} SELECT * FROM {TABLE} WHERE {october} AND rank BETWEEN 15 AND 19"
    )
    pg.execute(
        f"INSERT INTO {TABLE} SELECT year_month, signal_date, 'foreign-' || entity_id,"
        f" signal_name, value, rank, computed_at FROM {TABLE} WHERE {october}"
        " AND rank BETWEEN 20 AND 24"
    )


def sync_run(pg: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = pg.execute(
        "SELECT run_id, delta_version, row_count, content_digest FROM ranking.signal_sync_state"
        " WHERE table_name = 'ranking_signal' AND year_month = '2026-10'"
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_narrow_repair_changes_only_the_rows_that_differ(
    settings: Settings, synced: list[tuple[Any, ...]], pg: psycopg.Connection[Any]
) -> None:
    tamper(pg)
    untouched = pg.execute(
        f"SELECT ctid FROM {TABLE} WHERE year_month = '2026-10' AND rank >= 100 ORDER BY ctid"
    ).fetchall()
    result = Repairer.for_settings(settings, actor="test").repair(month(settings))
    assert (result.outcome, result.mode, result.status_after) == ("repaired", "narrow", "in_sync")
    assert result.changes is not None
    assert result.summary == "repaired 25 rows (10 changed, 5 missing, 10 surplus)"
    assert (result.rows_deleted, result.rows_inserted) == (20, 15)
    assert content(pg) == synced  # exactly the Delta rows again
    # Rows that did not differ were not rewritten: they kept their place.
    kept = pg.execute(
        f"SELECT ctid FROM {TABLE} WHERE year_month = '2026-10' AND rank >= 100 ORDER BY ctid"
    ).fetchall()
    assert kept == untouched
    audit = pg.execute(
        "SELECT outcome, mode, rows_deleted, rows_inserted, run_id FROM ranking.repair_audit"
    ).fetchall()
    assert audit == [("repaired", "narrow", 20, 15, result.run_id)]
    run_id, version, rows, digest = sync_run(pg)
    assert (run_id, version, rows) == (result.run_id, 0, ROWS)
    checked = Checker.for_settings(settings).check(month(settings), deep=True)
    assert checked.status == "in_sync" and checked.postgres_digest == digest


def test_cli_output_json_and_dry_run(
    settings: Settings, synced: Any, pg: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    tamper(pg)
    args = ["repair", "--year-month", "2026-10", "--table", "ranking_signal"]
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would repair narrowly: 25 rows (10 changed, 5 missing, 10 surplus)" in dry.output
    assert pg.execute("SELECT count(*) FROM ranking.repair_audit").fetchone() == (0,)
    done = CliRunner().invoke(main, [*args, "--json"])
    assert done.exit_code == 0, done.output
    (table,) = json.loads(done.stdout)["tables"]
    assert (table["mode"], table["rows_deleted"], table["rows_inserted"]) == ("narrow", 20, 15)
    assert table["changes"] == {
        "deleted": 20,
        "inserted": 15,
        "changed": 10,
        "missing": 5,
        "surplus": 10,
    }
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "skipped" in again.output


def test_auto_is_full_when_many_rows_differ_and_narrow_refuses(
    settings: Settings, synced: Any, pg: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    pg.execute(f"UPDATE {TABLE} SET value = -2 WHERE year_month = '2026-10' AND rank < 200")
    args = ["repair", "--year-month", "2026-10", "--table", "ranking_signal"]
    refused = CliRunner().invoke(main, [*args, "--mode", "narrow"])
    assert refused.exit_code == 2, refused.output
    assert "a narrow repair is not possible" in refused.output
    assert "narrow_max_share" in refused.output
    assert pg.execute("SELECT count(*) FROM ranking.repair_audit").fetchone() == (0,)
    done = CliRunner().invoke(main, [*args, "--json"])
    assert done.exit_code == 0, done.output
    (table,) = json.loads(done.stdout)["tables"]
    assert (table["mode"], table["rows_inserted"]) == ("full", ROWS)
    assert content(pg) == synced


def test_a_proof_that_fails_rolls_back_then_auto_repairs_in_full(
    settings: Settings, synced: Any, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tamper(pg)
    tampered = content(pg)

    def wrong(*_: MonthDigest) -> MonthDigest:
        return MonthDigest.from_pairs(1, [(0, 1, 1)])

    monkeypatch.setattr(narrow, "_combine", wrong)
    repairer = Repairer.for_settings(settings, actor="test")
    failed = repairer.repair(month(settings), mode=RepairMode.NARROW)
    assert (failed.outcome, failed.mode) == ("failed", "narrow")
    assert "rolled back" in failed.message
    assert content(pg) == tampered  # nothing of it committed
    repaired = repairer.repair(month(settings))
    assert (repaired.outcome, repaired.mode) == ("repaired", "full")
    assert content(pg) == synced


def hold_the_repair(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Pauses a narrow repair once it found the rows (under the lock, in its transaction)."""
    found, resume = threading.Event(), threading.Event()
    original = narrow.NarrowRepair._find

    def paused(self: narrow.NarrowRepair, *args: Any) -> Any:
        result = original(self, *args)
        found.set()
        assert resume.wait(60)
        return result

    monkeypatch.setattr(narrow.NarrowRepair, "_find", paused)
    return found, resume


def test_a_writer_arriving_during_a_narrow_repair_waits_for_it(
    settings: Settings, synced: Any, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tamper(pg)
    found, resume = hold_the_repair(monkeypatch)
    results: list[Any] = []
    repair = threading.Thread(
        target=lambda: results.append(
            Repairer.for_settings(settings, actor="test").repair(month(settings))
        )
    )
    repair.start()
    assert found.wait(60)
    uri = settings.table_uri(settings.table("ranking_signal"))
    write_delta_month(uri, OCT, ranking_signal(OCT, 300, seed=9))  # the job's new version
    job = threading.Thread(
        target=lambda: MonthWriter(settings, run_id="job").write_month(
            settings.table("ranking_signal"), OCT
        )
    )
    job.start()

    def writer_waits() -> bool:
        row = pg.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
        return bool(row and row[0])

    until(writer_waits, 30, "the writer to wait for the month's lock")
    resume.set()
    repair.join(60)
    job.join(60)
    assert results[0].outcome == "repaired"
    assert sync_run(pg)[:3] == ("job", 1, 300)  # the writer came second, and its month stands
    assert len(content(pg)) == 300


def test_a_delta_commit_during_a_narrow_repair_leaves_it_exact_for_its_version(
    settings: Settings, synced: Any, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tamper(pg)
    found, resume = hold_the_repair(monkeypatch)
    results: list[Any] = []
    repair = threading.Thread(
        target=lambda: results.append(
            Repairer.for_settings(settings, actor="test").repair(month(settings))
        )
    )
    repair.start()
    assert found.wait(60)
    uri = settings.table_uri(settings.table("ranking_signal"))
    write_delta_month(uri, OCT, ranking_signal(OCT, 300, seed=9))
    resume.set()
    repair.join(60)
    assert (results[0].outcome, results[0].delta_version) == ("repaired", 0)
    assert content(pg) == synced  # exact for version 0, the one it read
    assert Checker.for_settings(settings).check(month(settings)).status == "lagging"


def test_a_repair_killed_midway_leaves_the_month_as_it_was(
    settings: Settings, pg: psycopg.Connection[Any], pg_dsn: str, delta_root: str
) -> None:
    uri = settings.table_uri(settings.table("ranking_signal"))
    write_delta_month(uri, OCT, ranking_signal(OCT, 300_000, seed=1))
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    tamper(pg)
    tampered, state = content(pg), sync_run(pg)
    code = (
        "from reconciler.repair import Repairer\n"
        "from replicator.config import load_settings, RepairMode\n"
        "from replicator.month import Month\n"
        f"s = load_settings(dsn={pg_dsn!r}, delta_root={delta_root!r}, environ={{}})\n"
        "m = Month.of(s.table('ranking_signal'), '2026-10')\n"
        "Repairer.for_settings(s, actor='doomed').repair(m, mode=RepairMode.NARROW)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    try:
        until(lambda: repair_holds_the_month(pg), 60, "the repair to take the month's lock")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (content(pg), sync_run(pg)) == (tampered, state)
    assert pg.execute("SELECT count(*) FROM ranking.repair_audit").fetchone() == (0,)
    until(lambda: not repair_holds_the_month(pg), 30, "the killed session to end")
    repaired = Repairer.for_settings(settings, actor="test").repair(month(settings))
    assert (repaired.outcome, repaired.mode) == ("repaired", "narrow")


def repair_holds_the_month(pg: psycopg.Connection[Any]) -> bool:
    row = pg.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted"
        " AND a.application_name = 'reconciler-repair'"
    ).fetchone()
    return bool(row and row[0])


def test_a_connection_cut_midway_fails_visibly_and_leaves_the_month(
    settings: Settings, synced: Any, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tamper(pg)
    tampered, state = content(pg), sync_run(pg)
    found, resume = hold_the_repair(monkeypatch)
    results: list[Any] = []
    repair = threading.Thread(
        target=lambda: results.append(
            Repairer.for_settings(settings, actor="test").repair(
                month(settings), mode=RepairMode.NARROW
            )
        )
    )
    repair.start()
    assert found.wait(60)
    pg.execute(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory'"
        " AND l.granted AND l.pid <> pg_backend_pid()"
    )
    resume.set()
    repair.join(60)
    assert results[0].outcome == "failed" and "\n" not in results[0].message
    assert (content(pg), sync_run(pg)) == (tampered, state)


def test_a_lost_commit_acknowledgement_is_recognized_by_the_run_id(
    settings: Settings, synced: Any, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    tamper(pg)
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    host = str(params.get("host") or "/tmp")
    port = int(params.get("port") or 5432)
    upstream: tuple[int, Any] = (
        (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
        if host.startswith("/")
        else (socket.AF_INET, (host, port))
    )
    proxy = CommitSwallowingProxy(upstream)
    proxied = with_overrides(
        settings, dsn=Dsn(make_conninfo(pg_dsn, host="127.0.0.1", port=str(proxy.port)))
    )
    result = Repairer.for_settings(proxied, actor="test").repair(
        month(proxied), mode=RepairMode.NARROW
    )
    assert proxy.swallowed >= 1
    assert (result.outcome, result.mode) == ("repaired", "narrow"), result.message
    assert content(pg) == synced
    assert sync_run(pg)[0] == result.run_id


def test_the_daemon_repairs_narrowly(
    settings: Settings,
    synced: Any,
    pg: psycopg.Connection[Any],
    make_daemon: Callable[..., Any],
) -> None:
    from replicator.config import AutoRepairSettings

    tamper(pg)
    daemon = make_daemon(AutoRepairSettings(enabled=True, grace_period_seconds=0))
    daemon.run_cycle()
    daemon.run_cycle()
    audit = pg.execute("SELECT trigger, outcome, mode FROM ranking.repair_audit").fetchall()
    assert ("auto", "repaired", "narrow") in audit
    assert content(pg) == synced
