"""Keeps the Postgres DSN and its password out of every log line, error and title.

The DSN is held by `Dsn`, whose repr and str never show it; every message that may carry
text from libpq passes through `Dsn.scrub` before it leaves the process.
"""

from __future__ import annotations

import re
import urllib.parse

from psycopg.conninfo import conninfo_to_dict, make_conninfo

REDACTED = "***"
# Password-looking fragments that may appear in any driver message, whatever the DSN shape.
_PASSWORD_PATTERNS = (
    re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)"),
)


class DsnError(ValueError):
    """The DSN is unusable; the message never contains the DSN itself."""


class Dsn:
    """A Postgres connection string that refuses to be printed."""

    __slots__ = ("_params", "_raw")

    def __init__(self, raw: str) -> None:
        self._raw = raw
        try:
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
        """The libpq connection string, for drivers only; never log it."""
        return make_conninfo(self._raw, **overrides)

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
        password = self._params.get("password")
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
