from pathlib import Path

import pytest

from replicator.config import ConfigError, load_settings
from replicator.secrets import DsnError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_two_spec_tables() -> None:
    settings = load_settings(environ={})
    assert [t.name for t in settings.tables] == ["ranking_signal", "composite_signal_daily"]
    assert settings.postgres.write_required is True
    assert settings.postgres.verify_counts is False
    assert settings.dsn is None
    assert settings.daemon.retention_months == 36
    assert settings.auto_repair.enabled is False


def test_environment_overrides_file_and_arguments_override_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[delta]\nroot = "/from/file"\n[postgres]\nwrite_required = true\n')
    env = {
        "RECONCILER_CONFIG": path,
        "SIGNALS_DELTA_ROOT": "/from/env",
        "POSTGRES_SIGNALS_WRITE_REQUIRED": "false",
        "POSTGRES_SIGNALS_VERIFY_COUNTS": "TRUE",
    }
    settings = load_settings(environ=env)
    assert settings.delta.root == "/from/env"
    assert settings.postgres.write_required is False
    assert settings.postgres.verify_counts is True
    assert load_settings(environ=env, delta_root="/from/arg").delta.root == "/from/arg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[delta]\nrooot = 'x'\n", "unknown key delta.rooot"),
        ("colour = 1\n", "unknown key colour"),
        ("[[tables]]\nname = 'a;b'\nkey_columns = ['k']\n", "not a plain identifier"),
        (
            "[[tables]]\nname = 'ok'\nkey_columns = ['k\"; DROP TABLE x; --']\n",
            "not a plain identifier",
        ),
        ("[[tables]]\nname = 'tablé'\nkey_columns = ['k']\n", "not a plain identifier"),
        ("[[tables]]\nname = 't'\nkey_columns = []\n", "at least one column"),
        ("[daemon]\ninterval_seconds = -1\n", "must be positive"),
        ("[daemon]\ninterval_seconds = true\n", "wrong type"),
        ("[daemon]\nmetrics_addr = 'nohost'\n", "HOST:PORT"),
        ("[digest]\nbuckets = 100\n", "power of two"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(config_path=write(tmp_path, text), environ={})


def test_bad_flag_value_is_named() -> None:
    with pytest.raises(ConfigError, match="POSTGRES_SIGNALS_WRITE_REQUIRED"):
        load_settings(environ={"POSTGRES_SIGNALS_WRITE_REQUIRED": "maybe"})


def test_unknown_table_lists_the_configured_ones() -> None:
    with pytest.raises(ConfigError, match="ranking_signal, composite_signal_daily"):
        load_settings(environ={}).table("nope")


def test_malformed_dsn_is_refused_without_echoing_it() -> None:
    with pytest.raises(DsnError) as info:
        load_settings(environ={"POSTGRES_DSN": "host=x password=CANARY123 junk"})
    assert "CANARY123" not in str(info.value)
