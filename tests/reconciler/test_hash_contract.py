"""The row hash agrees between Delta (DataFusion + numpy) and Postgres for every value the
supported types allow, under any session settings; and every kind of drift is caught."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from reconciler.check import Checker
from reconciler.diff import Differ
from reconciler.sample import write_delta_month
from replicator.config import Settings, load_settings, with_overrides
from replicator.month import Month
from replicator.postgres import Database
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.reconciler import alltypes

OCT = YearMonth.parse("2026-10")
AWKWARD_TEXT = [
    "",
    "N",
    "0:",
    "1:a",
    ":",
    "a\tb",
    "line\nbreak",
    "back\\slash",
    "quo'te",
    'dou"ble',
    "é中🙂",
    "x" * 300,
    "\r\n",
    " ",
    "rh1",
]

texts = st.one_of(
    st.sampled_from(AWKWARD_TEXT),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
)
doubles = st.one_of(
    st.sampled_from(
        [
            0.0,
            -0.0,
            math.inf,
            -math.inf,
            math.nan,
            5e-324,
            -5e-324,
            2.2250738585072014e-308,
            1.7976931348623157e308,
            1.0000000000000002,
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
)
singles = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
timestamps = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30))
decimals = st.decimals(
    min_value=decimal.Decimal("-999999999999.999999"),
    max_value=decimal.Decimal("999999999999.999999"),
    places=6,
    allow_nan=False,
    allow_infinity=False,
)


def row_strategy(index: int) -> st.SearchStrategy[dict[str, Any]]:
    def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(st.none(), strategy)

    return st.fixed_dictionaries(
        {
            "year_month": st.just("2026-10"),
            "k_text": texts,
            "k_int": st.just(index),
            "s": maybe(texts),
            "l": maybe(
                st.sampled_from([-(2**63), 2**63 - 1, 0, -1]) | st.integers(-(2**63), 2**63 - 1)
            ),
            "i": maybe(st.integers(-(2**31), 2**31 - 1)),
            "sh": maybe(st.integers(-(2**15), 2**15 - 1)),
            "by": maybe(st.integers(-128, 127)),
            "d": maybe(doubles),
            "f": maybe(singles),
            "b": maybe(st.booleans()),
            "dt": maybe(st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31))),
            "ts": maybe(timestamps.map(lambda t: t.replace(tzinfo=dt.UTC))),
            "tsn": maybe(timestamps),
            "dec": maybe(decimals),
            "bin": maybe(st.binary(max_size=20)),
        }
    )


rows_strategy = st.integers(0, 12).flatmap(
    lambda n: st.tuples(*(row_strategy(i) for i in range(n))).map(list)
)
session_settings = st.fixed_dictionaries(
    {
        "TimeZone": st.sampled_from(
            ["UTC", "Pacific/Chatham", "America/St_Johns", "Asia/Kathmandu"]
        ),
        "DateStyle": st.sampled_from(["ISO, MDY", "SQL, DMY", "German", "Postgres, YMD"]),
        "IntervalStyle": st.sampled_from(["postgres", "sql_standard", "iso_8601"]),
        "extra_float_digits": st.sampled_from(["-15", "0", "1", "3"]),
        "bytea_output": st.sampled_from(["hex", "escape"]),
    }
)


@pytest.fixture
def contract(pg: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path) -> Iterator[Any]:
    alltypes.create(pg)
    root = str(tmp_path / "delta")
    base = load_settings(dsn=pg_dsn, delta_root=root, environ={})
    settings_ = with_overrides(base, tables=(alltypes.SPEC,), digest={"buckets": 16})
    database = pg.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]

    class Contract:
        settings: Settings = settings_

        def write(self, rows: list[dict[str, Any]], month: YearMonth = OCT) -> None:
            data = pa.Table.from_pylist(rows, schema=alltypes.ARROW)
            write_delta_month(f"{root}/all_types", month, data)

        def replicate(self, month: YearMonth = OCT) -> None:
            MonthWriter(self.settings).write_month(alltypes.SPEC, month, allow_empty=True)

        def check(self, month: YearMonth = OCT, deep: bool = True) -> Any:
            return Checker.for_settings(self.settings).check(
                Month.of(alltypes.SPEC, month), deep=deep
            )

        def diff(self, month: YearMonth = OCT) -> Any:
            db = Database.for_settings(self.settings)
            return (
                Differ(db, self.settings).diff(Month.of(alltypes.SPEC, month), limit=50).as_dict()
            )

        def session(self, values: dict[str, str]) -> None:
            for name, value in values.items():
                pg.execute(
                    sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                        sql.Identifier(database), sql.Identifier(name), sql.Literal(value)
                    )
                )

    yield Contract()
    pg.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(sql.Identifier(database)))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=rows_strategy, session=session_settings)
def test_replicated_rows_are_in_sync_under_any_session_settings(
    contract: Any, rows: list[dict[str, Any]], session: dict[str, str]
) -> None:
    contract.write(rows)
    contract.replicate()
    contract.session(session)
    result = contract.check()
    assert result.status == "in_sync", (result.reason, rows)
    assert result.postgres_rows == len(rows)
    assert result.delta_digest == result.postgres_digest
    # The digest the writer recorded from the same snapshot is the same digest.
    recorded = contract.check(deep=False)
    assert (recorded.status, recorded.delta_digest) == ("in_sync", result.delta_digest)


def base_rows(count: int = 40) -> list[dict[str, Any]]:
    return [
        {
            "year_month": "2026-10",
            "k_text": f"key-{n}",
            "k_int": n,
            "s": f"text {n}",
            "l": n * 1_000_003,
            "i": n,
            "sh": n,
            "by": n % 100,
            "d": n / 7,
            "f": n / 3,
            "b": n % 2 == 0,
            "dt": dt.date(2026, 10, 1 + n % 31),
            "ts": dt.datetime(2026, 10, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=n),
            "tsn": dt.datetime(2026, 10, 1) + dt.timedelta(minutes=n),
            "dec": decimal.Decimal(n) / 8,
            "bin": bytes([n, 255 - n]),
        }
        for n in range(count)
    ]


@pytest.fixture
def synced(contract: Any, pg: psycopg.Connection[Any]) -> Any:
    contract.write(base_rows())
    contract.replicate()
    assert contract.check().status == "in_sync"
    return contract


def key(n: int) -> dict[str, Any]:
    return {"k_text": f"key-{n}", "k_int": n}


SMALLEST_CHANGES = [
    ("d", "UPDATE ranking.all_types SET d = 'NaN' WHERE k_int = 3"),
    ("d", "UPDATE ranking.all_types SET d = d + 1e-16 * d WHERE k_int = 5"),
    ("d", "UPDATE ranking.all_types SET d = '-0'::float8 WHERE k_int = 0"),
    ("f", "UPDATE ranking.all_types SET f = f::float8 + 1e-7 WHERE k_int = 4"),
    ("ts", "UPDATE ranking.all_types SET ts = ts + interval '1 microsecond' WHERE k_int = 6"),
    ("tsn", "UPDATE ranking.all_types SET tsn = tsn - interval '1 microsecond' WHERE k_int = 6"),
    ("dec", "UPDATE ranking.all_types SET dec = dec + 0.000001 WHERE k_int = 7"),
    ("s", "UPDATE ranking.all_types SET s = s || ' ' WHERE k_int = 8"),
    ("s", "UPDATE ranking.all_types SET s = '' WHERE k_int = 9"),
    ("s", "UPDATE ranking.all_types SET s = NULL WHERE k_int = 9"),
    ("l", "UPDATE ranking.all_types SET l = l + 1 WHERE k_int = 10"),
    ("by", 'UPDATE ranking.all_types SET "by" = "by" + 1 WHERE k_int = 11'),
    ("b", "UPDATE ranking.all_types SET b = NOT b WHERE k_int = 12"),
    ("dt", "UPDATE ranking.all_types SET dt = dt + 1 WHERE k_int = 13"),
    ("bin", "UPDATE ranking.all_types SET bin = bin || '\\x00'::bytea WHERE k_int = 14"),
]


@pytest.mark.parametrize(
    ("column", "statement"),
    SMALLEST_CHANGES,
    ids=[f"{c}-{i}" for i, (c, _) in enumerate(SMALLEST_CHANGES)],
)
def test_smallest_change_is_drift_and_diff_names_the_column(
    synced: Any, pg: psycopg.Connection[Any], column: str, statement: str
) -> None:
    pg.execute(statement)
    result = synced.check()
    assert result.status == "drift"
    assert result.delta_rows == result.postgres_rows
    diff = synced.diff()
    assert diff["only_in_delta"] == [] and diff["only_in_postgres"] == []
    assert len(diff["changed"]) == 1
    assert diff["changed"][0]["columns"] == [column]


def test_deleted_row(synced: Any, pg: psycopg.Connection[Any]) -> None:
    pg.execute("DELETE FROM ranking.all_types WHERE k_int = 17")
    assert synced.check().status == "drift"
    diff = synced.diff()
    assert (diff["only_in_delta"], diff["only_in_postgres"], diff["changed"]) == ([key(17)], [], [])


def test_duplicated_row(synced: Any, pg: psycopg.Connection[Any]) -> None:
    pg.execute("INSERT INTO ranking.all_types SELECT * FROM ranking.all_types WHERE k_int = 2")
    result = synced.check()
    assert result.status == "drift" and "row counts differ" in result.reason
    diff = synced.diff()
    assert (diff["only_in_delta"], diff["only_in_postgres"], diff["changed"]) == ([], [], [])
    assert diff["duplicated"] == [{"key": key(2), "delta_copies": 1, "postgres_copies": 2}]


def test_row_moved_to_the_neighbouring_month(synced: Any, pg: psycopg.Connection[Any]) -> None:
    november = YearMonth.parse("2026-11")
    synced.write(
        [dict(r, year_month="2026-11", k_int=100 + r["k_int"]) for r in base_rows(3)], november
    )
    synced.replicate(november)
    pg.execute("UPDATE ranking.all_types SET year_month = '2026-11' WHERE k_int = 21")
    assert synced.check().status == "drift"
    assert synced.diff()["only_in_delta"] == [key(21)]
    assert synced.check(november).status == "drift"
    assert synced.diff(november)["only_in_postgres"] == [key(21)]


def test_values_swapped_between_two_rows(synced: Any, pg: psycopg.Connection[Any]) -> None:
    pg.execute("""
        UPDATE ranking.all_types t SET s = o.s FROM ranking.all_types o
        WHERE (t.k_int, o.k_int) IN ((30, 31), (31, 30))
    """)
    result = synced.check()
    assert result.status == "drift"
    assert result.delta_rows == result.postgres_rows
    diff = synced.diff()
    assert sorted(c["key"]["k_int"] for c in diff["changed"]) == [30, 31]
    assert all(c["columns"] == ["s"] for c in diff["changed"])


def test_deleted_plus_inserted_row_with_equal_counts(
    synced: Any, pg: psycopg.Connection[Any]
) -> None:
    pg.execute("DELETE FROM ranking.all_types WHERE k_int = 33")
    pg.execute(
        "INSERT INTO ranking.all_types (year_month, k_text, k_int)"
        " VALUES ('2026-10', 'intruder', 99)"
    )
    result = synced.check()
    assert result.status == "drift" and result.delta_rows == result.postgres_rows
    diff = synced.diff()
    assert diff["only_in_delta"] == [key(33)]
    assert diff["only_in_postgres"] == [{"k_text": "intruder", "k_int": 99}]
    assert diff["changed"] == []
