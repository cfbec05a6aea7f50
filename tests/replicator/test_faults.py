"""Faults during a month write: the month is always exactly the old or exactly the new rows,
sync state describes what is there, and the failure is visible."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from reconciler.check import Checker
from reconciler.sample import ranking_signal, write_delta_month
from replicator.config import Settings, with_overrides
from replicator.errors import PostgresError
from replicator.month import Month
from replicator.secrets import Dsn
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_db import LAYOUTS
from tests.fix_proxy import CommitSwallowingProxy
from tests.waiting import until

pytestmark = [pytest.mark.slow, LAYOUTS]
OCT = YearMonth.parse("2026-10")
OLD_ROWS, NEW_ROWS = 1_000, 400_000


def month_state(pg: psycopg.Connection[Any]) -> tuple[int, int, Any]:
    rows = pg.execute(
        "SELECT count(*), count(DISTINCT (signal_date, entity_id, signal_name))"
        " FROM ranking.ranking_signal WHERE year_month = '2026-10'"
    ).fetchone()
    state = pg.execute(
        "SELECT delta_version, row_count FROM ranking.signal_sync_state"
        " WHERE table_name = 'ranking_signal'"
    ).fetchone()
    assert rows is not None
    return int(rows[0]), int(rows[1]), state


def copy_in_progress(pg: psycopg.Connection[Any]) -> bool:
    row = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'COPY%'"
        " AND datname = current_database()"
    ).fetchone()
    return bool(row and row[0])


@pytest.fixture
def old_then_new(settings: Settings, delta_root: str) -> Settings:
    """Postgres holds the old month (Delta version 0); Delta's latest (version 1) is large."""
    uri = settings.table_uri(settings.table("ranking_signal"))
    write_delta_month(uri, OCT, ranking_signal(OCT, OLD_ROWS, seed=1))
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    write_delta_month(uri, OCT, ranking_signal(OCT, NEW_ROWS, seed=2))
    return settings


def test_writer_killed_mid_copy_leaves_the_old_month(
    old_then_new: Settings,
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    delta_root: str,
) -> None:
    code = (
        "from replicator.config import load_settings\n"
        "from replicator.writer import MonthWriter\n"
        "from replicator.yearmonth import YearMonth\n"
        f"s = load_settings(dsn={pg_dsn!r}, delta_root={delta_root!r}, environ={{}})\n"
        "MonthWriter(s).write_month(s.table('ranking_signal'), YearMonth(2026, 10))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    try:
        until(lambda: copy_in_progress(pg))
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert month_state(pg) == (OLD_ROWS, OLD_ROWS, (0, OLD_ROWS))
    until(
        lambda: (
            not pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
                " AND datname = current_database()"
            ).fetchone()[0]
        ),
        timeout=10,
    )  # type: ignore[index]
    MonthWriter(old_then_new).write_month(old_then_new.table("ranking_signal"), OCT)
    assert month_state(pg) == (NEW_ROWS, NEW_ROWS, (1, NEW_ROWS))


def test_connection_cut_mid_copy_fails_visibly_and_keeps_the_old_month(
    old_then_new: Settings, pg: psycopg.Connection[Any]
) -> None:
    errors: list[BaseException] = []

    def write() -> None:
        try:
            MonthWriter(old_then_new, run_id="cut").write_month(
                old_then_new.table("ranking_signal"), OCT
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    until(lambda: copy_in_progress(pg))
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE query ILIKE 'COPY%' AND datname = current_database()"
    )
    thread.join(timeout=60)
    assert len(errors) == 1 and isinstance(errors[0], PostgresError)
    assert month_state(pg) == (OLD_ROWS, OLD_ROWS, (0, OLD_ROWS))
    failures, reason = pg.execute(  # type: ignore[misc]
        "SELECT consecutive_failures, last_failure_reason FROM ranking.signal_sync_state"
    ).fetchone()
    assert failures == 1 and "terminat" in reason.lower()


def test_two_writers_of_one_month_serialize_into_one_complete_version(
    old_then_new: Settings, pg: psycopg.Connection[Any]
) -> None:
    spec = old_then_new.table("ranking_signal")
    done: list[str] = []
    seen_in_flight: list[str] = []

    def write(version: int) -> None:
        MonthWriter(old_then_new, run_id=f"v{version}").write_month(
            spec, OCT, delta_version=version, force=True
        )
        done.append(f"v{version}")

    writers = [threading.Thread(target=write, args=(v,)) for v in (1, 0)]
    for writer in writers:
        writer.start()
        time.sleep(0.05)
    until(lambda: copy_in_progress(pg))
    seen_in_flight.append(Checker.for_settings(old_then_new).check(Month.of(spec, OCT)).status)
    for writer in writers:
        writer.join(timeout=120)
    assert sorted(done) == ["v0", "v1"]
    count, distinct, state = month_state(pg)
    assert count == distinct  # never a union of two versions
    assert (count, state) in ((OLD_ROWS, (0, OLD_ROWS)), (NEW_ROWS, (1, NEW_ROWS)))
    assert seen_in_flight == ["lagging"]  # a write in flight is lag, not drift


