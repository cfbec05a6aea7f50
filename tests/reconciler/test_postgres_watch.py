"""A daemon that cannot go blind: the cheap "written around the replicator" signal checks its own
assumptions every cycle, a periodic re-digest bounds what it cannot see, the periods survive
restarts; and the races and encodings around a comparison."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

from reconciler.check import Checker
from reconciler.cli import main as reconciler_main
from reconciler.daemon import Daemon
from replicator.cli import main as replicator_main
from replicator.config import DaemonSettings, Settings, with_overrides
from replicator.month import Month
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_delta import WriteMonth
from tests.months import month_key

OCT = YearMonth.parse("2026-10")
SILENT_UPDATE = (
    "UPDATE ranking.ranking_signal SET rank = -1 WHERE year_month = '2026-10' AND rank = 3"
)


@pytest.fixture
def synced(settings: Settings, write_month: WriteMonth) -> Settings:
    write_month("ranking_signal", "2026-10", rows=60)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    return with_overrides(settings, tables=(settings.table("ranking_signal"),))


@pytest.fixture
def daemon_for(synced: Settings) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(**daemon: Any) -> Daemon:
        configured = with_overrides(
            synced,
            daemon=DaemonSettings(
                **{
                    "interval_seconds": 60,
                    "metrics_addr": "127.0.0.1:0",
                    "postgres_check_period_seconds": 86400,
                    "deep_check_period_seconds": 86400,
                    **daemon,
                }
            ),
        )
        made.append(Daemon(lambda: configured))
        return made[-1]

    yield make
    for daemon in made:
        daemon.stop()
        daemon.leader.release()


def status(daemon: Daemon) -> str:
    return str(daemon.months[month_key("ranking_signal", "2026-10")].status)


def silent_write(dsn: str, statement: str = SILENT_UPDATE) -> None:
    """A write the statistics never see: a superuser session with track_counts off."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET track_counts = off")
        conn.execute(statement)


