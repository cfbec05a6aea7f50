"""Exception types shared by the writer, the reconciler and their command lines.

Every message is safe to show (no DSN, no password) and fits on one line; the command lines map
the type to an exit code: a finding is 1, everything else 2.
"""

from __future__ import annotations


class ReplicationError(Exception):
    """Base class: an error whose message is safe to show (no DSN, no password)."""


class InputError(ReplicationError):
    """Bad input, found before anything was written (CLI exit code 2)."""


class PostgresError(ReplicationError):
    """Postgres failed or could not be reached (CLI exit code 2); `sqlstate` is the server's
    error code when it sent one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class NotMigratedError(PostgresError):
    """The database lacks the reconciler's schema: `reconciler migrate` has not run (exit 2)."""


class DeltaError(ReplicationError):
    """The Delta table or the requested snapshot cannot be read (CLI exit code 2)."""


class StaleSnapshotError(ReplicationError):
    """Postgres already holds this month from a newer Delta version (CLI exit code 1)."""
