"""Keeps the Postgres DSN and its password out of every log line, error and title, and fetches
a fresh password for every connection when the password is a short-lived token.

The DSN is held by `Dsn`, whose repr and str never show it; every message that may carry
text from libpq passes through `Dsn.scrub` before it leaves the process. A `PasswordSource`
(a command run per connection, or Microsoft Entra ID through azure-identity) supplies the
password of each new connection; what it returned is scrubbed too.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

REDACTED = "***"
# Password-looking fragments that may appear in any driver message, whatever the DSN shape.
_PASSWORD_PATTERNS = (
    re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)"),
)


class DsnError(ValueError):
    """The DSN is unusable; the message never contains the DSN itself."""


class PasswordError(DsnError):
    """The password source failed; the message never contains a password."""


class PasswordSource(Protocol):
    def __call__(self) -> str: ...


class PasswordCommand:
    """Runs a command for every new connection; its standard output is the password (for
    example `az account get-access-token --resource-type oss-rdbms --query accessToken -o
    tsv`). Nothing it prints is logged."""

    def __init__(self, command: str, timeout: float = 30.0) -> None:
        self.argv = shlex.split(command)
        self.timeout = timeout
        if not self.argv:
            raise PasswordError("postgres.password_command is empty")

    def __call__(self) -> str:
        try:
            done = subprocess.run(
                self.argv, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PasswordError(
                f"the password command {self.argv[0]!r} could not run: {type(exc).__name__}"
            ) from None
        password = done.stdout.strip()
        if done.returncode != 0 or not password:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise PasswordError(
                f"the password command {self.argv[0]!r} failed (exit {done.returncode}): "
                f"{scrub_any(first)[:200]}"
            )
        return password


ENTRA_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


class EntraToken:
    """An access token for Azure Database for PostgreSQL from Microsoft Entra ID (a managed
    identity, workload identity or any credential azure-identity's DefaultAzureCredential
    finds), reused until shortly before it expires, never past it."""

    def __init__(self, client_id: str | None = None, credential: Any = None, margin: float = 300.0):
        if credential is None:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise PasswordError(
                    "postgres.azure_entra_auth needs azure-identity: pip install "
                    "'signal-reconciler[azure]'"
                ) from None
            credential = DefaultAzureCredential(managed_identity_client_id=client_id)
        self.credential = credential
        self.margin = margin
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or time.time() >= self._token[1] - self.margin:
                try:
                    token = self.credential.get_token(ENTRA_SCOPE)
                except Exception as exc:  # azure-identity's errors vary by credential
                    raise PasswordError(
                        f"no Microsoft Entra ID token: {type(exc).__name__}: "
                        f"{scrub_any(' '.join(str(exc).split()))[:300]}"
                    ) from None
                self._token = (str(token.token), float(token.expires_on))
            return self._token[0]


class Dsn:
    """A Postgres connection string that refuses to be printed."""

    __slots__ = ("_issued", "_params", "_raw", "password_source")

    def __init__(self, raw: str, password_source: Callable[[], str] | None = None) -> None:
        self._raw = raw
        self.password_source = password_source
        self._issued: deque[str] = deque(maxlen=8)  # passwords handed out, for scrubbing
        try:
            from psycopg.conninfo import conninfo_to_dict  # psycopg only once a DSN is parsed

            self._params: dict[str, object] = dict(conninfo_to_dict(raw))
        except Exception:
            # libpq's parse error quotes the offending fragment, which may be the password.
            raise DsnError(
                "POSTGRES_DSN is malformed: expected a postgresql:// URI or key=value pairs"
            ) from None

    def __repr__(self) -> str:
        return "Dsn(<redacted>)"

    __str__ = __repr__

    def conninfo(self, **overrides: str | int | None) -> str:
        """The libpq connection string, for drivers only; never log it. With a password source,
        a fresh password every time (a token may have expired since the last connection)."""
        if self.password_source is not None:
            password = self.password_source()
            self._issued.append(password)
            overrides["password"] = password
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self._raw, **overrides)

    def same_as(self, other: Dsn) -> bool:
        """Whether both name the same connection (a reload that keeps it keeps the leader)."""
        return self._raw == other._raw

    def with_password_source(self, source: Callable[[], str] | None) -> Dsn:
        return Dsn(self._raw, source)

    @property
    def target(self) -> str:
        """Where the DSN points, without user or password: safe for messages."""
        host = str(self._params.get("host") or "local socket")
        if host.startswith("/"):
            host = "local socket"
        port = self._params.get("port") or "5432"
        dbname = self._params.get("dbname") or "default database"
        return f"{host}:{port}/{dbname}"

    def _secrets(self) -> list[str]:
        found = {self._raw}
        passwords = [self._params.get("password"), *self._issued]
        for password in passwords:
            if isinstance(password, str) and password:
                found |= {
                    password,
                    urllib.parse.quote(password, safe=""),
                    urllib.parse.quote_plus(password),
                }
        return sorted((s for s in found if s), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """`text` with the DSN, the password in all its encodings and password fields masked."""
        for secret in self._secrets():
            text = text.replace(secret, REDACTED)
        return scrub_any(text)


def scrub_any(text: str) -> str:
    """Masks password-looking fragments when no `Dsn` is at hand."""
    for pattern in _PASSWORD_PATTERNS:
        text = pattern.sub(
            lambda m: m.group(1) + REDACTED + (m.group(3) if m.lastindex == 3 else ""), text
        )
    return text
