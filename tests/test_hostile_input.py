"""Hostile input: fuzzed arguments and configuration get exit 2 and a clear message, never a
traceback or a write; the DSN's password never leaks through any command; /metrics is guarded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.cli import main as reconciler_main
from replicator.cli import main as replicator_main
from tests.fix_db import SilentServer

WEIRD = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "\x00",
            "2026-02;DROP TABLE x",
            "../../etc",
            "2026-1",
            "-1",
            "1e309",
            "9" * 40,
            "x" * 1_000_000,
            "NaN",
            "inf",
            "2026-00",
            "\uff10\uff11",
        ]
    ),
)
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def invoke(main: Any, args: list[str]) -> Any:
    return CliRunner().invoke(main, args, catch_exceptions=True)


@pytest.mark.slow  # 120 command lines
@FUZZ
@given(month=WEIRD)
def test_fuzzed_month_is_refused_before_connecting(month: str, tmp_path_factory: Any) -> None:
    if (
        len(month) == 7
        and month[:4].isdigit()
        and month[4] == "-"
        and month[5:].isdigit()
        and 1 <= int(month[5:]) <= 12
        and month.isascii()
    ):
        return  # a valid month
    server = SilentServer()
    try:
        for main, command in (
            (replicator_main, ["write"]),
            (reconciler_main, ["check"]),
            (reconciler_main, ["repair"]),
        ):
            result = invoke(main, [*command, "--year-month", month, "--dsn", server.dsn()])
            assert result.exit_code == 2, (month, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit)
            assert "Traceback" not in result.output
        assert server.accepted == []
    finally:
        server.close()


@FUZZ
@given(limit=st.one_of(st.integers(max_value=0), WEIRD))
def test_fuzzed_limit_is_refused(limit: Any) -> None:
    if str(limit).strip().isdigit() and str(limit).strip().isascii() and int(str(limit)) > 0:
        return  # a valid limit
    result = invoke(
        reconciler_main,
        [
            "diff",
            "--year-month",
            "2026-10",
            "--table",
            "ranking_signal",
            "--limit",
            str(limit),
            "--dsn",
            "postgresql://x@127.0.0.1:1/x",
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output


TOML_VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20).map(json.dumps),
    st.just('"a\\u0000b"'),
    st.just("true"),
    st.just("[1, 2]"),
    st.just("{ x = 1 }"),
)
KEYS = st.sampled_from(
    [
        "daemon.interval_seconds",
        "daemon.retention_months",
        "daemon.metrics_addr",
        "auto_repair.max_per_cycle",
        "auto_repair.grace_period_seconds",
        "postgres.batch_rows",
        "digest.buckets",
        "delta.root",
        "tables.name",
        "tables.key_columns",
        "nonsense.key",
        "daemon.nonsense",
    ]
)


@FUZZ
@given(key=KEYS, value=TOML_VALUES)
def test_fuzzed_config_never_crashes(key: str, value: str, tmp_path_factory: Any) -> None:
    section, name = key.split(".")
    if value in ("nan", "inf", "-inf"):
        value = {"nan": "nan", "inf": "inf", "-inf": "-inf"}[value]
    if section == "tables":
        body = (
            "[[tables]]\nname = 'ranking_signal'\nkey_columns = ['signal_date']\n"
            f"{name} = {value}\n"
        )
    else:
        body = f"[{section}]\n{name} = {value}\n"
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(body)
    result = invoke(
        reconciler_main,
        [
            "check",
            "--year-month",
            "2026-10",
            "--config",
            str(path),
            "--dsn",
            "postgresql://x@127.0.0.1:1/x",
        ],
    )
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output


@pytest.mark.parametrize("name", ['a"b', "a;b", "tablé", "DROP TABLE x", "a b", "", "1abc"])
def test_identifiers_with_quotes_semicolons_or_unicode_are_rejected(
    tmp_path: Path, name: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[[tables]]\nname = {json.dumps(name)}\nkey_columns = ['k']\n")
    result = invoke(
        reconciler_main,
        [
            "check",
            "--year-month",
            "2026-10",
            "--config",
            str(config),
            "--dsn",
            "postgresql://x@127.0.0.1:1/x",
        ],
    )
    assert result.exit_code == 2
    assert "not a plain identifier" in result.output


CANARY_PASSWORD = "Cn4ry%p@ss w'rd"
CANARY_URI = "Cn4ry%25p%40ss%20w'rd"


def test_canary_password_never_leaks_from_any_command(
    cli_env: dict[str, str], silent_server: SilentServer, tmp_path: Path, pg_dsn: str
) -> None:
    config = tmp_path / "fast.toml"
    config.write_text("[postgres]\nconnect_timeout_seconds = 2\n")
    shapes = [
        f"postgresql://u:{CANARY_URI}@127.0.0.1:1/x",
        f"postgresql://u@127.0.0.1:{silent_server.port}/x?password={CANARY_URI}",
        "host=127.0.0.1 port=1 dbname=x user=u password='Cn4ry%p@ss w\\'rd'",
        "host=127.0.0.1 port=1 password=Cn4ry%p@ss%w garbage",
    ]
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    if str(params.get("host", "")).startswith("127."):
        shapes.append(
            f"postgresql://nobody:{CANARY_URI}@{params['host']}:"
            f"{params.get('port', 5432)}/no_such_db"
        )
    commands = [
        ["migrate"],
        ["check", "--year-month", "2026-10", "--json"],
        ["diff", "--year-month", "2026-10", "--table", "ranking_signal"],
        ["repair", "--year-month", "2026-10", "--json"],
        ["status", "--json"],
        ["run", "--once"],
    ]
    for dsn in shapes:
        for command in commands:
            result = invoke(
                reconciler_main, ["--json-logs", *command, "--dsn", dsn, "--config", str(config)]
            )
            text = result.output + repr(result.exception)
            assert result.exit_code == 2, (command, dsn, text)
            for fragment in ("Cn4ry", CANARY_URI, "p@ss"):
                assert fragment not in text, (command, dsn, text)
