"""The month write against a real Postgres and real Delta tables."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from replicator import write_signals_for_year_month
from replicator.config import Settings, with_overrides
from replicator.errors import DeltaError, InputError, PostgresError, StaleSnapshotError
from replicator.secrets import Dsn
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_db import LAYOUTS, SilentServer
from tests.fix_delta import WriteMonth

pytestmark = LAYOUTS
OCT = YearMonth.parse("2026-10")
COLUMNS = "signal_date, entity_id, signal_name, value, rank, computed_at"


def pg_rows(pg: psycopg.Connection[Any], month: str = "2026-10") -> list[tuple[Any, ...]]:
    return pg.execute(
        f"SELECT {COLUMNS} FROM ranking.ranking_signal WHERE year_month = %s ORDER BY 1, 2, 3",
        (month,),
    ).fetchall()


def arrow_rows(data: pa.Table) -> list[tuple[Any, ...]]:
    columns = [data.column(n).to_pylist() for n in COLUMNS.split(", ")]
    return sorted(zip(*columns, strict=True), key=lambda r: (r[0], r[1], r[2]))


def sync_state(pg: psycopg.Connection[Any], table: str = "ranking_signal") -> tuple[Any, ...]:
    row = pg.execute(
        "SELECT delta_version, row_count, run_id, consecutive_failures, last_failure_reason"
        " FROM ranking.signal_sync_state WHERE table_name = %s AND year_month = '2026-10'",
        (table,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_write_then_rewrite_replaces_the_month_exactly(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    write_month("ranking_signal", "2026-09", rows=50, seed=9)
    first = write_month("ranking_signal", "2026-10", rows=300, seed=1)
    writer = MonthWriter(settings, run_id="run-one")
    result = writer.write_month(settings.table("ranking_signal"), OCT)
    assert (result.status, result.rows, result.delta_version) == ("written", 300, 1)
    assert pg_rows(pg) == arrow_rows(first)
    assert sync_state(pg)[:3] == (1, 300, "run-one")

    second = write_month("ranking_signal", "2026-10", rows=120, seed=2)
    MonthWriter(settings, run_id="run-two").write_month(settings.table("ranking_signal"), OCT)
    assert pg_rows(pg) == arrow_rows(second)
    assert sync_state(pg)[:3] == (2, 120, "run-two")
    assert pg_rows(pg, "2026-09") == []  # never written: other months untouched


def test_all_configured_tables_in_one_call(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    write_month("ranking_signal", "2026-10", rows=40)
    write_month("composite_signal_daily", "2026-10", rows=30)
    results = write_signals_for_year_month("2026-10", settings=settings)
    assert [(r.table, r.status, r.rows) for r in results] == [
        ("ranking_signal", "written", 40),
        ("composite_signal_daily", "written", 30),
    ]
    assert sync_state(pg, "composite_signal_daily")[1] == 30


def test_pinned_version_and_stale_snapshot_is_refused(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    old = write_month("ranking_signal", "2026-10", rows=10, seed=1)
    new = write_month("ranking_signal", "2026-10", rows=20, seed=2)
    spec = settings.table("ranking_signal")
    MonthWriter(settings).write_month(spec, OCT)
    assert pg_rows(pg) == arrow_rows(new)
    with pytest.raises(StaleSnapshotError, match="newer than version 0"):
        MonthWriter(settings).write_month(spec, OCT, delta_version=0)
    assert pg_rows(pg) == arrow_rows(new)
    MonthWriter(settings).write_month(spec, OCT, delta_version=0, force=True)
    assert pg_rows(pg) == arrow_rows(old)
    assert sync_state(pg)[:2] == (0, 10)


def test_absent_month_never_empties_postgres_unless_allowed(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    data = write_month("ranking_signal", "2026-10", rows=10)
    spec = settings.table("ranking_signal")
    MonthWriter(settings).write_month(spec, OCT)
    with pytest.raises(InputError, match=r"2026-11 is absent from Delta.*--allow-empty"):
        MonthWriter(settings).write_month(spec, YearMonth.parse("2026-11"))
    # A Delta write that removed the month: the month is gone from the latest snapshot.
    import deltalake

    deltalake.DeltaTable(settings.table_uri(spec)).delete("year_month = '2026-10'")
    with pytest.raises(InputError, match="absent"):
        MonthWriter(settings).write_month(spec, OCT)
    assert pg_rows(pg) == arrow_rows(data)
    result = MonthWriter(settings).write_month(spec, OCT, allow_empty=True)
    assert (result.status, result.rows) == ("written", 0)
    assert pg_rows(pg) == []


def test_missing_delta_table_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(DeltaError, match="ranking_signal: no Delta table at"):
        MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["rank"]), "column 'rank' is in Postgres but not in Delta"),
        (
            lambda t: t.append_column("extra", pa.array([1] * t.num_rows)),
            "column 'extra' \\(long, nullable\\) is in Delta but not in Postgres: run "
            '`ALTER TABLE ranking.ranking_signal ADD COLUMN "extra" bigint`',
        ),
        (
            lambda t: t.set_column(5, "rank", t.column("rank").cast(pa.int64())),
            "column 'rank' is long in Delta, which needs Postgres bigint, but Postgres has "
            'integer: run `ALTER TABLE ranking.ranking_signal ALTER COLUMN "rank" TYPE bigint`',
        ),
    ],
)
def test_incompatible_schema_is_named_before_any_write(
    settings: Settings,
    write_month: WriteMonth,
    pg: psycopg.Connection[Any],
    change: Any,
    message: str,
    delta_root: str,
) -> None:
    good = write_month("ranking_signal", "2026-10", rows=10)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    other_root = delta_root + "/other"
    from reconciler.sample import ranking_signal

    write_month("ranking_signal", "2026-10", data=change(ranking_signal(OCT, 5)), root=other_root)
    bad_settings = with_overrides(settings, delta={"root": other_root})
    with pytest.raises(InputError, match=message):
        MonthWriter(bad_settings).write_month(settings.table("ranking_signal"), OCT)
    assert pg_rows(pg) == arrow_rows(good)


def test_nul_byte_is_rejected_with_table_and_column_but_no_row_data(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    from reconciler.sample import ranking_signal

    good = write_month("ranking_signal", "2026-10", rows=10)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    bad = ranking_signal(OCT, 10, seed=3)
    names = bad.column("signal_name").to_pylist()
    names[7] = "ctr\x00evil"
    bad = bad.set_column(3, "signal_name", pa.array(names))
    write_month("ranking_signal", "2026-10", data=bad)
    with pytest.raises(InputError, match=r"ranking_signal: column 'signal_name'.*NUL byte") as e:
        MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    assert "entity-" not in str(e.value) and "evil" not in str(e.value)  # no serving data
    assert pg_rows(pg) == arrow_rows(good)


def test_verify_counts_rolls_back_on_mismatch(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any], layout: str
) -> None:
    good = write_month("ranking_signal", "2026-10", rows=10)
    checked = with_overrides(settings, postgres={"verify_counts": True})
    MonthWriter(checked).write_month(settings.table("ranking_signal"), OCT)
    write_month("ranking_signal", "2026-10", rows=12, seed=5)
    # Something in Postgres adds a row during the COPY: the count check must catch it.
    pg.execute("""
        CREATE FUNCTION ranking.add_one() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO ranking.ranking_signal SELECT * FROM ranking.ranking_signal LIMIT 1;
            RETURN NULL;
        END $$;
        CREATE TRIGGER add_one AFTER INSERT ON ranking.ranking_signal
            FOR EACH STATEMENT WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION ranking.add_one();
    """)
    try:
        if layout == "partitioned":
            # The month is copied into a staging table, which no trigger of the table reaches.
            MonthWriter(checked).write_month(settings.table("ranking_signal"), OCT)
            assert sync_state(pg)[:2] == (1, 12) and len(pg_rows(pg)) == 12
            return
        with pytest.raises(PostgresError, match="count check failed: Delta has 12 rows"):
            MonthWriter(checked).write_month(settings.table("ranking_signal"), OCT)
        assert pg_rows(pg) == arrow_rows(good)
        assert sync_state(pg)[:2] == (0, 10)
    finally:
        pg.execute(
            "DROP TRIGGER add_one ON ranking.ranking_signal; DROP FUNCTION ranking.add_one()"
        )


def test_best_effort_failure_is_recorded_and_does_not_raise(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    write_month("ranking_signal", "2026-10", rows=10)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    pg.execute(
        "ALTER TABLE ranking.ranking_signal ADD CONSTRAINT no_big_rank CHECK (rank < 5) NOT VALID"
    )
    try:
        best_effort = with_overrides(settings, postgres={"write_required": False})
        for attempt in (1, 2):
            result = MonthWriter(best_effort, run_id=f"r{attempt}").write_month(
                settings.table("ranking_signal"), OCT
            )
            assert result.status == "failed"
            assert "no_big_rank" in result.message
            version, rows, _, failures, reason = sync_state(pg)
            assert (version, rows, failures) == (0, 10, attempt)  # still describes what is there
            assert "no_big_rank" in reason
        with pytest.raises(PostgresError, match="no_big_rank"):
            MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
        assert sync_state(pg)[3] == 3
    finally:
        pg.execute("ALTER TABLE ranking.ranking_signal DROP CONSTRAINT no_big_rank")
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    assert sync_state(pg)[3] == 0


def test_no_dsn_skips_with_a_log_line(
    delta_root: str, write_month: WriteMonth, caplog: pytest.LogCaptureFixture
) -> None:
    from replicator.config import load_settings

    write_month("ranking_signal", "2026-10", rows=5)
    results = write_signals_for_year_month(
        "2026-10", settings=load_settings(delta_root=delta_root, environ={})
    )
    assert {r.status for r in results} == {"skipped"}
    assert "POSTGRES_DSN is not set" in caplog.text


def test_unreachable_postgres_fails_within_the_connect_timeout(
    settings: Settings, write_month: WriteMonth, silent_server: SilentServer
) -> None:
    write_month("ranking_signal", "2026-10", rows=5)
    hung = with_overrides(
        settings, postgres={"connect_timeout_seconds": 2}, dsn=Dsn(silent_server.dsn())
    )
    started = time.monotonic()
    with pytest.raises(PostgresError, match=r"cannot connect to Postgres at 127\.0\.0\.1") as info:
        MonthWriter(hung).write_month(settings.table("ranking_signal"), OCT)
    assert time.monotonic() - started < 10
    assert "S3cretCanary" not in str(info.value)


def test_months_with_deletion_vectors_replicate_their_logical_rows_and_verify_counts(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any], delta_root: str
) -> None:
    import pyarrow.compute as pc

    from tests.deltalog import DeltaLog

    data = write_month("ranking_signal", "2026-10", rows=100)
    DeltaLog(f"{delta_root}/ranking_signal").delete_with_deletion_vectors(
        "2026-10", lambda t: pc.less(t.column("rank"), 30)
    )
    checked = with_overrides(settings, postgres={"verify_counts": True})
    result = MonthWriter(checked).write_month(settings.table("ranking_signal"), OCT)
    assert (result.status, result.rows) == ("written", 70)  # numRecords 100, DV cardinality 30
    kept = data.filter(pc.greater_equal(data.column("rank"), 30))
    assert pg_rows(pg) == arrow_rows(kept)
    assert sync_state(pg)[1] == 70
