"""Test set-up: fixtures come from the plugin modules below (psycopg's `fix_*.py` pattern)."""

pytest_plugins = ["tests.fix_db", "tests.fix_delta", "tests.fix_proxy", "tests.fix_daemon"]
