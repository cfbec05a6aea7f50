"""`reconciler`: parses arguments, builds the objects and calls them; nothing else lives here."""

from __future__ import annotations

import logging

import click

from reconciler import __version__
from reconciler.migrate import migrate as apply_migrations
from replicator.errors import ReplicationError
from replicator.options import (
    build_settings,
    configure_logging,
    emit_json,
    fail,
    hide_dsn_from_process_title,
    settings_options,
)

logger = logging.getLogger(__name__)


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--json-logs", is_flag=True, help="Log one JSON object per line on stderr.")
def main(verbose: bool, json_logs: bool) -> None:
    """Compare Delta Lake months with their Postgres copy, report drift and repair it."""
    hide_dsn_from_process_title()
    configure_logging(verbose, json_logs)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@settings_options
def migrate(
    as_json: bool, dsn: str | None, delta_root: str | None, config_path: str | None
) -> None:
    """Apply the SQL migrations (schema, tables, sync state, roles) idempotently."""
    settings = build_settings(dsn, delta_root, config_path)
    try:
        applied = apply_migrations(
            settings.require_dsn(), connect_timeout=settings.connect_timeout_seconds
        )
    except (ReplicationError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        emit_json({"applied": applied})
    else:
        click.echo(
            f"applied {len(applied)} migration(s)"
            + (": " + ", ".join(applied) if applied else "; up to date")
        )
