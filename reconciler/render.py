"""How the on-call commands print what they found: one table per month for `check`, one line
per differing key (and per differing column) for `diff`."""

from __future__ import annotations

import json

import click

from reconciler.check import CheckResult, MonthCheck
from reconciler.diff import Difference, DiffResult, Kind, text_of
from reconciler.verdict import Status
from replicator.options import age, render_table


def _note(check: CheckResult) -> str:
    """What a person needs to know about one table's month, said once."""
    record = check.record
    note = record.reason
    if record.status is Status.LAGGING and record.lag_seconds > 0:
        note += (
            f"; Postgres holds version {record.synced_version}, pending for "
            f"{age(record.lag_seconds)}"
        )
    elif record.status is Status.MISSING and record.lag_seconds > 0:
        note += f" (for {age(record.lag_seconds)})"
    if check.reanchor is not None:
        note += f"; sync state can be re-anchored to version {check.reanchor.anchor.delta_version}"
    return note


def _rows(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def print_check(month: MonthCheck) -> None:
    in_sync = sum(1 for t in month.results if t.status is Status.IN_SYNC)
    tables = len(month.results)
    click.echo(
        f"{month.year_month}: {month.status} ({in_sync} of {tables} "
        f"{'table' if tables == 1 else 'tables'} in sync)"
    )
    header = ("table", "status", "Delta rows", "Postgres rows", "note")
    rows = [header] + [
        (
            t.record.table,
            str(t.status),
            _rows(t.record.delta_rows),
            _rows(t.record.postgres_rows),
            _note(t),
        )
        for t in month.results
    ]
    for line in render_table(rows):
        click.echo("  " + line.rstrip())


def _key_text(difference: Difference) -> str:
    return " ".join(f"{name}={json.dumps(value)}" for name, value in difference.key.items())


def _value_text(value: str | int | bool | None) -> str:
    """NULL, a number or flag as is, text bare (as docs/cli.md shows it), quoted only where bare
    text would mislead: empty, with whitespace at either end, or the word NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, str) and (not value or value != value.strip() or value == "NULL"):
        return json.dumps(value)
    return str(text_of(value))


def print_diff(result: DiffResult) -> None:
    counts = ", ".join(f"{result.totals[k]} {k.value.replace('_', ' ')}" for k in Kind)
    click.echo(
        f"{result.table} {result.year_month}: Postgres against {result.compared_with}: "
        f"{result.found} differing key(s): {counts}"
    )
    if result.truncated:
        click.echo(
            f"  (listing {len(result.listed)} of {result.found}; --limit, or --output FILE for all)"
        )
    for difference in result.listed:
        line = f"  {difference.kind.label:<17} {_key_text(difference)}"
        if difference.kind is Kind.DUPLICATED:
            line += (
                f"  ({difference.delta_copies} in Delta, {difference.postgres_copies} in Postgres)"
            )
        elif difference.delta_copies > 1 or difference.postgres_copies > 1:
            line += f"  ({max(difference.delta_copies, difference.postgres_copies)} copies)"
        click.echo(line)
        width = max((len(c.column) for c in difference.columns), default=0)
        for change in difference.columns:
            click.echo(
                f"      {change.column:<{width}}  Delta {_value_text(change.delta)}"
                f"  Postgres {_value_text(change.postgres)}"
            )
