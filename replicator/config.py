"""The one configuration of the system: TOML file, environment overrides, command-line overrides.

Each TOML section is declared once, as a frozen dataclass below; the parser reads the fields (name,
type, default, `check`) from the dataclass itself, so a key cannot be known to one and not the
other. Unknown keys are rejected with the key named, identifiers are checked before anything
connects, and the DSN is kept inside a `Dsn` so that it cannot be printed by accident.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.errors import InputError
from replicator.secrets import Dsn, EntraToken, PasswordCommand

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


# -- per-field checks, attached to dataclass fields as metadata["check"] -----------------------
Check = Callable[[Any, str], None]


def positive(value: float, name: str) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def not_negative(value: float, name: str) -> None:
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")


def power_of_two(value: int, name: str) -> None:
    if value < 1 or value > 65536 or value & (value - 1):
        raise ConfigError(f"{name} must be a power of two from 1 to 65536, got {value}")


def host_port(value: str, name: str) -> None:
    parse_host_port(value)


def checked(default: Any, check: Check) -> Any:
    """A dataclass field with a default and a check run on every configured value."""
    return field(default=default, metadata={"check": check})


# 10742: outside 9100-9999, the range the Prometheus wiki's default port allocations list
# (9187 is postgres_exporter's), and allocated to no exporter there.
DEFAULT_METRICS_ADDR = "127.0.0.1:10742"


def parse_host_port(value: str) -> tuple[str, int]:
    """HOST:PORT, or :PORT for every interface (as the exporters write it)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics address must be HOST:PORT or :PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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

    @property
    def qualified_name(self) -> str:
        """`schema.table` as text (identifiers are plain, so no quoting is at stake)."""
        return f"{self.postgres_schema}.{self.postgres_table}"

    def delta_uri(self, root: str | None) -> str:
        if self.delta_location:
            return check_delta_location(self.delta_location, f"table {self.name}")
        if not root:
            raise ConfigError(
                f"table {self.name}: no Delta location; set SIGNALS_DELTA_ROOT, --delta-root "
                "or tables.delta_location"
            )
        return check_delta_location(root, "the Delta root").rstrip("/") + "/" + self.name


# Where the Delta tables may live: local disk, or Azure storage (ADLS Gen2, Blob) through
# delta-rs's object store.
DELTA_SCHEMES = ("file", "az", "azure", "abfs", "abfss", "adl")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def check_delta_location(uri: str, what: str) -> str:
    match = _SCHEME.match(uri)
    if match and match.group(1).lower() not in DELTA_SCHEMES:
        supported = ", ".join(f"{s}://" for s in DELTA_SCHEMES)
        raise ConfigError(
            f"{what} {uri!r} uses the unsupported scheme {match.group(1)}:// (supported: a local "
            f"path, {supported})"
        )
    return uri


class Layout(enum.StrEnum):
    """How a signal table is laid out in Postgres (replicator/layout.py says what each means)."""

    PLAIN = "plain"
    PARTITIONED = "partitioned"


DEFAULT_TABLES: tuple[TableSpec, ...] = (
    TableSpec("ranking_signal", ("signal_date", "entity_id", "signal_name")),
    TableSpec("composite_signal_daily", ("signal_date", "entity_id")),
)


# -- the sections of the TOML file ----------------------------------------------------------
@dataclass(frozen=True)
class DeltaSettings:
    root: str | None = None
    storage_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PostgresSettings:
    write_required: bool = True
    verify_counts: bool = False
    connect_timeout_seconds: int = checked(10, positive)
    batch_rows: int = checked(131_072, positive)
    # plain (DELETE + COPY) or partitioned (a partition per month, swapped): what `reconciler
    # migrate` establishes; writes follow what the table is (replicator/layout.py).
    layout: Layout = Layout.PLAIN
    # A password fetched for every new connection (a short-lived token): a command whose
    # standard output is the password, or Microsoft Entra ID through azure-identity.
    password_command: str | None = None
    azure_entra_auth: bool = False
    azure_client_id: str | None = None  # a user-assigned managed identity; default: the system one

    def __post_init__(self) -> None:
        if self.password_command and self.azure_entra_auth:
            raise ConfigError(
                "postgres.password_command and postgres.azure_entra_auth exclude each other"
            )
        if self.azure_client_id and not self.azure_entra_auth:
            raise ConfigError("postgres.azure_client_id needs postgres.azure_entra_auth = true")


