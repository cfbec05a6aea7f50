"""`Database` and its sessions: the one place that opens Postgres connections and the one place
where a driver error becomes the project's own `PostgresError`.

Every connection, psycopg or ADBC, pins `search_path` to `pg_catalog, pg_temp` (our SQL names
schemas explicitly, so a function that shadows a builtin can never be picked up), has a bounded
connect timeout and an application name. Code elsewhere never sees a driver connection or a
driver exception: it works through a `Session` (psycopg) or an `AdbcSession` (Arrow, binary
COPY), whose every call translates a failure into a one-line `PostgresError` carrying the
SQLSTATE, scrubbed of the DSN and its password, and without Postgres's DETAIL: a constraint
violation's "Failing row contains (...)" is the serving data of a row, which belongs in no log,
error or metric (as Patroni's `NamedConnection.query()` is its one error boundary).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import adbc_driver_manager
import psycopg
import pyarrow as pa
from psycopg import sql

from replicator.config import Settings
from replicator.errors import InputError, NotMigratedError, PostgresError
from replicator.secrets import Dsn, PasswordError

logger = logging.getLogger(__name__)

SAFE_OPTIONS = "-c search_path=pg_catalog,pg_temp"
DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, adbc_driver_manager.Error)
Query = str | bytes | sql.Composable

# undefined_table, invalid_schema_name, undefined_function: what an unmigrated database answers
_NOT_MIGRATED = frozenset({"42P01", "3F000", "42883"})
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
INSUFFICIENT_PRIVILEGE = "42501"
SERIALIZATION_FAILURE = "40001"


class _OpenSessions:
    """Every session of this process that is open, so that an interrupt can cancel what they
    run and a watch can tell which of them waits for a lock."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakSet[Session | AdbcSession] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, session: Session | AdbcSession) -> None:
        with self._lock:
            self._sessions.add(session)

    def discard(self, session: Session | AdbcSession) -> None:
        with self._lock:
            self._sessions.discard(session)

    def all(self) -> list[Session | AdbcSession]:
        with self._lock:
            return list(self._sessions)


OPEN = _OpenSessions()


class _Commits:
    """How many transactions this process committed (what an interrupt may say it changed)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.count += 1


COMMITS = _Commits()


def cancel_all(*applications: str) -> int:
    """Asks the server to cancel the statement of every open session (of these application
    names, when given), from any thread, a signal's included; returns how many were running
    one."""
    running = [
        s
        for s in OPEN.all()
        if s.busy_since is not None and (not applications or s.db.application_name in applications)
    ]
    for session in running:
        session.cancel()
    return len(running)


def one_line(text: str) -> str:
    """Driver messages span lines (hints, `LINE 1: ... ^`); an error here is one line."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Diagnostics:
    """What a driver error says, field by field (never its DETAIL, which may hold row data)."""

    sqlstate: str | None
    primary: str
    constraint: str | None = None
    table: str | None = None
    column: str | None = None
    hint: str | None = None


