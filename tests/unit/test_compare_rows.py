"""`compare_rows`: two multisets of rows of the same buckets, told apart key by key."""

from __future__ import annotations

from reconciler.diff import Kind, compare_rows
from reconciler.localize import SideRow
from replicator.config import TableSpec
from replicator.schema import Column, ColumnType, TableSchema

SPEC = TableSpec("t", ("entity_id", "signal_name"))
SCHEMA = TableSchema(
    SPEC,
    (
        Column("year_month", ColumnType.from_delta("string"), False),
        Column("entity_id", ColumnType.from_delta("string"), False),
        Column("signal_name", ColumnType.from_delta("string"), False),
        Column("value", ColumnType.from_delta("double"), True),
        Column("rank", ColumnType.from_delta("integer"), True),
    ),
)
# value columns in digest order: entity_id, rank, signal_name, value


def row(entity: str, name: str, rank: int | None, value: float | None) -> SideRow:
    """Values as `localize.render` gives them (doubles as text), fields as their hashes."""
    values = (entity, rank, name, None if value is None else repr(value))
    fields = tuple(hash(("N",) if v is None else (v,)) for v in values)
    return SideRow(hash(fields), values, fields)


def diff(delta: list[SideRow], postgres: list[SideRow]) -> list[tuple[Kind, str, tuple[str, ...]]]:
    return [
        (d.kind, str(d.key["entity_id"]), tuple(c.column for c in d.columns))
        for d in compare_rows(SCHEMA, iter(delta), iter(postgres))
    ]


def test_equal_multisets_differ_in_nothing() -> None:
    rows = [row("a", "ctr", 1, 0.5), row("b", "ctr", 2, None)]
    assert diff(rows, list(reversed(rows))) == []


def test_each_kind_is_told_apart() -> None:
    delta = [row("a", "ctr", 1, 0.5), row("b", "ctr", 2, 0.1), row("c", "ctr", 3, 0.3)]
    postgres = [
        row("b", "ctr", 2, 0.1),
        row("b", "ctr", 2, 0.1),  # a second copy
        row("c", "ctr", 4, None),  # rank and value changed
        row("d", "ctr", 5, 0.9),  # foreign
    ]
    assert diff(delta, postgres) == [
        (Kind.ONLY_IN_DELTA, "a", ()),
        (Kind.DUPLICATED, "b", ()),
        (Kind.CHANGED, "c", ("rank", "value")),
        (Kind.ONLY_IN_POSTGRES, "d", ()),
    ]


def test_a_duplicated_key_reports_the_copies_on_each_side() -> None:
    twice = [row("a", "ctr", 1, 0.5)] * 2
    (found,) = compare_rows(SCHEMA, iter(twice), iter(twice * 2))
    assert (found.kind, found.delta_copies, found.postgres_copies) == (Kind.DUPLICATED, 2, 4)


def test_changed_values_are_reported_as_each_side_holds_them() -> None:
    (found,) = compare_rows(
        SCHEMA, iter([row("a", "ctr", 1, 0.1)]), iter([row("a", "ctr", 1, 0.30000000000000004)])
    )
    (change,) = found.columns
    assert (change.column, change.delta, change.postgres) == ("value", "0.1", "0.30000000000000004")


def test_keys_come_out_sorted_and_in_the_configured_key_order() -> None:
    delta = [row("b", "x", 1, 1.0), row("a", "y", 1, 1.0)]
    found = list(compare_rows(SCHEMA, iter(delta), iter([])))
    assert [list(d.key) for d in found] == [["entity_id", "signal_name"]] * 2
    assert [d.key["entity_id"] for d in found] == ["a", "b"]
