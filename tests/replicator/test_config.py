from pathlib import Path

import pytest

from replicator.config import ConfigError, Layout, load_settings
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
        (
            "[daemon]\ninterval_seconds = true\n",
            "daemon.interval_seconds must be a number, got True",
        ),
        ("[postgres]\nlayout = 'flat'\n", "postgres.layout must be one of plain, partitioned"),
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


def test_every_key_can_be_set_from_the_environment(tmp_path: Path) -> None:
    """The rule: RECONCILER_<SECTION>_<KEY>, upper case; typed; tables and mappings as JSON."""
    path = write(tmp_path, "[daemon]\ninterval_seconds = 5\nretention_months = 12\n")
    env = {
        "RECONCILER_CONFIG": path,
        "RECONCILER_DAEMON_INTERVAL_SECONDS": "2.5",
        "RECONCILER_DAEMON_METRICS_ADDR": "0.0.0.0:10742",
        "RECONCILER_AUTO_REPAIR_ENABLED": "yes",
        "RECONCILER_AUTO_REPAIR_MAX_PER_HOUR": "3",
        "RECONCILER_DIGEST_BUCKETS": "64",
        "RECONCILER_DELTA_STORAGE_OPTIONS": '{"use_emulator": "true"}',
        "RECONCILER_POSTGRES_PASSWORD_COMMAND": "",  # empty: ignored
        "RECONCILER_TABLES": '[{"name": "t", "key_columns": ["k"]}]',
        "RECONCILER_TEST_DSN": "not a section: ignored",
    }
    settings = load_settings(environ=env)
    assert settings.daemon.interval_seconds == 2.5
    assert settings.daemon.retention_months == 12  # from the file
    assert settings.daemon.metrics_addr == "0.0.0.0:10742"
    assert settings.auto_repair.enabled is True and settings.auto_repair.max_per_hour == 3
    assert settings.digest.buckets == 64
    assert settings.delta.storage_options == {"use_emulator": "true"}
    assert settings.postgres.password_command is None
    assert [t.name for t in settings.tables] == ["t"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RECONCILER_DAEMON_INTERVAL": "5"}, "unknown variable RECONCILER_DAEMON_INTERVAL"),
        ({"RECONCILER_DAEMON_INTERVAL_SECONDS": "soon"}, "must be a number"),
        ({"RECONCILER_DIGEST_BUCKETS": "100"}, "power of two"),
        ({"RECONCILER_AUTO_REPAIR_ENABLED": "maybe"}, "true or false"),
        ({"RECONCILER_DELTA_STORAGE_OPTIONS": "x=y"}, "must be a JSON object"),
        ({"RECONCILER_TABLES": "[oops"}, "JSON array"),
        ({"POSTGRES_DSN": "postgresql://a@b/c", "POSTGRES_DSN_FILE": "/x"}, "both set"),
        ({"POSTGRES_DSN_FILE": "/nonexistent/dsn"}, "cannot read POSTGRES_DSN_FILE"),
        (
            {
                "RECONCILER_POSTGRES_PASSWORD_COMMAND": "x",
                "RECONCILER_POSTGRES_AZURE_ENTRA_AUTH": "1",
            },
            "exclude each other",
        ),
        ({"RECONCILER_POSTGRES_AZURE_CLIENT_ID": "abc"}, "needs postgres.azure_entra_auth"),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_the_dsn_comes_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://app:Fi1e-Secret@db.example:5433/serving\n")
    settings = load_settings(environ={"POSTGRES_DSN_FILE": str(secret)})
    dsn = settings.require_dsn()
    assert dsn.target == "db.example:5433/serving"
    assert "Fi1e-Secret" in dsn.conninfo() and "Fi1e-Secret" not in repr(settings)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(environ={"POSTGRES_DSN_FILE": str(empty)})


@pytest.mark.parametrize(
    "key", ["tls_cert_file", "tls_key_file", "basic_auth_user", "basic_auth_password"]
)
def test_replaced_keys_point_to_the_web_config(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"daemon.{key} is no longer supported.*web_config_file"):
        load_settings(config_path=write(tmp_path, f"[daemon]\n{key} = 'x'\n"), environ={})


def test_the_default_metrics_port_is_no_exporters() -> None:
    # 9187 is postgres_exporter's; the whole 9100-9999 range is allocated on the Prometheus wiki.
    port = int(load_settings(environ={}).daemon.metrics_addr.rsplit(":", 1)[1])
    assert port == 10742


def test_kubernetes_service_links_are_not_settings() -> None:
    """A Service named reconciler-postgres sets RECONCILER_POSTGRES_SERVICE_HOST and friends."""
    env = {
        "RECONCILER_POSTGRES_SERVICE_HOST": "10.0.0.1",
        "RECONCILER_POSTGRES_SERVICE_PORT": "5432",
        "RECONCILER_POSTGRES_PORT": "tcp://10.0.0.1:5432",
        "RECONCILER_POSTGRES_PORT_5432_TCP_ADDR": "10.0.0.1",
    }
    assert load_settings(environ=env).postgres.layout is Layout.PLAIN


def test_a_port_alone_listens_on_every_interface() -> None:
    assert load_settings(environ={"RECONCILER_DAEMON_METRICS_ADDR": ":10742"}).daemon.metrics_addr
    from replicator.config import parse_host_port

    assert parse_host_port(":10742") == ("0.0.0.0", 10742)