def _adbc_fields(exc: BaseException) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, value in getattr(exc, "details", None) or []:
        name = key.decode() if isinstance(key, bytes) else str(key)
        fields[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return fields


def diagnostics(exc: BaseException) -> Diagnostics:
    """The error's fields, from psycopg's `diag` or ADBC's `details`."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    if isinstance(exc, psycopg.Error) and diag is not None and diag.message_primary:
        return Diagnostics(
            str(sqlstate) if sqlstate else None,
            diag.message_primary,
            diag.constraint_name,
            diag.table_name,
            diag.column_name,
            diag.message_hint,
        )
    fields = _adbc_fields(exc)
    if "PG_DIAG_MESSAGE_PRIMARY" in fields:
        return Diagnostics(
            fields.get("PG_DIAG_SQLSTATE") or (str(sqlstate) if sqlstate else None),
            fields["PG_DIAG_MESSAGE_PRIMARY"],
            fields.get("PG_DIAG_CONSTRAINT_NAME"),
            fields.get("PG_DIAG_TABLE_NAME"),
            fields.get("PG_DIAG_COLUMN_NAME"),
            fields.get("PG_DIAG_MESSAGE_HINT"),
        )
    # No server diagnostics (a lost connection, a client-side failure): the text, without the
    # driver's prefixes and anything after a DETAIL.
    text = str(exc).split("DETAIL:", 1)[0]
    for prefix in ("PGRES_FATAL_ERROR", "ERROR:"):
        if prefix in text:
            text = text.split(prefix, 1)[1]
    text = text.split("[libpq]", 1)[-1].split(". SQLSTATE:", 1)[0]
    return Diagnostics(str(sqlstate) if sqlstate else None, text.strip(" :.") or type(exc).__name__)


_ADVICE = {
    "23502": "Delta holds a NULL where the Postgres column is NOT NULL: make the column nullable"
    " or fix the data in Delta, then replicate the month again",
    "23514": "Delta holds a value the Postgres table's CHECK constraint refuses: fix the data in"
    " Delta or the constraint, then replicate the month again",
    "23505": "a unique index refuses a duplicated key: Delta holds the key twice, or the index"
    " does not include year_month",
    "22P02": "a value does not fit the Postgres column's type: compare the column types",
    "22003": "a value is out of range for the Postgres column's type: widen the column",
    "42501": "the role lacks a privilege: run `reconciler migrate` as the tables' owner and grant"
    " ranking_writer (or ranking_reconciler) to the login",
    "57014": "the statement was cancelled (statement_timeout, or an interrupt)",
    "55P03": "a lock was not granted within lock_timeout",
    "40001": "a concurrent write touched the same rows; nothing was changed, try again",
}


def describe(exc: BaseException) -> tuple[str | None, str]:
    """(SQLSTATE, one line): the message, the constraint, column and table it names, and what
    to do; never row values."""
    found = diagnostics(exc)
    parts = [one_line(found.primary)]
    named = [
        f"{what} {value}"
        for what, value in (
            ("constraint", found.constraint),
            ("column", found.column),
            ("table", found.table),
        )
        if value and value not in found.primary
    ]
    if named:
        parts[0] += f" ({', '.join(named)})"
    advice = _ADVICE.get(found.sqlstate or "")
    if advice:
        parts.append(advice)
    elif found.hint:
        parts.append(one_line(found.hint))
    return found.sqlstate, "; ".join(parts)


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
    return one_line(cause.removeprefix("FATAL: ").strip())


_ADBC_PLAIN_CALLS: list[bool] = []


def adbc_without_own_sigint() -> None:
    """For a process with its own SIGINT handling (`replicator.interrupts`): ADBC puts its own
    handler in place around each blocking call (`_blocking_call`, adbc_driver_manager's
    `_lib.pyx`), which cancels that one statement and swallows the signal, so the command saw a
    failed statement, not an interrupt. The interrupt handler cancels every session, ADBC's
    included (`AdbcSession.cancel`), for SIGTERM too; so ADBC calls run plainly. Applied when
    the DB-API module is first imported (it is lazy). The name is private: should a release
    drop it, ADBC keeps its handler, and Ctrl-C still cancels, reported as a failure."""
    _ADBC_PLAIN_CALLS[:] = [True]
    dbapi = sys.modules.get("adbc_driver_manager.dbapi")
    if dbapi is not None and hasattr(dbapi, "_blocking_call"):
        dbapi._blocking_call = _plain_call  # type: ignore[attr-defined]  # private: see above


def _plain_call(func: Any, args: Any, kwargs: Any, _cancel: Any) -> Any:
    return func(*args, **kwargs)


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

    # -- errors --------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        return one_line(self.dsn.scrub(text))

    def error(self, exc: BaseException, what: str) -> PostgresError:
        """A driver error as a one-line `PostgresError` that starts with `what`; a missing
        schema is `NotMigratedError`."""
        sqlstate, text = describe(exc)
        text = self.scrub(text)
        if sqlstate in _NOT_MIGRATED and "ranking" in text:
            return NotMigratedError(
                f"the database {self.target} is not migrated ({text}): run `reconciler migrate`",
                sqlstate,
            )
        return PostgresError(f"{what}: {text}", sqlstate)

    def connect_error(self, exc: BaseException) -> PostgresError:
        sqlstate, _ = describe(exc)
        return PostgresError(
            f"cannot connect to Postgres at {self.target}: "
            f"{_connect_failure(self.dsn.scrub(str(exc)))}",
            sqlstate,
        )

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Re-raises driver errors as `PostgresError` with a scrubbed message, no chained cause."""
        try:
            yield
        except DRIVER_ERRORS as exc:
            raise self.error(exc, what) from None

    # -- sessions ------------------------------------------------------------------------
    def session(self, *, autocommit: bool = False) -> Session:
        """A new psycopg session (close it, or use it as a context manager)."""
        try:
            conn = psycopg.connect(self.conninfo(), autocommit=autocommit)
        except psycopg.Error as exc:
            raise self.connect_error(exc) from None
        session = Session(self, conn)
        try:
            session.require_utf8()
        except BaseException:
            session.close()
            raise
        return session

    def adbc_session(self) -> AdbcSession:
        """A new ADBC session: Arrow results and binary COPY of Arrow batches."""
        # Its DB-API module imports pyarrow.dataset (and pandas or polars where installed):
        # a fifth of a second that a command reading no Arrow should not pay.
        import adbc_driver_postgresql.dbapi as adbc

        if _ADBC_PLAIN_CALLS:
            adbc_without_own_sigint()
        try:
            return AdbcSession(self, adbc.connect(self.conninfo()))
        except adbc_driver_manager.Error as exc:
            raise self.connect_error(exc) from None

    @contextlib.contextmanager
    def adbc_in_snapshot(self, snapshot: str) -> Iterator[AdbcSession]:
        """An ADBC session inside a read-only REPEATABLE READ transaction that sees exactly the
        snapshot another transaction exported (`pg_export_snapshot()`): Arrow results,
        consistent with what that transaction reads."""
        with self.adbc_session() as session:
            session.autocommit(True)  # the transaction is ours to begin
            session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            session.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)).as_string(None)
            )
            session.execute("SET LOCAL jit = off")
            yield session
            # Read only: everything was read already, so a lost answer to its end loses nothing.
            session.execute_quietly("COMMIT")


