"""Test set-up: fixtures come from the plugin modules below."""

pytest_plugins = ["tests.fix_db", "tests.fix_delta"]
