"""`replicator write` as the ranking job runs it: exit codes, JSON, and no leaked secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from replicator.cli import main
from tests.fix_db import SilentServer
from tests.fix_delta import WriteMonth

CANARY = "Cn4ry-p@ss w%rd'\""
CANARY_URI = "Cn4ry-p%40ss%20w%25rd'%22"


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("bad", ["2026-13", "2026-1", "../x", "2026-02;DROP", ""])
def test_bad_month_is_rejected_before_any_connection(bad: str, silent_server: SilentServer) -> None:
    result = run("write", "--year-month", bad, "--dsn", silent_server.dsn())
    assert result.exit_code == 2
    assert "year-month" in result.output.lower() or "YYYY-MM" in result.output
    time.sleep(0.3)
    assert silent_server.accepted == []


def test_unknown_table_is_rejected_before_any_connection(silent_server: SilentServer) -> None:
    result = run(
        "write", "--year-month", "2026-10", "--table", "nope", "--dsn", silent_server.dsn()
    )
    assert result.exit_code == 2
    assert "unknown table 'nope'" in result.output
    assert silent_server.accepted == []


def test_write_json_and_exit_codes(
    cli_env: dict[str, str], write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    write_month("ranking_signal", "2026-10", rows=25, seed=1)
    write_month("ranking_signal", "2026-10", rows=30, seed=2)
    result = run("write", "--year-month", "2026-10", "--table", "ranking_signal", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["tables"][0]["rows"] == 30
    assert document["tables"][0]["delta_version"] == 1
    stale = run(
        "write", "--year-month", "2026-10", "--table", "ranking_signal", "--delta-version", "0"
    )
    assert stale.exit_code == 1
    assert "newer than version 0" in stale.stderr
    absent = run("write", "--year-month", "2026-11", "--table", "ranking_signal")
    assert absent.exit_code == 2
    assert "absent from Delta" in absent.stderr


def test_best_effort_mode_exits_zero_and_records(
    cli_env: dict[str, str], pg: psycopg.Connection[Any]
) -> None:
    # No Delta table at all: a failure; best effort means the job goes on.
    result = run(
        "write",
        "--year-month",
        "2026-10",
        "--table",
        "ranking_signal",
        env={"POSTGRES_SIGNALS_WRITE_REQUIRED": "false"},
    )
    assert result.exit_code == 0
    assert "no Delta table" in result.stderr
    row = pg.execute(
        "SELECT consecutive_failures, last_failure_reason FROM ranking.signal_sync_state"
    ).fetchone()
    assert row is not None and row[0] == 1 and "no Delta table" in row[1]


def test_no_dsn_skips_and_exits_zero(delta_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRES_DSN", raising=False)
    result = run("write", "--year-month", "2026-10", "--delta-root", delta_root)
    assert result.exit_code == 0
    assert "replication of ranking_signal 2026-10 skipped" in result.stderr


def dsn_shapes(host: str, port: int, dbname: str) -> list[str]:
    return [
        f"postgresql://writer:{CANARY_URI}@{host}:{port}/{dbname}",
        f"postgresql://writer@{host}:{port}/{dbname}?password={CANARY_URI}",
        f"host={host} port={port} dbname={dbname} user=writer password='Cn4ry-p@ss w%rd\\'\"'",
        f"host={host} port={port} password=Cn4ry-p@ss%w dbname={dbname} garbage",
    ]


def test_the_canary_password_never_leaks(
    cli_env: dict[str, str],
    write_month: WriteMonth,
    silent_server: SilentServer,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    write_month("ranking_signal", "2026-10", rows=5)
    config = tmp_path / "fast.toml"
    config.write_text("[postgres]\nconnect_timeout_seconds = 1\n")
    closed_port = 1  # nothing listens there
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    targets = [("127.0.0.1", closed_port, "x"), ("127.0.0.1", silent_server.port, "x")]
    if str(params.get("host", "")).startswith("127."):
        targets.append((str(params["host"]), int(params.get("port") or 5432), "no_such_db"))
    for host, port, dbname in targets:
        for dsn in dsn_shapes(host, port, dbname):
            for args in (
                ["write", "--year-month", "2026-10", "--table", "ranking_signal"],
                ["-v", "--json-logs", "write", "--year-month", "2026-10", "--json"],
            ):
                result = CliRunner().invoke(
                    main,
                    [*args, "--dsn", dsn, "--config", str(config)],
                    env={"POSTGRES_SIGNALS_WRITE_REQUIRED": "true"},
                )
                text = result.stdout + result.stderr + repr(result.exception)
                assert result.exit_code == 2, text
                for fragment in ("Cn4ry", "p@ss", CANARY_URI):
                    assert fragment not in text, (dsn, text)


def test_dsn_is_hidden_from_the_process_title(tmp_path: Path, silent_server: SilentServer) -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from replicator.cli import main; main()",
            "write",
            "--year-month",
            "2026-10",
            "--delta-root",
            str(tmp_path),
            "--dsn",
            silent_server.dsn("Cn4ryTitle"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not silent_server.accepted and time.monotonic() < deadline:
            time.sleep(0.1)  # once it connects, the title has long been set
        assert silent_server.accepted, "the writer never tried to connect"
        title = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert "Cn4ryTitle" not in title
        assert "--dsn ***" in title.replace("\0", " ")
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert b"Cn4ryTitle" not in stderr
