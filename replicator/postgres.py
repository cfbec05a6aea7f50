"""Opening Postgres connections the same safe way everywhere.

Every connection pins `search_path` to `pg_catalog, pg_temp` (our SQL names schemas explicitly,
so a function that shadows a builtin can never be picked up), has a bounded connect timeout and
an application name, and any failure surfaces as `PostgresError` with the DSN scrubbed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from replicator.errors import PostgresError
from replicator.secrets import Dsn

logger = logging.getLogger(__name__)

SAFE_OPTIONS = "-c search_path=pg_catalog,pg_temp"


def conninfo(dsn: Dsn, application_name: str, connect_timeout: int) -> str:
    return dsn.conninfo(
        application_name=application_name,
        connect_timeout=connect_timeout,
        options=SAFE_OPTIONS,
    )


def connect(
    dsn: Dsn, *, application_name: str, connect_timeout: int = 10, autocommit: bool = False
) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            conninfo(dsn, application_name, connect_timeout), autocommit=autocommit
        )
    except psycopg.Error as exc:
        raise PostgresError(
            f"cannot connect to Postgres at {dsn.target}: {dsn.scrub(str(exc)).strip()}"
        ) from None


@contextmanager
def translated_errors(dsn: Dsn, what: str) -> Iterator[None]:
    """Re-raises driver errors as `PostgresError` with a scrubbed message and no chained cause."""
    try:
        yield
    except psycopg.Error as exc:
        raise PostgresError(f"{what}: {dsn.scrub(str(exc)).strip()}") from None
