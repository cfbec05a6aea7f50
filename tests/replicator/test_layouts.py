"""Big months: statistics fresh after every write, the partitioned layout's swap (no dead tuples,
readers never see a mix, the writer cannot misuse it), the online conversion of a plain table
under concurrent reads and writes, and the reconciler's checks, diff, repair and outside-write
detection on partitions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from psycopg import sql
from psycopg.conninfo import make_conninfo

from reconciler.check import Checker, open_snapshot_transaction
from reconciler.convert import convert_to_partitioned
from reconciler.daemon import Daemon
from reconciler.diff import Differ
from reconciler.migrate import migrate
from reconciler.repair import Repairer
from reconciler.sample import GENERATORS
from replicator.config import Settings, load_settings
from replicator.errors import InputError
from replicator.layout import Layout
from replicator.month import Month
from replicator.postgres import Database
from replicator.secrets import Dsn
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_db import LAYOUTS, own_database
from tests.fix_delta import WriteMonth
from tests.months import month_key
from tests.waiting import until

OCT = YearMonth.parse("2026-10")
DIGEST_PLAN = (
    "EXPLAIN (FORMAT JSON) SELECT count(*), sum(hashtextextended(entity_id, 0))"
    " FROM ranking.ranking_signal WHERE year_month = '2026-10'"
)


def as_role(settings: Settings, pg_dsn: str, login: str) -> Settings:
    return load_settings(
        dsn=make_conninfo(pg_dsn, user=login), delta_root=settings.delta.root, environ={}
    )


def login_name(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


@LAYOUTS
def test_a_write_leaves_the_month_analyzed_and_the_digest_plan_parallel(
    settings: Settings,
    write_month: WriteMonth,
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    login_as: Any,
    layout: str,
) -> None:
    """As the least-privileged writer: MAINTAIN on Postgres 17+, the SECURITY DEFINER
    function before, the staging table's own ANALYZE in the partitioned layout."""
    if layout == "plain":  # only the writer may analyze: autovacuum must not help the test
        pg.execute("ALTER TABLE ranking.ranking_signal SET (autovacuum_enabled = off)")
    rows = 40_000
    write_month("ranking_signal", "2026-10", rows=rows)
    with login_as("ranking_writer") as writer:
        role = login_name(writer)
    try:
        MonthWriter(as_role(settings, pg_dsn, role)).write_month(
            settings.table("ranking_signal"), OCT
        )
        relation = (
            "ranking.ranking_signal" if layout == "plain" else "ranking.ranking_signal_202610"
        )
        stats = pg.execute(
            "SELECT c.reltuples, s.last_analyze IS NOT NULL FROM pg_class c"
            " JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = %s::regclass",
            (relation,),
        ).fetchone()
        assert stats is not None and stats[1], f"{relation} was not analyzed by the write"
        assert stats[0] == rows
        with pg.transaction():
            for setting in (
                "max_parallel_workers_per_gather = 2",
                "parallel_setup_cost = 0",
                "parallel_tuple_cost = 0",
                "min_parallel_table_scan_size = 0",
            ):
                pg.execute(f"SET LOCAL {setting}")
            (document,) = pg.execute(DIGEST_PLAN).fetchone()  # type: ignore[misc]
        plan = (document if isinstance(document, list) else json.loads(document))[0]["Plan"]
        nodes = list(plan_nodes(plan))
        assert any(n["Node Type"] == "Gather" for n in nodes), nodes
        (scan,) = [n for n in nodes if "Scan" in n["Node Type"]]
        assert scan["Node Type"] == "Seq Scan" and scan.get("Parallel Aware"), scan
        # The estimate counts the month: the planner knows it is the whole month.
        assert scan["Plan Rows"] * (scan.get("Workers Planned") or 1) >= rows * 0.3
    finally:
        pg.execute("ALTER TABLE ranking.ranking_signal RESET (autovacuum_enabled)")


# -- the partitioned layout's swap ---------------------------------------------------------
@pytest.fixture
def partitioned(layout: str) -> str:
    return layout


