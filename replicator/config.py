"""The one configuration of the system: TOML file, environment overrides, command-line overrides.

Unknown keys are rejected with the key named, identifiers are checked before anything connects,
and the DSN is kept inside a `Dsn` so that it cannot be printed by accident.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from replicator.errors import InputError
from replicator.secrets import Dsn

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SCHEMA = "ranking"


class ConfigError(InputError, ValueError):
    """The configuration is invalid; the message names the key or value at fault."""


def check_identifier(value: object, where: str) -> str:
    """Only plain lower-case SQL identifiers are accepted, so that quoting can never be at stake."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ConfigError(
            f"{where}: {value!r} is not a plain identifier (lower-case letters, digits, "
            "underscore; at most 63 characters, not starting with a digit)"
        )
    return value


@dataclass(frozen=True)
class TableSpec:
    """One month-partitioned signal table: where it lives in Delta and in Postgres."""

    name: str
    key_columns: tuple[str, ...]
    delta_location: str | None = None  # default: <delta root>/<name>
    postgres_schema: str = SCHEMA
    postgres_table: str = ""  # default: name

    def __post_init__(self) -> None:
        check_identifier(self.name, "table name")
        check_identifier(self.postgres_schema, f"table {self.name}: postgres_schema")
        if not self.postgres_table:
            object.__setattr__(self, "postgres_table", self.name)
        check_identifier(self.postgres_table, f"table {self.name}: postgres_table")
        if not self.key_columns:
            raise ConfigError(f"table {self.name}: key_columns must name at least one column")
        for column in self.key_columns:
            check_identifier(column, f"table {self.name}: key column")
        if "year_month" in self.key_columns:
            raise ConfigError(f"table {self.name}: year_month is implied, not a key column")

    def delta_uri(self, root: str | None) -> str:
        if self.delta_location:
            return self.delta_location
        if not root:
            raise ConfigError(
                f"table {self.name}: no Delta location; set SIGNALS_DELTA_ROOT, --delta-root "
                "or tables.delta_location"
            )
        return root.rstrip("/") + "/" + self.name


DEFAULT_TABLES: tuple[TableSpec, ...] = (
    TableSpec("ranking_signal", ("signal_date", "entity_id", "signal_name")),
    TableSpec("composite_signal_daily", ("signal_date", "entity_id")),
)


@dataclass(frozen=True)
class AutoRepairSettings:
    enabled: bool = False
    grace_period_seconds: float = 300.0
    max_per_cycle: int = 2
    max_per_hour: int = 10
    circuit_breaker_months: int = 5
    dry_run: bool = False


@dataclass(frozen=True)
class DaemonSettings:
    interval_seconds: float = 60.0
    retention_months: int = 36
    deep_check_period_seconds: float = 6 * 3600.0
    metrics_addr: str = "127.0.0.1:9187"
    leader_lease_seconds: float = 30.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password: str | None = None
    json_logs: bool = False


@dataclass(frozen=True)
class Settings:
    dsn: Dsn | None = None
    delta_root: str | None = None
    storage_options: Mapping[str, str] = field(default_factory=dict)
    write_required: bool = True
    verify_counts: bool = False
    connect_timeout_seconds: int = 10
    batch_rows: int = 131_072
    digest_buckets: int = 256
    tables: tuple[TableSpec, ...] = DEFAULT_TABLES
    daemon: DaemonSettings = DaemonSettings()
    auto_repair: AutoRepairSettings = AutoRepairSettings()

    def table(self, name: str) -> TableSpec:
        for spec in self.tables:
            if spec.name == name:
                return spec
        known = ", ".join(t.name for t in self.tables)
        raise ConfigError(f"unknown table {name!r}; configured tables: {known}")

    def select_tables(self, names: tuple[str, ...] | list[str]) -> tuple[TableSpec, ...]:
        """The named tables (all by default), each with a Delta location, or ConfigError."""
        specs = tuple(self.table(n) for n in names) if names else self.tables
        for spec in specs:
            self.table_uri(spec)
        return specs

    def require_dsn(self) -> Dsn:
        if self.dsn is None:
            raise ConfigError("POSTGRES_DSN is not set (or pass --dsn)")
        return self.dsn

    def table_uri(self, spec: TableSpec) -> str:
        return spec.delta_uri(self.delta_root)


def parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes", "on"}:
        return True
    if lowered in {"false", "0", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


_TOP_KEYS = {"delta", "postgres", "tables", "daemon", "auto_repair", "digest"}


def _take(
    section: dict[str, Any], allowed: dict[str, type | tuple[type, ...]], where: str
) -> dict[str, Any]:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]} (allowed: {', '.join(sorted(allowed))})"
        )
    for key, value in section.items():
        expected = allowed[key]
        # bool is an int in Python; a number where a flag is expected (or the reverse) is an error.
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise ConfigError(f"{where}.{key}: wrong type {type(value).__name__}")
    return section