class Session:
    """A psycopg connection whose every failure is a `PostgresError` (see the module docstring).

    `what` names the operation in the error; the default says which database failed."""

    def __init__(self, db: Database, conn: psycopg.Connection[Any]) -> None:
        self.db = db
        self._conn = conn
        self.busy_since: float | None = None  # monotonic time the running statement began
        self.pid: int | None = int(conn.info.backend_pid)
        OPEN.add(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self, what: str | None) -> Iterator[None]:
        self.busy_since = time.monotonic()
        try:
            yield
        except psycopg.Error as exc:
            raise self.db.error(exc, what or f"Postgres at {self.db.target} failed") from None
        finally:
            self.busy_since = None

    def execute(
        self,
        query: Query,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        binary: bool = False,
        what: str | None = None,
    ) -> psycopg.Cursor[Any]:
        with self._errors(what):
            return self._conn.execute(query, params, binary=binary)  # type: ignore[arg-type]

    def fetchone(
        self, query: Query, params: Sequence[Any] | None = None, *, binary: bool = False
    ) -> tuple[Any, ...] | None:
        with self._errors(None):
            row: tuple[Any, ...] | None = self._conn.execute(
                query,  # type: ignore[arg-type]
                params,
                binary=binary,
            ).fetchone()
            return row

    def fetchall(
        self, query: Query, params: Sequence[Any] | None = None, *, binary: bool = False
    ) -> list[tuple[Any, ...]]:
        with self._errors(None):
            rows: list[tuple[Any, ...]] = self._conn.execute(
                query,  # type: ignore[arg-type]
                params,
                binary=binary,
            ).fetchall()
            return rows

    def scalar(self, query: Query, params: Sequence[Any] | None = None) -> Any:
        row = self.fetchone(query, params)
        return None if row is None else row[0]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction (a savepoint inside one) committed at the end of the block."""
        with self._errors(None), self._conn.transaction():
            yield
        COMMITS.tick()

    def commit(self) -> None:
        with self._errors(None):
            self._conn.commit()
        COMMITS.tick()

    def rollback(self) -> None:
        """Ends the transaction, best effort: on a connection already lost there is nothing to
        end, and the failure that lost it is the one worth reporting."""
        with contextlib.suppress(psycopg.Error):
            self._conn.rollback()

    def begin_snapshot(self, *, read_only: bool = True) -> None:
        """Ends any transaction; the next statement starts a REPEATABLE READ one."""
        self.rollback()
        with self._errors(None):
            self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self._conn.read_only = read_only

    def begin_default(self) -> None:
        """Ends any transaction; the next one is READ COMMITTED and may write."""
        self.rollback()
        with self._errors(None):
            self._conn.isolation_level = None
            self._conn.read_only = False

    @property
    def closed(self) -> bool:
        return bool(self._conn.closed)

    @property
    def autocommit(self) -> bool:
        return bool(self._conn.autocommit)

    @property
    def backend_pid(self) -> int | None:
        return self.pid

    def cancel(self) -> None:
        """Asks the server to cancel the statement running on this session (from any thread,
        a signal handler included); never raises."""
        with contextlib.suppress(psycopg.Error, OSError):
            self._conn.cancel_safe(timeout=2.0)

    def alive(self) -> bool:
        """Whether the connection still answers."""
        if self._conn.closed:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def close(self) -> None:
        OPEN.discard(self)
        with contextlib.suppress(psycopg.Error):
            self._conn.close()

    def require_utf8(self) -> None:
        """A database in another encoding stores other bytes for the same text: its digests
        could never match Delta's (UTF-8), so it is refused before anything is compared."""
        with self._errors(f"cannot read the encoding of {self.db.target}"):
            row = self._conn.execute(
                "SELECT pg_catalog.current_setting('server_encoding')"
            ).fetchone()
            if not self._conn.autocommit:
                self._conn.rollback()
        encoding = str(row[0]) if row else "unknown"
        if encoding.upper() != "UTF8":
            raise InputError(
                f"database {self.db.target} uses encoding {encoding}; the serving copy must be "
                "UTF8 (create it with ENCODING 'UTF8')"
            )


