"""`Database`: the one place that opens Postgres connections and translates driver errors.

Every connection, psycopg or ADBC, pins `search_path` to `pg_catalog, pg_temp` (our SQL names
schemas explicitly, so a function that shadows a builtin can never be picked up), has a bounded
connect timeout and an application name. Any driver failure surfaces as a one-line
`PostgresError` with the DSN and its password scrubbed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import psycopg
from psycopg import sql

from replicator.config import Settings
from replicator.errors import InputError, NotMigratedError, PostgresError
from replicator.secrets import Dsn, PasswordError

logger = logging.getLogger(__name__)

SAFE_OPTIONS = "-c search_path=pg_catalog,pg_temp"
DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, adbc_driver_manager.Error)


# undefined_table, invalid_schema_name, undefined_function: what an unmigrated database answers
_NOT_MIGRATED = frozenset({"42P01", "3F000", "42883"})


def _sqlstate(exc: BaseException) -> str | None:
    code = getattr(exc, "sqlstate", None)
    return str(code) if code else None


def _connect_failure(text: str) -> str:
    """libpq's account of a failed connection, reduced to its cause."""
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused (is the server running and listening on that host and port?)"
    if "timeout expired" in lowered:
        return "no answer within connect_timeout_seconds (a firewall, or a hung server?)"
    if "could not translate host name" in lowered or "name or service not known" in lowered:
        return "unknown host name"
    cause = text.rsplit("failed: ", 1)[-1]
    return cause.removeprefix("FATAL: ").strip()


def one_line(text: str) -> str:
    """Driver messages span lines (hints, `LINE 1: ... ^`); an error here is one line."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Database:
    """One Postgres database, as one application (the name shows in `pg_stat_activity`)."""

    dsn: Dsn
    application_name: str = "replicator"
    connect_timeout: int = 10

    @classmethod
    def for_settings(cls, settings: Settings, application_name: str = "replicator") -> Database:
        """The configured database (`POSTGRES_DSN`), or ConfigError when none is configured."""
        return cls(
            settings.require_dsn(), application_name, settings.postgres.connect_timeout_seconds
        )

    @property
    def target(self) -> str:
        """Where the DSN points, without user or password: safe for messages."""
        return self.dsn.target

    def named(self, application_name: str) -> Database:
        return replace(self, application_name=application_name)

    def conninfo(self) -> str:
        """The libpq connection string, for drivers only; never log it. Text travels as UTF-8
        whatever `client_encoding` the DSN asks for: the hash contract hashes UTF-8 bytes."""
        try:
            return self.dsn.conninfo(
                application_name=self.application_name,
                connect_timeout=self.connect_timeout,
                options=SAFE_OPTIONS,
                client_encoding="UTF8",
            )
        except PasswordError as exc:  # the password command or Entra ID failed
            raise PostgresError(f"cannot connect to Postgres at {self.target}: {exc}") from None

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.conninfo(), autocommit=autocommit)
        except psycopg.Error as exc:
            raise self.translate(exc, f"cannot connect to Postgres at {self.target}") from None
        try:
            self._require_utf8(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def connect_adbc(self) -> Any:
        """An ADBC connection (binary COPY of Arrow batches); the caller closes it."""
        try:
            return adbc.connect(self.conninfo())
        except adbc_driver_manager.Error as exc:
            raise self.translate(exc, f"cannot connect to Postgres at {self.target}") from None

    @contextlib.contextmanager
    def adbc_in_snapshot(self, snapshot: str) -> Iterator[Any]:
        """An ADBC cursor inside a read-only REPEATABLE READ transaction that sees exactly the
        snapshot another transaction exported (`pg_export_snapshot()`): Arrow results,
        consistent with what that transaction reads."""
        conn = self.connect_adbc()
        try:
            conn.adbc_connection.set_autocommit(True)  # the transaction is ours to begin
            with conn.cursor() as cursor:
                cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cursor.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}")
                    .format(sql.Literal(snapshot))
                    .as_string(None)
                )
                cursor.execute("SET LOCAL jit = off")
                yield cursor
                cursor.execute("COMMIT")
        except adbc_driver_manager.Error as exc:
            raise self.translate(exc, "Postgres failed") from None
        finally:
            with contextlib.suppress(adbc_driver_manager.Error):
                conn.close()

    def _require_utf8(self, conn: psycopg.Connection[Any]) -> None:
        """A database in another encoding stores other bytes for the same text: its digests
        could never match Delta's (UTF-8), so it is refused before anything is compared."""
        with self.errors(f"cannot read the encoding of {self.target}"):
            row = conn.execute("SELECT pg_catalog.current_setting('server_encoding')").fetchone()
            if not conn.autocommit:
                conn.rollback()
        encoding = str(row[0]) if row else "unknown"
        if encoding.upper() != "UTF8":
            raise InputError(
                f"database {self.target} uses encoding {encoding}; the serving copy must be "
                "UTF8 (create it with ENCODING 'UTF8')"
            )

    def scrub(self, text: str) -> str:
        return one_line(self.dsn.scrub(text))

    def translate(self, exc: BaseException, what: str) -> PostgresError:
        """A driver error as a one-line `PostgresError` that starts with `what` and says what
        to do where it can: a missing schema is `NotMigratedError`."""
        text = self.scrub(str(exc))
        if _sqlstate(exc) in _NOT_MIGRATED and "ranking" in text:
            first = text.split(" LINE ", 1)[0]
            return NotMigratedError(
                f"the database {self.target} is not migrated ({first}): run `reconciler migrate`"
            )
        if what.startswith("cannot connect"):
            return PostgresError(f"{what}: {_connect_failure(text)}")
        return PostgresError(f"{what}: {text}")

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Re-raises driver errors as `PostgresError` with a scrubbed message, no chained cause."""
        try:
            yield
        except DRIVER_ERRORS as exc:
            raise self.translate(exc, what) from None