def test_a_statistics_reset_is_not_taken_for_quiet(
    daemon_for: Callable[..., Daemon], pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    daemon = daemon_for()
    daemon.run_cycle()
    assert status(daemon) == "in_sync"
    silent_write(pg_dsn)
    pg.execute("SELECT pg_stat_reset()")  # also what crash recovery does
    summary = daemon.run_cycle()
    assert summary.checked == 1 and status(daemon) == "drift"


def test_a_table_rewrite_is_not_taken_for_quiet(
    daemon_for: Callable[..., Daemon], pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    daemon = daemon_for()
    daemon.run_cycle()
    silent_write(pg_dsn)
    pg.execute("VACUUM FULL ranking.ranking_signal")  # a new relfilenode
    assert daemon.run_cycle().checked == 1
    assert status(daemon) == "drift"


def test_with_track_counts_off_every_month_is_compared_every_cycle(
    daemon_for: Callable[..., Daemon], pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    database = pg.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    daemon = daemon_for()
    daemon.run_cycle()
    pg.execute(sql.SQL("ALTER DATABASE {} SET track_counts = off").format(sql.Identifier(database)))
    try:
        assert daemon.run_cycle().checked == 1  # nothing changed, and still compared
        silent_write(pg_dsn)
        assert daemon.run_cycle().checked == 1
        assert status(daemon) == "drift"
    finally:
        pg.execute(sql.SQL("ALTER DATABASE {} RESET track_counts").format(sql.Identifier(database)))


def test_a_write_silenced_per_session_is_caught_by_the_periodic_re_digest(
    daemon_for: Callable[..., Daemon], pg_dsn: str
) -> None:
    daemon = daemon_for(postgres_check_period_seconds=2)
    daemon.run_cycle()
    silent_write(pg_dsn)
    assert daemon.run_cycle().checked == 0  # no signal at all: the write is invisible
    assert status(daemon) == "in_sync"
    state = daemon.months[month_key("ranking_signal", "2026-10")]
    then = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2.1)  # the period has passed
    state.record = dataclasses.replace(state.record, postgres_checked_at=then)
    assert daemon.run_cycle().checked == 1  # the bound behind the signal
    assert status(daemon) == "drift"


def last_checks(pg: psycopg.Connection[Any]) -> tuple[Any, Any]:
    row = pg.execute(
        "SELECT last_postgres_check_at, last_deep_check_at FROM ranking.month_check"
        " WHERE table_name = 'ranking_signal' AND year_month = '2026-10'"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_restarts_never_postpone_a_due_deep_check(
    daemon_for: Callable[..., Daemon], pg: psycopg.Connection[Any]
) -> None:
    """A daemon restarted more often than the deep-check period still deep-checks every month
    once per period: the clock lives in Postgres, not in the process."""
    period = 3.0
    started = time.time()
    deep_checks = []
    while time.time() - started < 3 * period:
        daemon = daemon_for(deep_check_period_seconds=period)  # a fresh process, in effect
        daemon.run_cycle()
        daemon.stop()
        daemon.leader.release()
        deep_checks.append(last_checks(pg)[1])
        time.sleep(0.5)
    done = sorted({t.timestamp() for t in deep_checks if t is not None})
    assert done, "no deep check ever ran across the restarts"
    # Deep checks keep coming at most a period (plus a cycle) apart.
    assert time.time() - done[-1] < period + 1.5
    assert all(b - a <= period + 1.5 for a, b in itertools.pairwise(done))


def test_a_replication_landing_mid_cycle_is_read_again_not_an_error(
    synced: Settings, write_month: WriteMonth
) -> None:
    checker = Checker.for_settings(synced)
    spec = synced.table("ranking_signal")
    before = checker.latest(spec)  # the daemon's snapshot of Delta at the start of its cycle
    write_month("ranking_signal", "2026-10", rows=70, seed=5)
    MonthWriter(synced).write_month(spec, OCT)  # lands before the month is compared
    result = checker.check(Month.of(spec, OCT), latest=before)
    assert (result.status, result.delta_version) == ("in_sync", before.version + 1), result.reason


def test_a_latin1_client_encoding_in_the_dsn_changes_nothing(
    cli_env: dict[str, str], write_month: WriteMonth, pg_dsn: str
) -> None:
    from reconciler.sample import ranking_signal

    data = ranking_signal(OCT, 20)
    names = data.column("entity_id").to_pylist()
    names[3] = "entité-中文-🙂"  # not encodable in LATIN1
    import pyarrow as pa

    write_month("ranking_signal", "2026-10", data=data.set_column(2, "entity_id", pa.array(names)))
    dsn = make_conninfo(pg_dsn, client_encoding="LATIN1")
    env = {"POSTGRES_DSN": dsn}
    wrote = CliRunner().invoke(
        replicator_main, ["write", "--year-month", "2026-10", "--table", "ranking_signal"], env=env
    )
    assert wrote.exit_code == 0, wrote.output
    checked = CliRunner().invoke(
        reconciler_main,
        ["check", "--year-month", "2026-10", "--table", "ranking_signal", "--deep"],
        env=env,
    )
    assert checked.exit_code == 0, checked.output


def test_a_database_not_in_utf8_is_refused_in_one_line(
    cli_env: dict[str, str], pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    name = f"reconciler_latin1_{uuid.uuid4().hex[:8]}"
    pg.execute(
        sql.SQL(
            "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ).format(sql.Identifier(name))
    )
    try:
        dsn = make_conninfo(pg_dsn, dbname=name)
        for main, args in (
            (reconciler_main, ["migrate"]),
            (reconciler_main, ["check", "--year-month", "2026-10"]),
            (replicator_main, ["write", "--year-month", "2026-10"]),
        ):
            result = CliRunner().invoke(main, args, env={"POSTGRES_DSN": dsn})
            assert result.exit_code == 2, result.output
            error = [line for line in result.output.splitlines() if line.startswith("error:")]
            assert len(error) == 1 and "LATIN1" in error[0] and "UTF8" in error[0], result.output
            assert "Traceback" not in result.output
    finally:
        pg.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_an_unexpected_failure_exits_2_in_one_line(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug is not a finding: exit 2 and one line, the traceback only with -v."""

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(Checker, "check_month", broken)
    quiet = CliRunner().invoke(reconciler_main, ["check", "--year-month", "2026-10"])
    assert quiet.exit_code == 2
    assert quiet.output.strip().splitlines() == [
        "error: unexpected RuntimeError: boom second line (run with -v for the traceback)"
    ]
    verbose = CliRunner().invoke(reconciler_main, ["-v", "check", "--year-month", "2026-10"])
    assert verbose.exit_code == 2 and "Traceback" in verbose.output
