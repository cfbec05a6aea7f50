"""Test set-up: fixtures come from the plugin modules below (psycopg's `fix_*.py` pattern)."""

pytest_plugins = ["tests.fix_db", "tests.fix_delta", "tests.fix_proxy", "tests.fix_daemon"]


def pytest_generate_tests(metafunc):  # type: ignore[no-untyped-def]
    """Tests marked both_layouts that reach the database run on each table layout."""
    if metafunc.definition.get_closest_marker("both_layouts") and "layout" in metafunc.fixturenames:
        metafunc.parametrize("layout", ["plain", "partitioned"], indirect=True)