def available_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def share(value: float, name: str) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be more than 0 and at most 1, got {value}")


@dataclass(frozen=True)
class DigestSettings:
    buckets: int = checked(256, power_of_two)
    # Threads hashing the Delta side of a digest; 0: every core the host gives this process.
    delta_parallelism: int = checked(0, not_negative)
    # Postgres processes per month digest (Postgres's parallel query: the backend and up to
    # this many minus one parallel workers); 1: none. Bounded so the serving copy keeps cores.
    postgres_parallelism: int = checked(2, positive)
    # Longest a digest query may run (statement_timeout); 0: no limit.
    statement_timeout_seconds: float = checked(1800.0, not_negative)
    # The daemon's pacing of its Postgres digests: at most this share of wall time spent in
    # them (1: no pause), and at most this many rows a second (0: no limit).
    postgres_max_share: float = checked(1.0, share)
    postgres_rows_per_second: int = checked(0, not_negative)

    @property
    def delta_workers(self) -> int:
        return self.delta_parallelism or available_cores()


@dataclass(frozen=True)
class DaemonSettings:
    interval_seconds: float = checked(60.0, positive)
    retention_months: int = checked(36, positive)
    # The maximum age of a month's proof (both digests recomputed from the data): the daemon
    # re-proves the month whose proof is oldest, once it is half this old, as the budget allows.
    deep_check_period_seconds: float = checked(3600.0, positive)
    # The share of one core the Delta side of those proofs may use (their Postgres side keeps
    # digest.postgres_max_share and postgres_rows_per_second).
    deep_check_budget: float = checked(0.25, share)
    postgres_check_period_seconds: float = checked(15 * 60.0, positive)
    metrics_addr: str = checked(DEFAULT_METRICS_ADDR, host_port)
    # The Prometheus web configuration file (TLS, basic auth), as every official exporter reads.
    web_config_file: str | None = None
    leader_lease_seconds: float = checked(30.0, positive)
    json_logs: bool = False


@dataclass(frozen=True)
class AutoRepairSettings:
    enabled: bool = False
    grace_period_seconds: float = checked(300.0, not_negative)
    max_per_cycle: int = checked(2, positive)
    max_per_hour: int = checked(10, positive)
    circuit_breaker_months: int = checked(5, positive)
    dry_run: bool = False


class RepairMode(enum.StrEnum):
    """How a repair rewrites a month (docs/cli.md, `reconciler repair`)."""

    AUTO = "auto"  # narrow when few rows differ, else full
    NARROW = "narrow"  # only the differing rows, or refuse
    FULL = "full"  # the whole month, as a replication does


@dataclass(frozen=True)
class RepairSettings:
    # The mode of the daemon's auto-repair, and of `reconciler repair` without --mode.
    mode: RepairMode = RepairMode.AUTO
    # A repair is narrow only while the rows it changes are at most this many ...
    narrow_max_rows: int = checked(100_000, positive)
    # ... and at most this share of the month.
    narrow_max_share: float = checked(0.05, share)


# TOML section name -> the dataclass that declares it ([[tables]] is read apart).
SECTIONS: dict[str, type[Any]] = {
    "delta": DeltaSettings,
    "postgres": PostgresSettings,
    "digest": DigestSettings,
    "daemon": DaemonSettings,
    "auto_repair": AutoRepairSettings,
    "repair": RepairSettings,
}


@dataclass(frozen=True)
class Settings:
    dsn: Dsn | None = None
    delta: DeltaSettings = DeltaSettings()
    postgres: PostgresSettings = PostgresSettings()
    digest: DigestSettings = DigestSettings()
    tables: tuple[TableSpec, ...] = DEFAULT_TABLES
    daemon: DaemonSettings = DaemonSettings()
    auto_repair: AutoRepairSettings = AutoRepairSettings()
    repair: RepairSettings = RepairSettings()

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
        return spec.delta_uri(self.delta.root)


def parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes", "on"}:
        return True
    if lowered in {"false", "0", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _expected_type(hint: Any) -> type | None:
    """The one concrete type a field accepts (`str | None` accepts str), or None for mappings."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not None:  # Mapping[str, str]
        return None
    return typing.cast(type, hint)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _value(hint: Any, value: object, where: str) -> object:
    expected = _expected_type(hint)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        allowed = [str(member.value) for member in expected]
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(allowed)}, got {value!r}")
        return expected(value)
    if expected is None:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where}: expected a table of strings")
        return dict(value)
    # bool is an int in Python; a number where a flag is expected (or the reverse) is an error.
    accepted: tuple[type, ...] = (int, float) if expected is float else (expected,)
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, accepted):
        wanted = _TYPE_NAMES.get(expected, expected.__name__)
        raise ConfigError(f"{where} must be {wanted}, got {value!r}")
    return float(value) if expected is float else value  # type: ignore[arg-type]


# Keys of earlier versions, with what replaced them.
REPLACED_KEYS = {
    f"daemon.{key}": "daemon.web_config_file (the Prometheus web configuration file)"
    for key in ("tls_cert_file", "tls_key_file", "basic_auth_user", "basic_auth_password")
}


def parse_section(cls: type[Any], section: object, where: str) -> Any:
    """The dataclass `cls` built from one TOML table, every key and value checked."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in section:
        if f"{where}.{key}" in REPLACED_KEYS:
            raise ConfigError(
                f"{where}.{key} is no longer supported: use {REPLACED_KEYS[f'{where}.{key}']}"
            )
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]} (allowed: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for key, raw in section.items():
        name = f"{where}.{key}"
        values[key] = _value(hints[key], raw, name)
        check: Check | None = fields[key].metadata.get("check")
        if check is not None:
            check(values[key], name)
    return cls(**values)


def _tables(entries: object) -> tuple[TableSpec, ...]:
    if not isinstance(entries, list) or not entries:
        raise ConfigError("tables must be a non-empty array of [[tables]] entries")
    specs = []
    for index, entry in enumerate(entries):
        where = f"tables[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        fields = {f.name for f in dataclasses.fields(TableSpec)}
        unknown = sorted(set(entry) - fields)
        if unknown:
            raise ConfigError(
                f"unknown key {where}.{unknown[0]} (allowed: {', '.join(sorted(fields))})"
            )
        if "name" not in entry or "key_columns" not in entry:
            raise ConfigError(f"{where} needs name and key_columns")
        for key, value in entry.items():
            expected = list if key == "key_columns" else str
            if not isinstance(value, expected):
                wanted = "an array of column names" if expected is list else "a string"
                raise ConfigError(f"{where}.{key} must be {wanted}, got {value!r}")
        check_identifier(entry["name"], f"{where}.name")
        specs.append(TableSpec(**dict(entry, key_columns=tuple(entry["key_columns"]))))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError("tables: a table name is configured twice")
    return tuple(specs)


def _from_toml(document: dict[str, Any]) -> dict[str, Any]:
    allowed = {*SECTIONS, "tables"}
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]} (allowed: {', '.join(sorted(allowed))})")
    result: dict[str, Any] = {
        name: parse_section(cls, document[name], name)
        for name, cls in SECTIONS.items()
        if name in document
    }
    if "tables" in document:
        result["tables"] = _tables(document["tables"])
    return result


ENV_PREFIX = "RECONCILER_"
# What Kubernetes sets for a Service named reconciler-...: never a setting of ours.
_SERVICE_LINK = re.compile(r".*_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)\w*)?)")