class AdbcSession:
    """An ADBC connection and its cursor: Arrow results, binary COPY of Arrow batches; every
    failure a `PostgresError` (see the module docstring)."""

    def __init__(self, db: Database, conn: Any) -> None:
        self.db = db
        self._conn = conn
        self._cursor = conn.cursor()
        self.busy_since: float | None = None
        self._backend_pid: int | None = None
        with contextlib.suppress(adbc_driver_manager.Error):
            self._cursor.execute("SELECT pg_catalog.pg_backend_pid()")
            self._backend_pid = int(self._cursor.fetchall()[0][0])
        OPEN.add(self)

    def __enter__(self) -> AdbcSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextlib.contextmanager
    def errors(self, what: str | None = None) -> Iterator[None]:
        self.busy_since = time.monotonic()
        try:
            yield
        except adbc_driver_manager.Error as exc:
            raise self.db.error(exc, what or f"Postgres at {self.db.target} failed") from None
        finally:
            self.busy_since = None

    @property
    def backend_pid(self) -> int | None:
        """The server process of this session (asked once, when it opened)."""
        return self._backend_pid

    def cancel(self) -> None:
        """Asks the server to cancel the running statement (from any thread); never raises."""
        with contextlib.suppress(adbc_driver_manager.Error, AttributeError):
            self._cursor.adbc_cancel()

    def autocommit(self, on: bool) -> None:
        with self.errors():
            self._conn.adbc_connection.set_autocommit(on)

    def autocommit_quietly(self) -> None:
        """Back to autocommit, best effort (on the way out of a failed transaction)."""
        with contextlib.suppress(adbc_driver_manager.Error):
            self._conn.adbc_connection.set_autocommit(True)

    def execute(self, query: str | sql.Composable, params: Sequence[Any] | None = None) -> None:
        text = query if isinstance(query, str) else query.as_string(None)
        with self.errors():
            self._cursor.execute(text, params)

    def execute_quietly(self, query: str) -> None:
        """Best effort (a ROLLBACK or an unlock on the way out): the failure that brought us
        here is the one worth reporting, and a lost connection ends both anyway."""
        with contextlib.suppress(adbc_driver_manager.Error):
            self._cursor.execute(query)

    def fetchall(self) -> list[tuple[Any, ...]]:
        with self.errors():
            return list(self._cursor.fetchall())

    def query(self, query: str | sql.Composable, params: Sequence[Any] | None = None) -> Any:
        """Runs a query; returns its one value."""
        self.execute(query, params)
        rows = self.fetchall()
        return rows[0][0] if rows else None

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        """The result of the last query, as Arrow batches."""
        with self.errors():
            for batch in self._cursor.fetch_record_batch():
                yield pa.record_batch(batch)

    def ingest(self, table: str, schema: str, data: pa.RecordBatchReader) -> None:
        """Binary COPY of `data` into `schema.table` (appended)."""
        with self.errors():
            self._cursor.adbc_ingest(table, data, mode="append", db_schema_name=schema)

    def ingest_temporary(self, table: str, data: pa.RecordBatchReader) -> None:
        """Binary COPY of `data` into a new temporary table (gone with the session)."""
        with self.errors():
            self._cursor.adbc_ingest(table, data, mode="create", temporary=True)

    def commit(self) -> None:
        with self.errors():
            self._conn.commit()
        COMMITS.tick()

    def rollback(self) -> None:
        """Best effort: the connection may be gone, and then there is nothing to roll back."""
        with contextlib.suppress(adbc_driver_manager.Error):
            self._conn.rollback()

    def close(self) -> None:
        OPEN.discard(self)
        with contextlib.suppress(adbc_driver_manager.Error):
            self._cursor.close()
        with contextlib.suppress(adbc_driver_manager.Error):
            self._conn.close()