@pytest.mark.parametrize("layout", ["partitioned"], indirect=True)
def test_rewrites_leave_no_dead_tuples_and_readers_never_see_a_mix(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    versions: dict[int, int] = {}
    for seed in range(4):
        data = write_month("ranking_signal", "2026-10", rows=2000 + seed, seed=seed)
        versions[data.num_rows] = int(sum(data.column("rank").to_pylist()))
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as reader:
            while not done.is_set():
                try:
                    row = reader.execute(
                        "SELECT count(*), coalesce(sum(rank), 0) FROM ranking.ranking_signal"
                        " WHERE year_month = '2026-10'"
                    ).fetchone()
                    assert row is not None
                    seen.append((int(row[0]), int(row[1])))
                except BaseException as exc:
                    errors.append(exc)
                    return

    reader = threading.Thread(target=read)
    writer = MonthWriter(settings)
    spec = settings.table("ranking_signal")
    writer.write_month(spec, OCT, delta_version=0)
    reader.start()
    try:
        for _ in range(3):
            for version in (1, 2, 3, 0):
                writer.write_month(spec, OCT, delta_version=version, force=True)
    finally:
        done.set()
        reader.join(timeout=30)
    assert not errors, errors
    assert len(seen) > 10
    assert set(seen) <= {(n, total) for n, total in versions.items()}, "a reader saw a mix"
    partitions = pg.execute(
        "SELECT c.relname, s.n_dead_tup FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE i.inhparent = 'ranking.ranking_signal'::regclass"
    ).fetchall()
    assert partitions == [("ranking_signal_202610", 0)]
    staging = pg.execute(
        "SELECT count(*) FROM pg_class"
        " WHERE relname LIKE 'ranking_signal_stage_%' AND relkind = 'r'"
    ).fetchone()
    assert staging == (0,)


@pytest.mark.parametrize("layout", ["partitioned"], indirect=True)
def test_a_failed_write_leaves_the_old_partition_and_no_staging_table(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    write_month("ranking_signal", "2026-10", rows=50)
    spec = settings.table("ranking_signal")
    MonthWriter(settings).write_month(spec, OCT)
    bad = GENERATORS["ranking_signal"](OCT, 60, 1)
    bad = bad.set_column(
        bad.schema.get_field_index("entity_id"),
        "entity_id",
        [["x\x00y", *bad.column("entity_id").to_pylist()[1:]]],
    )
    write_month("ranking_signal", "2026-10", data=bad)
    with pytest.raises(InputError, match="NUL byte"):
        MonthWriter(settings).write_month(spec, OCT)
    assert pg.execute(
        "SELECT count(*) FROM ranking.ranking_signal WHERE year_month = '2026-10'"
    ).fetchone() == (50,)
    assert pg.execute(
        "SELECT count(*) FROM pg_class"
        " WHERE relname LIKE 'ranking_signal_stage_%' AND relkind = 'r'"
    ).fetchone() == (0,)


@pytest.mark.parametrize("layout", ["partitioned"], indirect=True)
def test_the_writer_cannot_misuse_the_swap(
    pg: psycopg.Connection[Any], login_as: Any, pg_dsn: str
) -> None:
    writer = login_as("ranking_writer")
    role = login_name(writer)

    def refused(statement: str, *params: Any, match: str) -> None:
        with pytest.raises(psycopg.Error, match=match):
            writer.execute(statement, params or None)

    stage = "SELECT ranking.stage_month(%s, %s, %s)"
    refused(stage, "ranking", "signal_sync_state", "2026-10", match="not a registered")
    refused(stage, "pg_catalog", "pg_authid", "2026-10", match="not a registered")
    refused(stage, "ranking", "ranking_signal", "2026-13", match="not a month")
    refused(stage, "ranking", "ranking_signal", "2026-10'; DROP TABLE x; --", match="not a month")
    refused(
        "SELECT ranking.registered_table('ranking', 'ranking_signal', NULL)",
        match="permission denied",
    )
    refused("CREATE TABLE ranking.mine (x int)", match="permission denied")
    refused("SELECT ranking.analyze_signal_table('ranking', 'repair_audit')", match="registered")
    with writer.transaction():
        (staged,) = writer.execute(stage, ("ranking", "ranking_signal", "2026-10")).fetchone()  # type: ignore[misc]
        swap = "SELECT ranking.swap_month(%s, %s, %s, %s)"
        for args in (
            ("ranking", "ranking_signal", "2026-10", "signal_sync_state"),
            ("ranking", "ranking_signal", "2026-09", staged),  # another month's
            ("ranking", "composite_signal_daily", "2026-10", staged),  # another table's
            ("ranking", "ranking_signal", "2026-10", staged.replace("_stage_", "_stagex_")),
        ):
            with writer.transaction(force_rollback=True), pytest.raises(psycopg.Error):
                writer.execute(swap, args)
    # search_path tricks: functions shadowing the builtins the SECURITY DEFINER code calls.
    pg.execute(sql.SQL("CREATE SCHEMA evil AUTHORIZATION {}").format(sql.Identifier(role)))
    try:
        for signature in ("left(text, integer)", "replace(text, text, text)", "md5(text)"):
            writer.execute(
                f"CREATE FUNCTION evil.{signature} RETURNS text LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$"
            )
        writer.execute("SET search_path = evil, pg_catalog")
        with writer.transaction():
            (staged,) = writer.execute(stage, ("ranking", "ranking_signal", "2026-10")).fetchone()  # type: ignore[misc]
            writer.execute(
                "SELECT ranking.swap_month('ranking', 'ranking_signal', '2026-10', %s)", (staged,)
            )
    finally:
        writer.close()
        pg.execute("DROP SCHEMA evil CASCADE")
    assert pg.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ranking.ranking_signal'::regclass"
    ).fetchone() == (1,)


# -- checks, diff, repair and the daemon on partitions -------------------------------------
def until_counted(pg: psycopg.Connection[Any], relname: str, counter: str) -> None:
    """Waits for the statistics of a write to be flushed (a backend does so within a second
    of going idle)."""
    query = sql.SQL("SELECT {} FROM pg_stat_user_tables WHERE relname = %s").format(
        sql.Identifier(counter)
    )
    until(lambda: (pg.execute(query, (relname,)).fetchone() or (0,))[0] > 0, 10, "statistics")


@pytest.mark.parametrize("layout", ["partitioned"], indirect=True)
def test_diff_repair_and_outside_writes_on_partitions(
    settings: Settings,
    write_month: WriteMonth,
    pg: psycopg.Connection[Any],
    make_daemon: Callable[..., Daemon],
) -> None:
    for month in ("2026-09", "2026-10"):
        for table in ("ranking_signal", "composite_signal_daily"):
            write_month(table, month, rows=300)
            MonthWriter(settings).write_month(settings.table(table), YearMonth.parse(month))
    daemon = make_daemon()
    daemon.run_cycle()
    assert all(m.status == "in_sync" for m in daemon.months.values())
    checks = "reconciler_checks_total"

    def compared() -> float:
        value = daemon.metrics.registry.get_sample_value(checks, {"table": "ranking_signal"})
        return value or 0.0

    before = compared()
    daemon.run_cycle()
    assert compared() == before  # nothing changed, nothing compared
    # An UPDATE around the replicator, in one month's partition: that month only is compared.
    pg.execute("UPDATE ranking.ranking_signal SET rank = rank + 1 WHERE year_month = '2026-10'")
    until_counted(pg, "ranking_signal_202610", "n_tup_upd")
    daemon.run_cycle()
    assert compared() == before + 1
    assert daemon.months[month_key("ranking_signal", "2026-10")].status == "drift"
    assert daemon.months[month_key("ranking_signal", "2026-09")].status == "in_sync"
    result = Differ(Database.for_settings(settings), settings).diff(
        Month.of(settings.table("ranking_signal"), OCT)
    )
    assert result.totals["changed"] == 300
    repaired = Repairer.for_settings(settings, actor="test").repair(
        Month.of(settings.table("ranking_signal"), OCT)
    )
    assert repaired.outcome == "repaired"
    # A partition swapped in by hand (not by the replicator) is noticed too.
    pg.execute(
        "CREATE TABLE ranking.by_hand (LIKE ranking.ranking_signal INCLUDING CONSTRAINTS);"
        " INSERT INTO ranking.by_hand SELECT * FROM ranking.ranking_signal"
        "  WHERE year_month = '2026-09' LIMIT 299;"
        " ALTER TABLE ranking.ranking_signal DETACH PARTITION ranking.ranking_signal_202609;"
        " DROP TABLE ranking.ranking_signal_202609;"
        " ALTER TABLE ranking.ranking_signal ATTACH PARTITION ranking.by_hand"
        "  FOR VALUES IN ('2026-09')"
    )
    until_counted(pg, "by_hand", "n_tup_ins")
    daemon.run_cycle()
    assert daemon.months[month_key("ranking_signal", "2026-09")].status == "drift"
    assert daemon.months[month_key("ranking_signal", "2026-10")].status == "in_sync"
    check = Checker.for_settings(settings).check(
        Month.of(settings.table("ranking_signal"), OCT), deep=True
    )
    assert check.status == "in_sync"


# -- converting a plain table, online ---------------------------------------------------------
@pytest.fixture
def plain_database(pg_server: str) -> Iterator[str]:
    """A database of this test's own: converting the session's plain one would change it for
    every other test."""
    with own_database(pg_server, "reconciler_convert", Layout.PLAIN) as dsn:
        yield dsn


def test_conversion_under_concurrent_reads_and_writes_loses_and_duplicates_nothing(
    plain_database: str, delta_root: str, write_month: WriteMonth
) -> None:
    settings = load_settings(dsn=plain_database, delta_root=delta_root, environ={})
    months = ["2026-07", "2026-08", "2026-09", "2026-10"]
    for month in months:
        for table in ("ranking_signal", "composite_signal_daily"):
            write_month(table, month, rows=3000)
            MonthWriter(settings).write_month(settings.table(table), YearMonth.parse(month))
    # The month a writer keeps rewriting during the conversion: two versions in Delta.
    sizes, versions = {}, []
    for seed in (1, 2):
        data = write_month("ranking_signal", "2026-10", rows=3000 + seed, seed=seed)
        sizes[data.num_rows] = int(sum(data.column("rank").to_pylist()))
        versions.append(DeltaTable(f"{delta_root}/ranking_signal").version())
    with psycopg.connect(plain_database) as conn:
        steady = {
            row[0]: (int(row[1]), int(row[2]))
            for row in conn.execute(
                "SELECT year_month, count(*), sum(rank) FROM ranking.ranking_signal GROUP BY 1"
            )
        }
    allowed = {m: {steady[m]} for m in months}
    allowed["2026-10"] |= set(sizes.items())
    seen: list[dict[str, tuple[int, int]]] = []
    errors: list[BaseException] = []
    writes: list[str] = []
    done = threading.Event()

    def read() -> None:
        with psycopg.connect(plain_database, autocommit=True) as reader:
            while not done.is_set():
                try:
                    rows = reader.execute(
                        "SELECT year_month, count(*), sum(rank) FROM ranking.ranking_signal"
                        " GROUP BY 1"
                    ).fetchall()
                    seen.append({r[0]: (int(r[1]), int(r[2])) for r in rows})
                except BaseException as exc:
                    errors.append(exc)
                    return

    def write() -> None:
        writer, spec = MonthWriter(settings), settings.table("ranking_signal")
        while not done.is_set():
            try:
                version = versions[len(writes) % 2]
                writes.append(
                    writer.write_month(spec, OCT, delta_version=version, force=True).status
                )
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        applied = migrate(Database(Dsn(plain_database)), settings.tables, layout=Layout.PARTITIONED)
        time.sleep(0.5)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    assert applied == [
        "ranking.ranking_signal: partitioned",
        "ranking.composite_signal_daily: partitioned",
    ]
    assert len(seen) > 5 and len(writes) > 1
    for observation in seen:
        assert set(observation) == set(months), observation
        for month, value in observation.items():
            assert value in allowed[month], (month, value)
    with psycopg.connect(plain_database) as conn:
        kinds = conn.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname IN"
            " ('ranking_signal', 'composite_signal_daily')"
        ).fetchall()
        assert sorted(kinds) == [("composite_signal_daily", "p"), ("ranking_signal", "p")]
        leftovers = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE '%\\_\\_%' AND relnamespace ="
            " 'ranking'::regnamespace AND relkind IN ('r', 'p')"
        ).fetchall()
        assert leftovers == []
    # The racing writer left whichever version it wrote last; the latest makes every month
    # comparable as in sync (a plain check, and a deep one reading Delta again).
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    checker = Checker.for_settings(settings)
    for month in months:
        for table in ("ranking_signal", "composite_signal_daily"):
            result = checker.check(
                Month.of(settings.table(table), YearMonth.parse(month)), deep=True
            )
            assert result.status == "in_sync", (table, month, result.reason)
    # Converting again finds nothing to do.
    assert migrate(Database(Dsn(plain_database)), settings.tables, Layout.PARTITIONED) == []