def _env_value(hint: Any, raw: str, name: str) -> object:
    """An environment variable's text as the field's type: JSON for tables (mappings)."""
    expected = _expected_type(hint)
    try:
        if expected is None:
            return json.loads(raw)
        if expected is bool:
            return parse_bool(raw, name)
        if expected in (int, float):
            return expected(raw.strip())
    except ConfigError:
        raise
    except ValueError:
        kind = "a JSON object" if expected is None else f"a number ({expected.__name__})"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    return raw


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, object]]:
    """`RECONCILER_<SECTION>_<KEY>` for every key of every section (upper case), e.g.
    `RECONCILER_DAEMON_METRICS_ADDR`, `RECONCILER_AUTO_REPAIR_MAX_PER_HOUR`, and
    `RECONCILER_TABLES` (a JSON array of [[tables]] entries). Empty values are ignored; a
    variable naming a known section but an unknown key is an error, so a typo is never silent."""
    found: dict[str, dict[str, object]] = {}
    for variable in sorted(env):
        raw = env[variable]
        if not variable.startswith(ENV_PREFIX) or not raw.strip():
            continue
        if _SERVICE_LINK.fullmatch(variable):
            continue
        rest = variable[len(ENV_PREFIX) :].lower()
        if rest == "tables":
            try:
                found["tables"] = {"": json.loads(raw)}
            except ValueError:
                raise ConfigError(f"{variable} must be a JSON array of tables") from None
            continue
        # Longest section name first: auto_repair before a hypothetical "auto".
        for section in sorted(SECTIONS, key=len, reverse=True):
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                cls = SECTIONS[section]
                fields = {f.name for f in dataclasses.fields(cls)}
                if key not in fields:
                    allowed = ", ".join(f"{ENV_PREFIX}{section}_{f}".upper() for f in fields)
                    raise ConfigError(f"unknown variable {variable} (allowed: {allowed})")
                hint = typing.get_type_hints(cls)[key]
                found.setdefault(section, {})[key] = _env_value(hint, raw, variable)
                break
    return found


def _read_secret_file(path: str, variable: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"cannot read {variable} {path}: {reason}") from None


def _raw_dsn(dsn: str | None, env: Mapping[str, str]) -> str | None:
    """--dsn, else POSTGRES_DSN, else the file POSTGRES_DSN_FILE names (a mounted secret)."""
    if dsn is not None:
        return dsn
    inline, path = env.get("POSTGRES_DSN", "").strip(), env.get("POSTGRES_DSN_FILE", "").strip()
    if inline and path:
        raise ConfigError("POSTGRES_DSN and POSTGRES_DSN_FILE are both set: keep one")
    if path:
        text = _read_secret_file(path, "POSTGRES_DSN_FILE")
        if not text:
            raise ConfigError(f"POSTGRES_DSN_FILE {path} is empty")
        return text
    return inline or None


def password_source(postgres: PostgresSettings) -> Callable[[], str] | None:
    """What supplies the password of every new connection, if not the DSN."""
    if postgres.password_command:
        return PasswordCommand(postgres.password_command)
    if postgres.azure_entra_auth:
        return EntraToken(postgres.azure_client_id)
    return None


def load_settings(
    *,
    config_path: str | None = None,
    dsn: str | None = None,
    delta_root: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from (lowest to highest) defaults, the TOML file, `RECONCILER_<SECTION>_<KEY>`
    variables, the variables SPEC names (`SIGNALS_DELTA_ROOT`, `POSTGRES_SIGNALS_*`), arguments."""
    env = os.environ if environ is None else environ
    path = config_path or env.get("RECONCILER_CONFIG")
    document: dict[str, Any] = {}
    if path:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for section, keys in _from_env(env).items():
        if section == "tables":
            document["tables"] = keys[""]
        elif isinstance(document.get(section, {}), dict):
            document[section] = {**document.get(section, {}), **keys}
    values = _from_toml(document)
    delta = values.get("delta", DeltaSettings())
    postgres = values.get("postgres", PostgresSettings())
    if env.get("SIGNALS_DELTA_ROOT"):
        delta = dataclasses.replace(delta, root=env["SIGNALS_DELTA_ROOT"])
    for name, key in (
        ("POSTGRES_SIGNALS_WRITE_REQUIRED", "write_required"),
        ("POSTGRES_SIGNALS_VERIFY_COUNTS", "verify_counts"),
    ):
        if env.get(name, "").strip():
            postgres = dataclasses.replace(postgres, **{key: parse_bool(env[name], name)})
    raw_dsn = _raw_dsn(dsn, env)
    if raw_dsn is not None and raw_dsn.strip():
        values["dsn"] = Dsn(raw_dsn, password_source(postgres))
    if delta_root:
        delta = dataclasses.replace(delta, root=delta_root)
    values["delta"], values["postgres"] = delta, postgres
    return Settings(**values)


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """`settings` with top-level fields replaced; a section may be given as a dict of its fields
    to change (`with_overrides(s, postgres={"verify_counts": True})`)."""
    for name, value in list(changes.items()):
        if name in SECTIONS and isinstance(value, dict):
            changes[name] = dataclasses.replace(getattr(settings, name), **value)
    return dataclasses.replace(settings, **changes)
