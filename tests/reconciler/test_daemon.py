"""The daemon against a real Postgres and real Delta tables, its /metrics scraped over HTTP."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
from click.testing import CliRunner

from reconciler import __version__
from reconciler.cli import main
from reconciler.daemon import Daemon
from reconciler.leader import LeaderLock
from replicator.config import AutoRepairSettings, DaemonSettings, Settings, with_overrides
from replicator.postgres import Database
from replicator.secrets import Dsn
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_daemon import scrape, value
from tests.fix_delta import WriteMonth
from tests.months import month_key
from tests.waiting import free_port, until


def ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


def replicate(settings: Settings, table: str, month: str) -> None:
    MonthWriter(settings).write_month(settings.table(table), YearMonth.parse(month))


def test_cycle_statuses_metrics_and_idle_cycles(
    settings: Settings,
    write_month: WriteMonth,
    make_daemon: Callable[..., Daemon],
    pg: psycopg.Connection[Any],
) -> None:
    write_month("ranking_signal", "2026-10", rows=40, seed=1)
    write_month("ranking_signal", "2026-09", rows=30)
    write_month("composite_signal_daily", "2026-10", rows=20)
    replicate(settings, "ranking_signal", "2026-10")
    replicate(settings, "ranking_signal", "2026-09")
    write_month("ranking_signal", "2026-10", rows=45, seed=2)  # Delta moved on: lagging
    daemon = make_daemon()
    server = daemon.serve_metrics()
    try:
        before = scrape(server.url)  # nothing is known before the first comparison
        assert not [k for k in before if k[0] == "reconciler_month_status"]
        assert ("reconciler_last_cycle_timestamp_seconds", ()) not in before
        first = daemon.run_cycle()
        assert first.checked == 3
        samples = scrape(server.url)
        status = {
            (t, m): s
            for (name, labels), v in samples.items()
            if name == "reconciler_month_status" and v == 1.0
            for t, m, s in [
                (dict(labels)["table"], dict(labels)["year_month"], dict(labels)["status"])
            ]
        }
        assert status == {
            ("ranking_signal", "2026-10"): "lagging",
            ("ranking_signal", "2026-09"): "in_sync",
            ("composite_signal_daily", "2026-10"): "missing",
        }
        assert (
            value(
                samples,
                "reconciler_month_sync_lag_seconds",
                table="ranking_signal",
                year_month="2026-10",
            )
            > 0
        )
        assert (
            value(
                samples,
                "reconciler_month_rows",
                table="ranking_signal",
                year_month="2026-09",
                side="postgres",
            )
            == 30
        )
        assert value(samples, "reconciler_checks_total", table="ranking_signal") == 2
        assert value(samples, "reconciler_source_up", source="postgres") == 1
        assert value(samples, "reconciler_build_info", version=__version__) == 1
        assert ("reconciler_last_cycle_timestamp_seconds", ()) in samples
        # Nothing changed: the next cycle compares nothing.
        assert daemon.run_cycle().checked == 0
        with urllib.request.urlopen(server.url.replace("/metrics", "/readyz"), timeout=5) as r:
            assert r.status == 200
        # A write around the replicator is caught through the table statistics.
        pg.execute(
            "UPDATE ranking.ranking_signal SET rank = 0 WHERE year_month = '2026-09' AND rank = 5"
        )

        def drift_seen() -> bool:
            daemon.run_cycle()
            return daemon.months[month_key("ranking_signal", "2026-09")].status == "drift"

        until(drift_seen)
        rows = pg.execute(
            "SELECT status FROM ranking.month_check WHERE year_month = '2026-09'"
            " AND table_name = 'ranking_signal'"
        ).fetchone()
        assert rows == ("drift",)
    finally:
        server.stop()


def test_a_month_that_leaves_the_window_leaves_the_output(
    settings: Settings, write_month: WriteMonth, make_daemon: Callable[..., Daemon]
) -> None:
    write_month("ranking_signal", "2026-10", rows=10)
    write_month("ranking_signal", "2023-01", rows=10)
    daemon = make_daemon(retention_months=48)
    daemon.run_cycle()
    assert {m.labels[1] for m in daemon.view().months} == {"2026-10", "2023-01"}
    daemon.apply(with_overrides(daemon.settings, daemon=DaemonSettings(retention_months=12)))
    assert {m.labels[1] for m in daemon.view().months} == {"2026-10"}


def test_auto_repair_within_guardrails(
    settings: Settings,
    write_month: WriteMonth,
    make_daemon: Callable[..., Daemon],
    pg: psycopg.Connection[Any],
) -> None:
    for month in ("2026-10", "2026-09", "2026-08"):
        write_month("ranking_signal", month, rows=20)
        replicate(settings, "ranking_signal", month)
    pg.execute("DELETE FROM ranking.ranking_signal WHERE rank = 3")  # all three months drift
    breaker = make_daemon(
        AutoRepairSettings(enabled=True, grace_period_seconds=0, circuit_breaker_months=2)
    )
    breaker.run_cycle()
    assert breaker.reconciler.leading.circuit_open
    assert all(m.status == "drift" for m in breaker.months.values())
    assert pg.execute("SELECT count(*) FROM ranking.repair_audit").fetchone() == (0,)
    breaker.leader.release()

    dry = make_daemon(AutoRepairSettings(enabled=True, grace_period_seconds=0, dry_run=True))
    dry.run_cycle()
    dry.run_cycle()
    assert all(m.status == "drift" for m in dry.months.values())
    dry.leader.release()

    limited = make_daemon(
        AutoRepairSettings(enabled=True, grace_period_seconds=0, max_per_cycle=1, max_per_hour=2)
    )
    limited.run_cycle()
    statuses = sorted(m.status for m in limited.months.values())
    assert statuses == ["drift", "drift", "in_sync"]
    assert (
        limited.months[month_key("ranking_signal", "2026-10")].status == "in_sync"
    )  # newest first
    limited.run_cycle()
    limited.run_cycle()  # the hourly budget (2) is spent: one month stays drifting
    assert sorted(m.status for m in limited.months.values()) == ["drift", "in_sync", "in_sync"]
    audit = pg.execute(
        "SELECT actor, table_name, outcome, rows_before, rows_after"
        " FROM ranking.repair_audit ORDER BY id"
    ).fetchall()
    assert [a[2] for a in audit] == ["repaired", "repaired"]
    assert audit[0][0].startswith("reconciler-daemon:") and audit[0][3] == 19
    assert audit[0][4] == 20
    assert (
        limited.metrics.registry.get_sample_value(
            "reconciler_repairs_total",
            {"table": "ranking_signal", "trigger": "auto", "outcome": "repaired", "mode": "narrow"},
        )
        == 2
    )


def test_grace_period_delays_repair(
    settings: Settings, write_month: WriteMonth, make_daemon: Callable[..., Daemon]
) -> None:
    write_month("ranking_signal", "2026-10", rows=5)
    daemon = make_daemon(AutoRepairSettings(enabled=True, grace_period_seconds=60))
    daemon.run_cycle()
    assert daemon.months[month_key("ranking_signal", "2026-10")].status == "missing"
    daemon.months[month_key("ranking_signal", "2026-10")].bad_since = ago(61)
    daemon.run_cycle()
    assert daemon.months[month_key("ranking_signal", "2026-10")].status == "in_sync"


def test_sources_down_are_reported_and_recovered(
    settings: Settings,
    write_month: WriteMonth,
    make_daemon: Callable[..., Daemon],
    pg_dsn: str,
) -> None:
    write_month("ranking_signal", "2026-10", rows=5)
    write_month("composite_signal_daily", "2026-10", rows=5)
    daemon = make_daemon()
    good = daemon.settings
    daemon.apply(
        with_overrides(
            good, dsn=Dsn("postgresql://x@127.0.0.1:1/db"), delta={"root": "/nonexistent/root"}
        )
    )
    summary = daemon.run_cycle()
    assert summary.sources_up == {"delta": False, "postgres": False}
    assert (
        daemon.metrics.registry.get_sample_value("reconciler_source_up", {"source": "postgres"})
        == 0
    )
    assert daemon.ready()[0] is False
    daemon.apply(good)
    assert daemon.run_cycle().sources_up == {"delta": True, "postgres": True}
    assert daemon.ready() == (True, "ready")


def test_leader_lock_and_lease(pg_dsn: str) -> None:
    first = LeaderLock(Database(Dsn(pg_dsn)), lease_seconds=1.0)
    second = LeaderLock(Database(Dsn(pg_dsn)), lease_seconds=1.0)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        assert first.still_leader()
        # The leader stops pinging: its session is ended after the lease, and the lock is free.
        until(second.try_acquire, 10, "the lease to end")
        assert not first.still_leader()
        second.release()
        assert first.try_acquire()
    finally:
        first.release()
        second.release()


def test_repair_command(
    cli_env: dict[str, str],
    settings: Settings,
    write_month: WriteMonth,
    pg: psycopg.Connection[Any],
) -> None:
    write_month("ranking_signal", "2026-10", rows=25)
    replicate(settings, "ranking_signal", "2026-10")
    run = CliRunner()
    result = run.invoke(main, ["repair", "--year-month", "2026-10", "--table", "ranking_signal"])
    assert result.exit_code == 0 and "skipped" in result.stdout
    pg.execute("DELETE FROM ranking.ranking_signal WHERE rank < 5")
    dry = run.invoke(
        main,
        ["repair", "--year-month", "2026-10", "--table", "ranking_signal", "--dry-run", "--json"],
    )
    assert dry.exit_code == 0
    assert json.loads(dry.stdout)["tables"][0]["outcome"] == "dry_run"
    assert pg.execute("SELECT count(*) FROM ranking.ranking_signal").fetchone() == (20,)
    fixed = run.invoke(
        main, ["repair", "--year-month", "2026-10", "--table", "ranking_signal", "--json"]
    )
    assert fixed.exit_code == 0, fixed.output
    document = json.loads(fixed.stdout)["tables"][0]
    assert (document["outcome"], document["status_before"], document["status_after"]) == (
        "repaired",
        "drift",
        "in_sync",
    )
    assert pg.execute("SELECT count(*) FROM ranking.ranking_signal").fetchone() == (25,)
    actor, outcome = pg.execute("SELECT actor, outcome FROM ranking.repair_audit").fetchone()  # type: ignore[misc]
    assert actor.startswith("cli:") and outcome == "repaired"


def test_status_requires_in_sync(
    cli_env: dict[str, str],
    settings: Settings,
    write_month: WriteMonth,
    make_daemon: Callable[..., Daemon],
    pg: psycopg.Connection[Any],
) -> None:
    write_month("ranking_signal", "2026-10", rows=10)
    write_month("composite_signal_daily", "2026-10", rows=10)
    replicate(settings, "ranking_signal", "2026-10")
    replicate(settings, "composite_signal_daily", "2026-10")
    gate = CliRunner().invoke(main, ["status", "--require-in-sync", "--json"])
    assert gate.exit_code == 1  # no daemon has checked anything yet
    assert {m["status"] for m in json.loads(gate.stdout)["months"]} == {"unknown"}
    make_daemon().run_cycle()
    gate = CliRunner().invoke(main, ["status", "--require-in-sync"])
    assert gate.exit_code == 0, gate.output
    assert "all months in sync" in gate.stdout
    write_month("ranking_signal", "2026-10", rows=11, seed=3)
    assert CliRunner().invoke(main, ["status", "--require-in-sync"]).exit_code == 1


def test_run_process_signals_reload_and_secrets_from_files(
    cli_env: dict[str, str], settings: Settings, write_month: WriteMonth, tmp_path: Path
) -> None:
    """The daemon as systemd or Kubernetes runs it: the DSN from a mounted file, basic auth from
    a web config file; SIGHUP takes a new password at once and says the address needs a
    restart; SIGTERM stops it cleanly."""
    write_month("ranking_signal", "2026-10", rows=10)
    write_month("composite_signal_daily", "2026-10", rows=10)
    replicate(settings, "ranking_signal", "2026-10")
    port = free_port()
    web = tmp_path / "web.yml"

    def users(password: str) -> None:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")

    users("s3cret")
    config = tmp_path / "reconciler.toml"
    config.write_text(
        f"[daemon]\ninterval_seconds = 0.5\nweb_config_file = '{web}'\n"
        f"metrics_addr = '127.0.0.1:{port}'\n"
    )
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(cli_env["POSTGRES_DSN"] + "\n")
    env = {**os.environ, **cli_env, "PYTHONPATH": os.getcwd(), "RECONCILER_CONFIG": str(config)}
    del env["POSTGRES_DSN"]
    env["POSTGRES_DSN_FILE"] = str(dsn_file)
    env["RECONCILER_DAEMON_JSON_LOGS"] = "true"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from reconciler.cli import main; main()", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def scraped(password: str) -> bool:
            try:
                samples = scrape(url, ("prom", password))
            except (urllib.error.URLError, ConnectionError):
                return False
            return ("reconciler_last_cycle_timestamp_seconds", ()) in samples

        until(lambda: scraped("s3cret"), timeout=30)
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(url)
        assert refused.value.code == 401
        users("rotated")
        config.write_text(
            f"[daemon]\ninterval_seconds = 0.5\nweb_config_file = '{web}'\n"
            f"metrics_addr = '127.0.0.1:{port + 1}'\n"
        )
        proc.send_signal(signal.SIGHUP)
        until(lambda: scraped("rotated"), timeout=10, what="the new password")
        with pytest.raises(urllib.error.HTTPError):
            scrape(url, ("prom", "s3cret"))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert any("configuration reloaded" in m for m in messages)
    assert any("web configuration reloaded" in m for m in messages)
    assert any(f"to 127.0.0.1:{port + 1}: needs a restart" in m for m in messages)
    assert any("received SIGTERM" in m for m in messages)
    assert all("run_id" in line for line in lines if line["message"].startswith("cycle done"))
    assert "s3cret" not in stderr and "rotated" not in stderr


def test_months_in_error_are_never_auto_repaired(
    settings: Settings,
    write_month: WriteMonth,
    make_daemon: Callable[..., Daemon],
    pg: psycopg.Connection[Any],
) -> None:
    write_month("ranking_signal", "2026-10", rows=10)
    replicate(settings, "ranking_signal", "2026-10")
    pg.execute("ALTER TABLE ranking.ranking_signal ADD COLUMN surprise integer")
    try:
        daemon = make_daemon(AutoRepairSettings(enabled=True, grace_period_seconds=0))
        for _ in range(3):
            daemon.run_cycle()
        state = daemon.months[month_key("ranking_signal", "2026-10")]
        assert state.status == "error" and "surprise" in state.record.reason
        assert pg.execute("SELECT count(*) FROM ranking.repair_audit").fetchone() == (0,)
        assert (
            daemon.metrics.registry.get_sample_value(
                "reconciler_check_failures_total", {"table": "ranking_signal"}
            )
            == 3  # retried every cycle (an error may be transient), counted each time
        )
    finally:
        pg.execute("ALTER TABLE ranking.ranking_signal DROP COLUMN surprise")


def test_a_delta_error_during_planning_marks_delta_down_and_only_delta(
    settings: Settings,
    write_month: WriteMonth,
    make_daemon: Callable[..., Daemon],
    delta_root: str,
) -> None:
    from deltalake import write_deltalake

    from reconciler.sample import composite_signal_daily

    write_month("ranking_signal", "2026-10", rows=10)
    replicate(settings, "ranking_signal", "2026-10")
    # A table that loads but cannot be planned: it is not partitioned by month.
    write_deltalake(
        f"{delta_root}/composite_signal_daily",
        composite_signal_daily(YearMonth.parse("2026-10"), 10),
    )
    daemon = make_daemon()
    summary = daemon.run_cycle()
    assert summary.sources_up == {"delta": False, "postgres": True}
    assert daemon.months[month_key("ranking_signal", "2026-10")].status == "in_sync"
    registry = daemon.metrics.registry
    assert registry.get_sample_value("reconciler_source_up", {"source": "postgres"}) == 1
    assert registry.get_sample_value("reconciler_source_up", {"source": "delta"}) == 0


def test_a_table_removed_on_reload_takes_its_months_and_the_next_cycle_is_clean(
    settings: Settings, write_month: WriteMonth, make_daemon: Callable[..., Daemon]
) -> None:
    for table in ("ranking_signal", "composite_signal_daily"):
        write_month(table, "2026-10", rows=10)
        replicate(settings, table, "2026-10")
    daemon = make_daemon()
    daemon.run_cycle()
    assert {key.table for key in daemon.months} == {"ranking_signal", "composite_signal_daily"}
    one_table = with_overrides(daemon.settings, tables=(settings.table("ranking_signal"),))
    daemon._load_settings = lambda: one_table
    daemon.reload()
    assert set(daemon.months) == {month_key("ranking_signal", "2026-10")}
    summary = daemon.run_cycle()
    assert summary.sources_up == {"delta": True, "postgres": True}
    assert {m.labels[0] for m in daemon.view().months} == {"ranking_signal"}
    state = daemon.months[month_key("ranking_signal", "2026-10")]
    state.record = dataclasses.replace(state.record, proven_at=None)  # a deep check is due
    state.anchored_at = None
    assert daemon.run_cycle().sources_up == {"delta": True, "postgres": True}
