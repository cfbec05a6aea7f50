"""Ctrl-C (and SIGTERM) while a command waits on a lock another session holds: the command
cancels its statement, rolls back, prints one line and exits 130 within two seconds, leaving the
month untouched; a wait of more than five seconds is reported once, naming the lock and the
process that holds it, never that process's query."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from replicator.config import Settings
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_delta import WriteMonth
from tests.waiting import until

BIN = Path(sys.executable).parent
OCT = YearMonth.parse("2026-10")
SECRET_QUERY = "LOCK TABLE ranking.ranking_signal IN ACCESS EXCLUSIVE MODE /* canary-query */"

COMMANDS = {
    "check": ["reconciler", "check", "--year-month", "2026-10", "--table", "ranking_signal"],
    "diff": ["reconciler", "diff", "--year-month", "2026-10", "--table", "ranking_signal"],
    "repair": ["reconciler", "repair", "--year-month", "2026-10", "--table", "ranking_signal"],
    "write": ["replicator", "write", "--year-month", "2026-10", "--table", "ranking_signal"],
}


class Locked:
    """The table locked by another session, which stays in its transaction; `before` is
    what the database held before the lock was taken."""

    def __init__(self, holder: psycopg.Connection[Any], before: tuple[Any, ...]) -> None:
        self.holder = holder
        self.before = before

    def release(self) -> None:
        if not self.holder.closed:
            self.holder.rollback()
            self.holder.close()


@pytest.fixture
def locked(
    settings: Settings, write_month: WriteMonth, pg_dsn: str, pg: psycopg.Connection[Any]
) -> Iterator[Locked]:
    """October synced and drifted (so repair has work), then the table locked."""
    write_month("ranking_signal", "2026-10", rows=50)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    pg.execute("DELETE FROM ranking.ranking_signal WHERE rank < 3")
    before = state(pg)
    holder = psycopg.connect(pg_dsn)
    holder.execute(SECRET_QUERY)
    lock = Locked(holder, before)
    yield lock
    lock.release()


def state(pg: psycopg.Connection[Any]) -> tuple[Any, ...]:
    rows = pg.execute(
        "SELECT count(*) FROM ranking.ranking_signal WHERE year_month = '2026-10'"
    ).fetchone()
    sync = pg.execute(
        "SELECT run_id, consecutive_failures FROM ranking.signal_sync_state"
        " WHERE table_name = 'ranking_signal'"
    ).fetchone()
    audit = pg.execute("SELECT count(*) FROM ranking.repair_audit").fetchone()
    return (rows, sync, audit)


def waiting_on_a_lock(pg: psycopg.Connection[Any], proc: subprocess.Popen[str]) -> bool:
    row = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND application_name LIKE ANY(ARRAY['reconciler%', 'replicator%'])"
        " AND datname = current_database()"
    ).fetchone()
    return bool(row and row[0]) and proc.poll() is None


def start(argv: list[str], cli_env: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, **cli_env}
    return subprocess.Popen(
        [str(BIN / argv[0]), *argv[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ctrl_c_while_waiting_for_a_lock_cancels_and_exits_130(
    command: str,
    locked: Locked,
    pg: psycopg.Connection[Any],
    cli_env: dict[str, str],
) -> None:
    proc = start(COMMANDS[command], cli_env)
    try:
        until(lambda: waiting_on_a_lock(pg, proc), 30, f"{command} to wait for the lock")
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
        took = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert took < 2.5, took
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted: nothing changed"], stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    locked.release()
    assert state(pg) == locked.before  # the month, sync state and the audit untouched


def test_sigterm_is_an_interrupt_too_and_a_long_wait_is_reported_once(
    locked: Locked, pg: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    holder_pid = locked.holder.info.backend_pid
    proc = start(COMMANDS["check"], cli_env)
    try:
        until(lambda: waiting_on_a_lock(pg, proc), 30, "check to wait for the lock")
        time.sleep(6.5)  # the condition under test is the passing of time: the 5 s report
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    reports = [line for line in stderr.splitlines() if "still waiting" in line]
    assert len(reports) == 1, stderr
    assert "AccessShareLock on ranking.ranking_signal" in reports[0]
    assert f"held by pid {holder_pid}" in reports[0] and " since " in reports[0]
    assert "canary-query" not in stderr  # never the other session's query text
