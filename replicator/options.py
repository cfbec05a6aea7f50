"""Command-line pieces shared by `replicator` and `reconciler`: argument types, common options,
logging set-up, exit codes and the process title.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click
import setproctitle

from replicator.config import ConfigError, Settings, load_settings
from replicator.errors import InputError, ReplicationError, StaleSnapshotError
from replicator.secrets import REDACTED, DsnError, scrub_any
from replicator.yearmonth import YearMonth

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])


class YearMonthType(click.ParamType):  # type: ignore[type-arg]
    name = "YYYY-MM"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> YearMonth:
        if isinstance(value, YearMonth):
            return value
        try:
            return YearMonth.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


YEAR_MONTH = YearMonthType()


def settings_options(func: F) -> F:
    """--dsn, --delta-root and --config, which override the environment."""
    func = click.option(
        "--config",
        "config_path",
        metavar="FILE",
        help="TOML configuration (default: $RECONCILER_CONFIG).",
    )(func)
    func = click.option(
        "--delta-root",
        metavar="URI",
        help="Root of the Delta tables (default: $SIGNALS_DELTA_ROOT).",
    )(func)
    func = click.option(
        "--dsn",
        metavar="DSN",
        help="Postgres connection (default: $POSTGRES_DSN; prefer the variable).",
    )(func)
    return func


def build_settings(dsn: str | None, delta_root: str | None, config_path: str | None) -> Settings:
    """Settings from options and environment; a bad value exits 2 before anything connects."""
    try:
        return load_settings(config_path=config_path, dsn=dsn, delta_root=delta_root)
    except (ConfigError, DsnError) as exc:
        fail(str(exc))


class Commands(click.Group):
    """A command group whose every failure ends in one line and exit code 2 (1 is kept for
    findings): a traceback is printed only with -v."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except ReplicationError as exc:
            fail(str(exc), exit_code_for(exc))
        except Exception as exc:  # a bug or an unforeseen failure: still one line, exit 2
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                logging.getLogger(__name__).exception("unexpected failure")
            fail(
                f"unexpected {type(exc).__name__}: {scrub_any(' '.join(str(exc).split()))}"
                " (run with -v for the traceback)"
            )


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def exit_code_for(exc: ReplicationError) -> int:
    return EXIT_FINDING if isinstance(exc, StaleSnapshotError) else EXIT_ERROR


def render_table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows as aligned text columns; the last column (free text) is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    ]


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=False, default=str))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, carrying table, month and run id when the record has them."""

    FIELDS = ("table", "year_month", "run_id", "delta_version", "rows", "status")

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub_any(record.getMessage()),
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                document[name] = getattr(record, name)
        return json.dumps(document, default=str)


class ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub_any(super().format(record))


def configure_logging(verbose: bool = False, json_logs: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def hide_dsn_from_process_title() -> None:
    """`ps` shows argv; a DSN given with --dsn must not be readable there."""
    args = list(sys.argv)
    changed = False
    for index, arg in enumerate(args):
        if arg == "--dsn" and index + 1 < len(args):
            args[index + 1] = REDACTED
            changed = True
        elif arg.startswith("--dsn="):
            args[index] = "--dsn=" + REDACTED
            changed = True
    if changed:
        setproctitle.setproctitle(" ".join(args))


__all__ = ["EXIT_ERROR", "EXIT_FINDING", "EXIT_OK", "YEAR_MONTH", "InputError"]