def test_delta_commit_during_the_read_keeps_the_pinned_version(
    old_then_new: Settings,
    pg: psycopg.Connection[Any],
    delta_root: str,
) -> None:
    spec = old_then_new.table("ranking_signal")
    writer_done = threading.Event()

    def write() -> None:
        MonthWriter(old_then_new).write_month(spec, OCT)
        writer_done.set()

    thread = threading.Thread(target=write)
    thread.start()
    until(lambda: copy_in_progress(pg))
    write_delta_month(old_then_new.table_uri(spec), OCT, ranking_signal(OCT, 77, seed=3))
    thread.join(timeout=120)
    assert writer_done.is_set()
    assert month_state(pg) == (NEW_ROWS, NEW_ROWS, (1, NEW_ROWS))  # the pinned version 1
    assert (
        Checker.for_settings(old_then_new).check(Month.of(spec, OCT)).status == "lagging"
    )  # version 2 waits


def test_lost_commit_acknowledgement_is_resolved_from_sync_state(
    old_then_new: Settings, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    host = str(params.get("host") or "/tmp")
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        upstream: tuple[int, Any] = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
    else:
        upstream = (socket.AF_INET, (host, port))
    proxy = CommitSwallowingProxy(upstream)
    proxied = with_overrides(
        old_then_new, dsn=Dsn(make_conninfo(pg_dsn, host="127.0.0.1", port=str(proxy.port)))
    )
    result = MonthWriter(proxied, run_id="lost-ack").write_month(
        proxied.table("ranking_signal"), OCT
    )
    assert proxy.swallowed >= 1
    assert (result.status, result.rows) == ("written", NEW_ROWS)
    assert month_state(pg) == (NEW_ROWS, NEW_ROWS, (1, NEW_ROWS))  # one copy, not two


def test_readers_see_the_old_month_during_a_write_and_other_months_are_not_blocked(
    old_then_new: Settings, pg_dsn: str, write_month: Any
) -> None:
    write_month("ranking_signal", "2026-09", rows=300)
    MonthWriter(old_then_new).write_month(
        old_then_new.table("ranking_signal"), YearMonth.parse("2026-09")
    )
    thread = threading.Thread(
        target=lambda: MonthWriter(old_then_new).write_month(
            old_then_new.table("ranking_signal"), OCT
        )
    )
    with psycopg.connect(pg_dsn, autocommit=True) as reader:
        reader.execute("SET lock_timeout = '1s'")
        thread.start()
        until(lambda: copy_in_progress(reader))
        october = reader.execute(
            "SELECT count(*) FROM ranking.ranking_signal WHERE year_month = '2026-10'"
        ).fetchone()
        september = reader.execute(
            "SELECT count(*) FROM ranking.ranking_signal WHERE year_month = '2026-09'"
        ).fetchone()
        assert copy_in_progress(reader)  # both answered while the write was still running
        thread.join(timeout=120)
        after = reader.execute(
            "SELECT count(*) FROM ranking.ranking_signal WHERE year_month = '2026-10'"
        ).fetchone()
    assert (october, september, after) == ((OLD_ROWS,), (300,), (NEW_ROWS,))


def test_a_writer_racing_a_repair_serialize(
    old_then_new: Settings, pg: psycopg.Connection[Any]
) -> None:
    from reconciler.repair import Repairer

    spec = old_then_new.table("ranking_signal")
    comparer = Checker.for_settings(old_then_new)
    pg.execute("DELETE FROM ranking.ranking_signal WHERE rank < 10")  # drift to repair
    job = threading.Thread(
        target=lambda: MonthWriter(old_then_new, run_id="job").write_month(
            spec, OCT, delta_version=1
        )
    )
    job.start()
    until(lambda: copy_in_progress(pg))
    result = Repairer.for_settings(old_then_new, actor="test").repair(
        Month.of(spec, OCT)
    )  # waits for the month's lock
    job.join(timeout=120)
    assert result.outcome in ("repaired", "skipped")
    assert month_state(pg) == (NEW_ROWS, NEW_ROWS, (1, NEW_ROWS))
    assert comparer.check(Month.of(spec, OCT), deep=True).status == "in_sync"
