"""The on-call path at 3 a.m., as real processes: the console scripts run as a person (or a
tool) runs them, against a real Postgres and real Delta tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reconciler import __version__, diff_month
from reconciler.sample import write_delta_month
from replicator.config import Settings, with_overrides
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_db import SilentServer, own_database
from tests.fix_delta import WriteMonth
from tests.reconciler import alltypes
from tests.waiting import free_port, until

OCT = YearMonth.parse("2026-10")
BIN = Path(sys.executable).parent


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """cli("reconciler", "check", ...): the console script as a process; env overrides."""

    def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / script), *args],
            env={**os.environ, **cli_env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def replicate(settings: Settings, table: str = "ranking_signal") -> None:
    MonthWriter(settings).write_month(settings.table(table), OCT)


# -- diff -------------------------------------------------------------------------------------
def test_diff_tells_duplicates_deletions_and_changes_apart_with_true_totals(
    cli: Any, settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    write_month("ranking_signal", "2026-10", rows=200)
    replicate(settings)
    pg.execute(
        "INSERT INTO ranking.ranking_signal SELECT * FROM ranking.ranking_signal"
        " WHERE year_month = '2026-10' AND rank = 10"
    )
    pg.execute("DELETE FROM ranking.ranking_signal WHERE rank IN (20, 21, 22)")
    pg.execute("UPDATE ranking.ranking_signal SET value = value + 1e-15 WHERE rank = 30")
    done = cli(
        "reconciler",
        "diff",
        "--year-month",
        "2026-10",
        "--table",
        "ranking_signal",
        "--json",
        "--limit",
        "2",
    )
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["totals"] == {
        "only_in_delta": 3,
        "only_in_postgres": 0,
        "duplicated": 1,
        "changed": 1,
    }
    assert document["truncated"] is True
    listed = sum(
        len(document[k]) for k in ("only_in_delta", "only_in_postgres", "duplicated", "changed")
    )
    assert listed == 2
    everything = cli(
        "reconciler", "diff", "--year-month", "2026-10", "--table", "ranking_signal", "--json"
    )
    document = json.loads(everything.stdout)
    (duplicated,) = document["duplicated"]
    assert (duplicated["delta_copies"], duplicated["postgres_copies"]) == (1, 2)
    (changed,) = document["changed"]
    delta_value, postgres_value = (
        changed["values"]["value"]["delta"],
        changed["values"]["value"]["postgres"],
    )
    assert delta_value != postgres_value  # a 1e-15 difference, shown with enough digits
    assert float(postgres_value) == float(delta_value) + 1e-15
    human = cli("reconciler", "diff", "--year-month", "2026-10", "--table", "ranking_signal")
    assert "duplicated" in human.stdout and "(1 in Delta, 2 in Postgres)" in human.stdout
    assert "None" not in human.stdout and "{'" not in human.stdout
    assert "3 only in delta, 0 only in postgres, 1 duplicated, 1 changed" in human.stdout


def test_diff_of_a_month_absent_on_both_sides_is_an_error(
    cli: Any, write_month: WriteMonth
) -> None:
    write_month("ranking_signal", "2026-09", rows=10)
    done = cli("reconciler", "diff", "--year-month", "2026-10", "--table", "ranking_signal")
    assert "neither in Delta nor in Postgres" in one_error_line(done)
    as_json = cli(
        "reconciler", "diff", "--year-month", "2026-10", "--table", "ranking_signal", "--json"
    )
    assert as_json.returncode == 2
    assert "neither" in json.loads(as_json.stdout)["error"]


# Every contract type: what the drifted value looks like on each side, as text.
RENDERED = {
    "s": ("text 5", "text 5 "),
    "l": (5000015, 5000016),
    "i": (5, 6),
    "sh": (5, -5),
    "by": (5, 6),
    "d": ("0.7142857142857143", "0.7142857142857144"),
    "f": ("1.6666666269302368", "NaN"),
    "b": (False, True),
    "dt": ("2026-10-06", "2026-10-07"),
    "ts": ("2026-10-01T00:00:05.000000+00:00", "2026-10-01T00:00:05.000001+00:00"),
    "tsn": ("2026-10-01T00:05:00.000000", "2026-10-01T00:04:59.999999"),
    "dec": ("0.625000", "0.625001"),
    "bin": ("\\x05fa", "\\x05fa00"),
}
UPDATES = [
    "s = s || ' '",
    "l = l + 1",
    "i = i + 1",
    "sh = -sh",
    '"by" = "by" + 1',
    "d = '0.7142857142857144'::float8",
    "f = 'NaN'",
    "b = NOT b",
    "dt = dt + 1",
    "ts = ts + interval '1 microsecond'",
    "tsn = tsn - interval '1 microsecond'",
    "dec = dec + 0.000001",
    "bin = bin || '\\x00'::bytea",
]


def test_diff_renders_every_type_as_the_type_and_writes_every_difference(
    cli: Any, settings: Settings, pg: psycopg.Connection[Any], delta_root: str, tmp_path: Path
) -> None:
    from tests.reconciler.test_hash_contract import base_rows

    alltypes.create(pg)
    config = tmp_path / "alltypes.toml"
    config.write_text("[[tables]]\nname = 'all_types'\nkey_columns = ['k_text', 'k_int']\n")
    configured = with_overrides(settings, tables=(alltypes.SPEC,))
    write_delta_month(
        f"{delta_root}/all_types", OCT, pa.Table.from_pylist(base_rows(), schema=alltypes.ARROW)
    )
    MonthWriter(configured).write_month(alltypes.SPEC, OCT)
    pg.execute(f"UPDATE ranking.all_types SET {', '.join(UPDATES)} WHERE k_int = 5")
    pg.execute("DELETE FROM ranking.all_types WHERE k_int = 9")
    args = ("diff", "--year-month", "2026-10", "--table", "all_types", "--config", str(config))
    done = cli("reconciler", *args, "--json", "--limit", "1")
    document = json.loads(done.stdout)
    (changed,) = document["changed"]
    assert changed["key"] == {"k_text": "key-5", "k_int": 5}
    assert {name: (v["delta"], v["postgres"]) for name, v in changed["values"].items()} == RENDERED
    for path in (tmp_path / "all.parquet", tmp_path / "all.csv"):
        written = cli("reconciler", *args, "--limit", "1", "--output", str(path))
        assert written.returncode == 1, written.stderr
        table = (
            pq.read_table(path)
            if path.suffix == ".parquet"
            else pandas.read_csv(path, dtype=str, keep_default_na=False)
        )
        frame = table.to_pandas() if isinstance(table, pa.Table) else table
        assert list(frame.columns[:4]) == ["k_text", "k_int", "kind", "column"]
        assert sorted(frame["kind"].unique()) == ["changed", "only_in_delta"]  # not limited
        changed_rows = frame[frame["kind"] == "changed"]
        assert len(changed_rows) == len(RENDERED)  # one row per differing column
        by_column = dict(zip(changed_rows["column"], changed_rows["postgres_value"], strict=True))
        assert by_column["f"] == "NaN" and by_column["bin"] == "\\x05fa00"
    # The same for notebooks.
    frame = diff_month("all_types", "2026-10", settings=configured).to_pandas()
    assert set(frame["kind"]) == {"changed", "only_in_delta"} and len(frame) == len(RENDERED) + 1


def test_diff_output_must_be_parquet_or_csv(cli: Any) -> None:
    done = cli(
        "reconciler",
        "diff",
        "--year-month",
        "2026-10",
        "--table",
        "ranking_signal",
        "--output",
        "x.json",
    )
    assert ".parquet or .csv" in one_error_line(done)


# -- errors an operator can act on --------------------------------------------------------------
@pytest.fixture
def unmigrated(pg_server: str) -> Iterator[str]:
    with own_database(pg_server, "reconciler_bare") as dsn:
        yield dsn


def test_a_database_never_migrated_says_run_migrate(
    cli: Any, unmigrated: str, write_month: WriteMonth, tmp_path: Path
) -> None:
    write_month("ranking_signal", "2026-10", rows=10)
    write_month("composite_signal_daily", "2026-10", rows=10)
    for script, args in (
        ("reconciler", ["check", "--year-month", "2026-10"]),
        ("reconciler", ["diff", "--year-month", "2026-10", "--table", "ranking_signal"]),
        ("reconciler", ["status"]),
        ("reconciler", ["repair", "--year-month", "2026-10"]),
        ("replicator", ["write", "--year-month", "2026-10"]),
    ):
        done = cli(script, *args, POSTGRES_DSN=unmigrated)
        line = one_error_line(done)
        assert "run `reconciler migrate`" in line, line
        assert "LINE 1" not in line and "^" not in line
    # The daemon says so too, instead of "Postgres unavailable".
    port = free_port()
    daemon = subprocess.Popen(
        [str(BIN / "reconciler"), "run", "--metrics-addr", f"127.0.0.1:{port}"],
        env={**os.environ, "POSTGRES_DSN": unmigrated, "SIGNALS_DELTA_ROOT": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import urllib.error
        import urllib.request

        def not_ready() -> str:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except urllib.error.HTTPError as refused:
                return refused.read().decode()
            except OSError:
                return ""
            return "ready"

        until(lambda: "migrate" in not_ready(), 30, "/readyz to say why")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=20)
    assert "not migrated" in stderr and "Postgres unavailable" not in stderr


COMMANDS = [
    ("reconciler", ["migrate", "--json"]),
    ("reconciler", ["check", "--year-month", "2026-10", "--json"]),
    ("reconciler", ["diff", "--year-month", "2026-10", "--table", "ranking_signal", "--json"]),
    ("reconciler", ["repair", "--year-month", "2026-10", "--json"]),
    ("reconciler", ["status", "--json"]),
    ("replicator", ["write", "--year-month", "2026-10", "--json"]),
]


@pytest.mark.parametrize(("script", "args"), COMMANDS, ids=[" ".join(a[:1]) for _, a in COMMANDS])
def test_json_is_one_document_even_when_the_connection_fails(
    cli: Any, script: str, args: list[str], write_month: WriteMonth
) -> None:
    write_month("ranking_signal", "2026-10", rows=10)
    write_month("composite_signal_daily", "2026-10", rows=10)
    done = cli(script, *args, POSTGRES_DSN="postgresql://u:Secr3tPw@127.0.0.1:1/x")
    assert done.returncode == 2, done.stderr
    document = json.loads(done.stdout)  # exactly one document, nothing else on stdout
    assert document["status"] == "error"
    assert "127.0.0.1:1" in document["error"] and "connection refused" in document["error"]
    assert "Secr3tPw" not in done.stdout + done.stderr
    assert one_error_line(done) == f"error: {document['error']}"


def test_connection_refused_unsupported_scheme_and_storage_errors_are_one_line(
    cli: Any, silent_server: SilentServer
) -> None:
    refused = cli(
        "reconciler",
        "check",
        "--year-month",
        "2026-10",
        POSTGRES_DSN="postgresql://u:pw@127.0.0.1:1/db",
    )
    line = one_error_line(refused)
    assert "127.0.0.1:1/db" in line and "connection refused" in line and "pw" not in line
    scheme = cli(
        "reconciler", "check", "--year-month", "2026-10", SIGNALS_DELTA_ROOT="s3://bucket/ranking"
    )
    line = one_error_line(scheme)
    assert "s3://" in line and "abfss://" in line and "local path" in line
    azure = cli(
        "replicator",
        "write",
        "--year-month",
        "2026-10",
        "--table",
        "ranking_signal",
        SIGNALS_DELTA_ROOT="abfss://c@nowhere.invalid/ranking",
        AZURE_STORAGE_ACCOUNT_KEY="eA==",
        AZURE_STORAGE_TIMEOUT="2s",
    )
    line = one_error_line(azure)
    assert "abfss://c@nowhere.invalid/ranking" in line and "↳" not in line and "\x1b" not in line
    assert len(azure.stderr.strip().splitlines()) <= 2, azure.stderr  # the error (and its log)


def test_version_and_global_options_after_the_subcommand(cli: Any, write_month: WriteMonth) -> None:
    for script in ("reconciler", "replicator"):
        done = cli(script, "--version")
        assert done.returncode == 0 and __version__ in done.stdout
    write_month("ranking_signal", "2026-10", rows=10)
    logged = cli(
        "replicator", "write", "--year-month", "2026-10", "--table", "ranking_signal", "--json-logs"
    )
    assert logged.returncode == 0, logged.stderr
    lines = [json.loads(line) for line in logged.stderr.splitlines()]  # every line is JSON
    assert any(line.get("table") == "ranking_signal" for line in lines)
    verbose = cli(
        "reconciler",
        "check",
        "--year-month",
        "2026-10",
        "--table",
        "ranking_signal",
        "-v",
        "--json-logs",
    )
    lines = [json.loads(line) for line in verbose.stderr.splitlines()]
    assert any(
        line["level"] == "debug" and line["logger"].startswith("reconciler") for line in lines
    )


# -- human output and exit codes ----------------------------------------------------------------
def test_status_exit_codes_and_no_internals(
    cli: Any, settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    from reconciler.daemon import Daemon

    for table in ("ranking_signal", "composite_signal_daily"):
        write_month(table, "2026-10", rows=20)
        replicate(settings, table)
    never = cli("reconciler", "status")
    assert never.returncode == 1  # nothing compared yet: not known to be in sync
    assert "None" not in never.stdout and "never" in never.stdout
    daemon = Daemon(lambda: settings)
    try:
        daemon.run_cycle()
    finally:
        daemon.leader.release()
    assert cli("reconciler", "status").returncode == 0
    assert cli("reconciler", "status", "--require-in-sync").returncode == 0  # kept as an alias
    write_month("ranking_signal", "2026-10", rows=25, seed=3)  # Delta moves on
    lagging = cli("reconciler", "status", "--json")
    assert lagging.returncode == 1
    months = {m["table"]: m for m in json.loads(lagging.stdout)["months"]}
    assert months["ranking_signal"]["status"] == "lagging"
    human = cli("reconciler", "status")
    assert "Postgres holds version 0" in human.stdout and "None" not in human.stdout
    broken = cli("reconciler", "status", "--json", SIGNALS_DELTA_ROOT="/nonexistent/root")
    assert broken.returncode == 2
    document = json.loads(broken.stdout)
    assert {m["status"] for m in document["months"]} == {"error"}  # never in_sync
    assert document["errors"]


def test_check_output_shows_no_internals(
    cli: Any, settings: Settings, write_month: WriteMonth
) -> None:
    write_month("ranking_signal", "2026-10", rows=20)
    missing = cli("reconciler", "check", "--year-month", "2026-10", "--table", "ranking_signal")
    assert missing.returncode == 1
    assert "None" not in missing.stdout and "missing" in missing.stdout
    replicate(settings)
    in_sync = cli("reconciler", "check", "--year-month", "2026-10", "--table", "ranking_signal")
    assert in_sync.returncode == 0
    assert "synced v" not in in_sync.stdout and "None" not in in_sync.stdout
    write_month("ranking_signal", "2026-10", rows=21, seed=4)
    lagging = cli("reconciler", "check", "--year-month", "2026-10", "--table", "ranking_signal")
    assert lagging.returncode == 1
    assert "Delta changed the month at version 1" in lagging.stdout
    assert "Postgres holds version 0" in lagging.stdout and "pending for" in lagging.stdout
    assert lagging.stdout.count("version 1") == 1  # said once


# -- the demo -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_demo_in_the_same_folder_is_refused_and_the_first_left_intact(
    tmp_path: Path, own_postgres: None
) -> None:
    folder = tmp_path / "demo"
    first = subprocess.Popen(
        [
            str(BIN / "reconciler"),
            "demo",
            "--dir",
            str(folder),
            "--keep-running",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(lambda: _demo_rows(folder) == 120_500, 180, "the demo to finish its story")
        delta_before = sorted(p.name for p in (folder / "delta").rglob("*"))
        second = subprocess.run(
            [
                str(BIN / "reconciler"),
                "demo",
                "--dir",
                str(folder),
                "--metrics-addr",
                "127.0.0.1:0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: another demo (pid {first.pid}) is running in {folder}: stop it, or pass "
            "--dir for a folder of its own"
        ]
        assert sorted(p.name for p in (folder / "delta").rglob("*")) == delta_before
        assert _demo_rows(folder) == 120_500  # its Postgres still up, still full
    finally:
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=60)
    assert first.returncode == 0
    story = [line for line in out.splitlines() if line.strip()]
    assert len(story) <= 40, out
    assert "initdb" not in out and "pg_ctl" not in out and "XDG_RUNTIME_DIR" not in out
    assert "Ctrl-C" in out and "/metrics" in out and "--keep-running" not in out


def _demo_rows(folder: Path) -> int | None:
    """Rows of ranking_signal in the demo's Postgres, once it says where it is."""
    env_file = folder / "demo.env"
    if not env_file.exists():
        return None
    env = dict(
        line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines()
    )
    try:
        with psycopg.connect(env["POSTGRES_DSN"].strip("'"), connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM ranking.ranking_signal").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None
