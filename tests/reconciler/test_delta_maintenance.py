"""The Delta maintenance matrix: what ordinary operations on real Delta tables mean for a month
that was synced to Postgres, as `check`, `check --deep`, one daemon cycle and `status` report it.

Every case starts from the same state: October and September of a table written to Delta (October
in three files) and replicated. Then the operation runs, and the answers must be the truth,
computed from the rows themselves: `in_sync` exactly when both sides hold the same rows, `lagging`
when Postgres holds what was written and Delta moved on, `drift` otherwise (and `orphaned` for a
month gone from Delta).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, Field, write_deltalake
from psycopg import sql

from reconciler.check import Checker
from reconciler.cli import main
from reconciler.daemon import Daemon
from reconciler.diff import Differ
from reconciler.sample import ranking_signal, write_delta_month
from replicator.config import DaemonSettings, Settings, TableSpec, with_overrides
from replicator.month import Month
from replicator.postgres import Database
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.deltalog import DeltaLog
from tests.months import month_key

OCT, SEP = YearMonth.parse("2026-10"), YearMonth.parse("2026-09")
TABLE = "matrix_signal"  # its own Postgres table: cases alter it
SPEC = TableSpec(TABLE, ("signal_date", "entity_id", "signal_name"))
MONTH = "year_month = '2026-10'"


@dataclass
class Case:
    """The table under test: its Delta location, Postgres, and what the sync wrote."""

    uri: str
    pg: psycopg.Connection[Any]
    settings: Settings
    column_mapping: bool = False

    def delta(self) -> DeltaTable:
        return DeltaTable(self.uri)

    def log(self) -> DeltaLog:
        return DeltaLog(self.uri)

    def alter_postgres(self, statement: str) -> None:
        self.pg.execute(statement.format(table=f"ranking.{TABLE}"))

    def other_month_commits(self, count: int = 1) -> None:
        """Commits that change no month this test watches (one outside the window)."""
        old = YearMonth.parse("2019-01")
        for seed in range(count):
            write_delta_month(self.uri, old, ranking_signal(old, 5, seed=100 + seed))


def rows(data: pa.Table, columns: list[str]) -> list[tuple[Any, ...]]:
    def norm(value: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            return value.astimezone(dt.UTC)
        return value

    return sorted(
        (
            tuple(norm(v) for v in row)
            for row in zip(*(data.column(c).to_pylist() for c in columns), strict=True)
        ),
        key=repr,
    )


def postgres_rows(case: Case, columns: list[str]) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM ranking.{} WHERE year_month = '2026-10'").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(TABLE)
    )
    fetched = case.pg.execute(query).fetchall()
    return rows(pa.table({c: [r[i] for r in fetched] for i, c in enumerate(columns)}), columns)


def delta_rows(case: Case, columns: list[str]) -> list[tuple[Any, ...]]:
    return rows(pa.table(case.delta().scan(columns=columns, predicate=MONTH)), columns)


def truth(case: Case, written: list[tuple[Any, ...]], columns: list[str]) -> str:
    """The status the rows themselves call for."""
    in_postgres, in_delta = postgres_rows(case, columns), delta_rows(case, columns)
    if in_postgres == in_delta:
        return "in_sync"
    if not in_delta:
        return "orphaned"
    return "lagging" if in_postgres == written else "drift"


# -- the operations ----------------------------------------------------------------------------
def append(case: Case) -> None:
    extra = ranking_signal(OCT, 20, seed=7)
    ids = pc.binary_join_element_wise(extra.column("entity_id"), pa.scalar("-new"), "")
    write_deltalake(
        case.uri, extra.set_column(2, "entity_id", ids), mode="append", partition_by=["year_month"]
    )


def overwrite_month(case: Case) -> None:
    write_delta_month(case.uri, OCT, ranking_signal(OCT, 150, seed=9))


def delete_rewriting_files(case: Case) -> None:
    case.delta().delete(f"{MONTH} AND rank < 10")


def delete_with_dv(case: Case) -> None:
    assert case.log().delete_with_deletion_vectors(
        "2026-10", lambda t: pc.less(t.column("rank"), 10)
    )


def delete_with_inline_dv(case: Case) -> None:
    assert case.log().delete_with_deletion_vectors(
        "2026-10", lambda t: pc.less(t.column("rank"), 10), inline=True
    )


def update(case: Case) -> None:
    case.delta().update(predicate=f"{MONTH} AND rank = 5", updates={"value": "42.0"})


def merge(case: Case) -> None:
    source = ranking_signal(OCT, 10, seed=1).set_column(4, "value", pa.array([0.25] * 10))
    (
        case.delta()
        .merge(
            source,
            predicate="t.year_month = s.year_month AND t.signal_date = s.signal_date"
            " AND t.entity_id = s.entity_id AND t.signal_name = s.signal_name",
            source_alias="s",
            target_alias="t",
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )


def optimize(case: Case) -> None:
    case.delta().optimize.compact()


def z_order(case: Case) -> None:
    case.delta().optimize.z_order(["entity_id"])


def optimize_then_vacuum(case: Case) -> None:
    optimize(case)
    case.delta().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)


def _clean_up_log(case: Case) -> None:
    case.delta().alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})
    case.other_month_commits(2)
    table = case.delta()
    table.create_checkpoint()
    table.cleanup_metadata()


def log_cleanup_month_untouched(case: Case) -> None:
    _clean_up_log(case)


def optimize_then_log_cleanup(case: Case) -> None:
    optimize(case)
    _clean_up_log(case)


def rewrite_then_vacuum(case: Case) -> None:
    overwrite_month(case)
    case.delta().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)


def column_added_in_delta_only(case: Case) -> None:
    case.delta().alter.add_columns([Field("quality", "double", nullable=True)])


def column_added_on_both_sides(case: Case) -> None:
    column_added_in_delta_only(case)
    case.alter_postgres("ALTER TABLE {table} ADD COLUMN quality double precision")


def postgres_column_widened(case: Case) -> None:
    case.alter_postgres("ALTER TABLE {table} ALTER COLUMN rank TYPE bigint")


def delta_type_widening(case: Case) -> None:
    postgres_column_widened(case)
    case.log().widen_type("rank", "long")


def renamed_in_delta_only(case: Case) -> None:
    case.log().rename_column("value", "score")


def renamed_on_both_sides(case: Case) -> None:
    renamed_in_delta_only(case)
    case.alter_postgres("ALTER TABLE {table} RENAME COLUMN value TO score")


def recreated_with_the_same_rows(case: Case) -> None:
    shutil.rmtree(case.uri)
    setup_delta(case)


def recreated_with_other_rows(case: Case) -> None:
    # Versions restart; enough commits that the new table passes the synced version.
    shutil.rmtree(case.uri)
    for seed in range(6):
        write_delta_month(case.uri, OCT, ranking_signal(OCT, 90, seed=50 + seed))
    write_delta_month(case.uri, SEP, ranking_signal(SEP, 40))


def month_deleted(case: Case) -> None:
    case.delta().delete(MONTH)


# -- round 2 (#20): metadata that changes rows, rewritten history, stats missing, rewrites ----
def column_dropped_and_added_again(case: Case) -> None:
    """Column mapping: a new physical name, so every old value now reads as NULL."""
    case.log().remap_column("value")


def physical_names_swapped(case: Case) -> None:
    case.log().swap_physical_names("entity_id", "signal_name")


def history_rewritten(case: Case) -> None:
    """The synced (latest) commit replaced by another with the same number and other rows."""
    case.log().rewrite_last_commit("2026-10", ranking_signal(OCT, 120, seed=77))


def dv_on_a_file_without_statistics(case: Case) -> None:
    log = case.log()
    assert log.delete_with_deletion_vectors("2026-10", lambda t: pc.less(t.column("rank"), 10))
    log.strip_num_records(log.versions()[-1])


def whole_table_overwritten_with_the_same_rows(case: Case) -> None:
    same = case.delta().to_pyarrow_table()
    write_deltalake(case.uri, same, mode="overwrite", partition_by=["year_month"])


def table_replaced_with_the_same_rows(case: Case) -> None:
    same = case.delta().to_pyarrow_table()
    write_deltalake(
        case.uri, same, mode="overwrite", schema_mode="overwrite", partition_by=["year_month"]
    )


def dv_hiding_every_row(case: Case) -> None:
    assert case.log().delete_with_deletion_vectors(
        "2026-10", lambda t: pc.greater_equal(t.column("rank"), 0)
    )


@dataclass(frozen=True)
class Expect:
    check: str
    deep: str
    metadata_only: bool = False  # the daemon's cycle after the operation computes no digest
    error_words: tuple[str, ...] = ()  # for an error: what the one line must name
    column_mapping: bool = False
    readable: bool = True  # delta-rs can read the table (the truth is computed from its rows)


MATRIX: list[tuple[Callable[[Case], None], Expect]] = [
    (append, Expect("lagging", "lagging")),
    (overwrite_month, Expect("lagging", "lagging")),
    (delete_rewriting_files, Expect("lagging", "lagging")),
    (delete_with_dv, Expect("lagging", "lagging")),
    (delete_with_inline_dv, Expect("lagging", "lagging")),
    (update, Expect("lagging", "lagging")),
    (merge, Expect("lagging", "lagging")),
    (optimize, Expect("in_sync", "in_sync", metadata_only=True)),
    (z_order, Expect("in_sync", "in_sync", metadata_only=True)),
    (optimize_then_vacuum, Expect("in_sync", "in_sync", metadata_only=True)),
    (log_cleanup_month_untouched, Expect("in_sync", "in_sync", metadata_only=True)),
    (optimize_then_log_cleanup, Expect("in_sync", "in_sync")),
    (rewrite_then_vacuum, Expect("lagging", "lagging")),
    (
        column_added_in_delta_only,
        Expect("error", "error", error_words=("'quality'", "ADD COLUMN", "double precision")),
    ),
    (column_added_on_both_sides, Expect("in_sync", "in_sync")),
    (postgres_column_widened, Expect("in_sync", "in_sync")),
    (
        delta_type_widening,
        # The type change is a metaData action: the month is recomputed, never assumed
        # unchanged (#20), and delta-rs cannot read the feature yet.
        Expect("error", "error", error_words=("TypeWidening", "cannot read"), readable=False),
    ),
    (
        renamed_in_delta_only,
        Expect(
            "error",
            "error",
            error_words=("'value' was renamed to 'score'", "RENAME COLUMN"),
            column_mapping=True,
        ),
    ),
    (renamed_on_both_sides, Expect("in_sync", "in_sync", column_mapping=True)),
    (recreated_with_the_same_rows, Expect("in_sync", "in_sync")),
    (recreated_with_other_rows, Expect("lagging", "lagging")),
    (month_deleted, Expect("orphaned", "orphaned")),
    (column_dropped_and_added_again, Expect("lagging", "lagging", column_mapping=True)),
    (physical_names_swapped, Expect("lagging", "lagging", column_mapping=True)),
    (history_rewritten, Expect("lagging", "lagging")),
    (dv_on_a_file_without_statistics, Expect("lagging", "lagging")),
    (whole_table_overwritten_with_the_same_rows, Expect("in_sync", "in_sync")),
    (table_replaced_with_the_same_rows, Expect("in_sync", "in_sync")),
    (dv_hiding_every_row, Expect("orphaned", "orphaned")),
]


def setup_delta(case: Case) -> None:
    """October in three files, September in one."""
    config = {"delta.columnMapping.mode": "name"} if case.column_mapping else None
    first = ranking_signal(OCT, 200, seed=1)
    for part in range(3):
        chunk = first.slice(part * 70, 70)
        if part == 0:
            write_deltalake(
                case.uri, chunk, partition_by=["year_month"], mode="overwrite", configuration=config
            )
        else:
            write_deltalake(case.uri, chunk, partition_by=["year_month"], mode="append")
    write_delta_month(case.uri, SEP, ranking_signal(SEP, 40))


@pytest.fixture
def matrix_table(pg: psycopg.Connection[Any]) -> Iterator[None]:
    pg.execute(f"DROP TABLE IF EXISTS ranking.{TABLE}")
    pg.execute(f"CREATE TABLE ranking.{TABLE} (LIKE ranking.ranking_signal INCLUDING ALL)")
    yield
    pg.execute(f"DROP TABLE IF EXISTS ranking.{TABLE}")


def columns_of(case: Case) -> list[str]:
    names = [f.name for f in case.delta().schema().fields if f.name != "year_month"]
    present = {
        r[0]
        for r in case.pg.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped",
            (f"ranking.{TABLE}",),
        )
    }
    return [n for n in names if n in present]


@pytest.mark.parametrize(("operation", "expect"), MATRIX, ids=[op.__name__ for op, _ in MATRIX])
def test_delta_maintenance_matrix(
    operation: Callable[[Case], None],
    expect: Expect,
    settings: Settings,
    delta_root: str,
    pg: psycopg.Connection[Any],
    matrix_table: None,
    cli_env: dict[str, str],
    tmp_path: Any,
) -> None:
    configured = with_overrides(
        settings,
        tables=(SPEC,),
        daemon=DaemonSettings(
            interval_seconds=60,
            metrics_addr="127.0.0.1:0",
            deep_check_period_seconds=86400,
            postgres_check_period_seconds=86400,
        ),
    )
    case = Case(f"{delta_root}/{TABLE}", pg, configured, expect.column_mapping)
    setup_delta(case)
    for month in (OCT, SEP):
        MonthWriter(configured).write_month(SPEC, month)
    columns = columns_of(case)
    written = postgres_rows(case, columns)
    daemon = Daemon(lambda: configured)
    try:
        first = daemon.run_cycle()
        assert first.checked == 2
        assert daemon.months[month_key(TABLE, "2026-10")].status == "in_sync"

        operation(case)

        checker = Checker.for_settings(configured)
        plain, deep = (
            checker.check(Month.of(SPEC, OCT)),
            checker.check(Month.of(SPEC, OCT), deep=True),
        )
        cycle = daemon.run_cycle()
        by_daemon = daemon.months[month_key(TABLE, "2026-10")]
        assert (plain.status, deep.status) == (expect.check, expect.deep), (
            plain.reason,
            deep.reason,
        )
        assert by_daemon.status == expect.check, by_daemon.record.reason
        for result in (plain, deep):
            if result.status == "error":
                for words in expect.error_words:
                    assert words in result.reason, result.reason
                assert "\n" not in result.reason
        if expect.check != "error" and expect.readable:
            assert expect.check == truth(case, written, columns_of(case)), (
                "the expectation is wrong"
            )
        if expect.metadata_only:
            assert cycle.checked == 0, "a data-neutral operation made the daemon compute digests"
        if expect.check != "error":  # an error is retried every cycle; anything else settled
            assert daemon.run_cycle().checked == 0
        assert checker.check(Month.of(SPEC, OCT)).status == expect.check
        # A restarted daemon (a new process) says the same after its first cycle.
        restarted = Daemon(lambda: configured)
        try:
            restarted.run_cycle()
            again = restarted.months[month_key(TABLE, "2026-10")]
            assert again.status == expect.check, again.record.reason
        finally:
            restarted.stop()
            restarted.leader.release()
        if expect.deep in ("in_sync", "drift") and expect.readable:
            found = Differ(Database.for_settings(configured), configured).diff(Month.of(SPEC, OCT))
            assert (found.found == 0) == (expect.deep == "in_sync"), found.as_dict()
        gate = CliRunner().invoke(
            main,
            ["status", "--require-in-sync", "--json", "--config", str(_config(tmp_path))],
            catch_exceptions=False,
        )
        in_sync = expect.check == "in_sync"
        assert gate.exit_code == (0 if in_sync else 1), gate.output
        (month,) = [
            m
            for m in json.loads(gate.stdout)["months"]
            if (m["table"], m["year_month"]) == (TABLE, "2026-10")
        ]
        assert month["status"] == expect.check, month
    finally:
        daemon.stop()
        daemon.leader.release()


def _config(tmp_path: Any) -> Any:
    path = tmp_path / "matrix.toml"
    path.write_text(
        f"[[tables]]\nname = '{TABLE}'\nkey_columns = ['signal_date', 'entity_id', 'signal_name']\n"
    )
    return path