@pytest.mark.parametrize("layout", ["partitioned"], indirect=True)
def test_writes_of_two_months_at_once_do_not_deadlock(
    settings: Settings, write_month: WriteMonth, pg: psycopg.Connection[Any]
) -> None:
    for month in ("2026-09", "2026-10"):
        write_month("ranking_signal", month, rows=20_000)
    spec = settings.table("ranking_signal")
    failures: list[BaseException] = []

    def write(month: str) -> None:
        try:
            for _ in range(3):
                MonthWriter(settings).write_month(spec, YearMonth.parse(month))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(m,)) for m in ("2026-09", "2026-10")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    counts = pg.execute(
        "SELECT year_month, count(*) FROM ranking.ranking_signal GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert counts == [("2026-09", 20_000), ("2026-10", 20_000)]


@pytest.mark.parametrize("layout", ["partitioned"], indirect=True)
def test_a_check_in_progress_never_sees_a_swapped_month_empty(
    settings: Settings, write_month: WriteMonth, pg_dsn: str
) -> None:
    """A swap after a check took its snapshot would show the check an empty month (the new
    partition's rows are newer than the snapshot): the check locks the table first, and the
    swap waits for it."""
    write_month("ranking_signal", "2026-10", rows=500)
    spec = settings.table("ranking_signal")
    MonthWriter(settings).write_month(spec, OCT)
    write_month("ranking_signal", "2026-10", rows=700, seed=2)
    query = "SELECT count(*) FROM ranking.ranking_signal WHERE year_month = '2026-10'"
    with Database(Dsn(pg_dsn)).session() as conn:
        open_snapshot_transaction(conn, spec)
        assert conn.fetchone(query) == (500,)
        writer = threading.Thread(target=MonthWriter(settings).write_month, args=(spec, OCT))
        writer.start()
        time.sleep(1.0)  # the writer has loaded its staging table and waits to swap
        assert conn.execute(query).fetchone() == (500,)
        conn.rollback()
        writer.join(timeout=60)
        assert conn.execute(query).fetchone() == (700,)


def test_conversion_keeps_indexes_and_refuses_what_would_not_carry_over(
    plain_database: str, delta_root: str, write_month: WriteMonth
) -> None:
    settings = load_settings(dsn=plain_database, delta_root=delta_root, environ={})
    write_month("ranking_signal", "2026-10", rows=100)
    MonthWriter(settings).write_month(settings.table("ranking_signal"), OCT)
    db = Database(Dsn(plain_database))
    spec = settings.table("ranking_signal")
    with psycopg.connect(plain_database, autocommit=True) as conn:
        conn.execute("CREATE INDEX by_entity ON ranking.ranking_signal (entity_id)")
        conn.execute(
            "CREATE FUNCTION ranking.noop() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RETURN NULL; END $$;"
            " CREATE TRIGGER noop AFTER INSERT ON ranking.ranking_signal"
            " FOR EACH STATEMENT EXECUTE FUNCTION ranking.noop()"
        )
        with pytest.raises(InputError, match="1 trigger"):
            convert_to_partitioned(db, spec)
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'ranking.ranking_signal'::regclass"
        ).fetchone() == ("r",)
        conn.execute("DROP TRIGGER noop ON ranking.ranking_signal")
        assert convert_to_partitioned(db, spec)
        indexed = conn.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'ranking.ranking_signal_202610'::regclass"
        ).fetchone()
        assert indexed == (2,)  # year_month and by_entity, on the partition too
    # The next write builds both on its staging table before it is swapped in.
    write_month("ranking_signal", "2026-10", rows=120, seed=3)
    MonthWriter(settings).write_month(spec, OCT)
    with psycopg.connect(plain_database) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_index"
            " WHERE indrelid = 'ranking.ranking_signal_202610'::regclass"
        ).fetchone() == (2,)