def _positive(value: float, name: str) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def _from_toml(document: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    result: dict[str, Any] = {}
    number = (int, float)
    delta = _take(dict(document.get("delta", {})), {"root": str, "storage_options": dict}, "delta")
    if "root" in delta:
        result["delta_root"] = delta["root"]
    if "storage_options" in delta:
        options = delta["storage_options"]
        if not all(isinstance(v, str) for v in options.values()):
            raise ConfigError("delta.storage_options: every value must be a string")
        result["storage_options"] = dict(options)
    postgres = _take(
        dict(document.get("postgres", {})),
        {
            "write_required": bool,
            "verify_counts": bool,
            "connect_timeout_seconds": int,
            "batch_rows": int,
        },
        "postgres",
    )
    result.update(postgres)
    digest = _take(dict(document.get("digest", {})), {"buckets": int}, "digest")
    if "buckets" in digest:
        buckets = digest["buckets"]
        if buckets < 1 or buckets > 65536 or buckets & (buckets - 1):
            raise ConfigError(
                f"digest.buckets must be a power of two from 1 to 65536, got {buckets}"
            )
        result["digest_buckets"] = buckets
    if "tables" in document:
        tables = document["tables"]
        if not isinstance(tables, list) or not tables:
            raise ConfigError("tables must be a non-empty array of [[tables]] entries")
        specs = []
        for index, entry in enumerate(tables):
            where = f"tables[{index}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be a table")
            _take(
                entry,
                {
                    "name": str,
                    "key_columns": list,
                    "delta_location": str,
                    "postgres_schema": str,
                    "postgres_table": str,
                },
                where,
            )
            if "name" not in entry or "key_columns" not in entry:
                raise ConfigError(f"{where} needs name and key_columns")
            specs.append(
                TableSpec(
                    name=check_identifier(entry["name"], f"{where}.name"),
                    key_columns=tuple(entry["key_columns"]),
                    delta_location=entry.get("delta_location"),
                    postgres_schema=entry.get("postgres_schema", SCHEMA),
                    postgres_table=entry.get("postgres_table", ""),
                )
            )
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError("tables: a table name is configured twice")
        result["tables"] = tuple(specs)
    daemon = _take(
        dict(document.get("daemon", {})),
        {
            "interval_seconds": number,
            "retention_months": int,
            "deep_check_period_seconds": number,
            "metrics_addr": str,
            "leader_lease_seconds": number,
            "tls_cert_file": str,
            "tls_key_file": str,
            "basic_auth_user": str,
            "basic_auth_password": str,
            "json_logs": bool,
        },
        "daemon",
    )
    for key in (
        "interval_seconds",
        "retention_months",
        "deep_check_period_seconds",
        "leader_lease_seconds",
    ):
        if key in daemon:
            _positive(daemon[key], f"daemon.{key}")
    if ("tls_cert_file" in daemon) != ("tls_key_file" in daemon):
        raise ConfigError("daemon.tls_cert_file and daemon.tls_key_file go together")
    if ("basic_auth_user" in daemon) != ("basic_auth_password" in daemon):
        raise ConfigError("daemon.basic_auth_user and daemon.basic_auth_password go together")
    if "metrics_addr" in daemon:
        parse_host_port(daemon["metrics_addr"])
    result["daemon"] = DaemonSettings(**daemon)
    repair = _take(
        dict(document.get("auto_repair", {})),
        {
            "enabled": bool,
            "grace_period_seconds": number,
            "max_per_cycle": int,
            "max_per_hour": int,
            "circuit_breaker_months": int,
            "dry_run": bool,
        },
        "auto_repair",
    )
    for key in ("max_per_cycle", "max_per_hour", "circuit_breaker_months"):
        if key in repair:
            _positive(repair[key], f"auto_repair.{key}")
    if repair.get("grace_period_seconds", 0) < 0:
        raise ConfigError("auto_repair.grace_period_seconds must not be negative")
    result["auto_repair"] = AutoRepairSettings(**repair)
    return result


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics address must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def load_settings(
    *,
    config_path: str | None = None,
    dsn: str | None = None,
    delta_root: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from (lowest to highest) defaults, the TOML file, the environment, arguments."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_path or env.get("RECONCILER_CONFIG")
    if path:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        values.update(_from_toml(document))
    if env.get("SIGNALS_DELTA_ROOT"):
        values["delta_root"] = env["SIGNALS_DELTA_ROOT"]
    for name, key in (
        ("POSTGRES_SIGNALS_WRITE_REQUIRED", "write_required"),
        ("POSTGRES_SIGNALS_VERIFY_COUNTS", "verify_counts"),
    ):
        if env.get(name, "").strip():
            values[key] = parse_bool(env[name], name)
    raw_dsn = dsn if dsn is not None else env.get("POSTGRES_DSN")
    if raw_dsn is not None and raw_dsn.strip():
        values["dsn"] = Dsn(raw_dsn)
    if delta_root:
        values["delta_root"] = delta_root
    return Settings(**values)


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
