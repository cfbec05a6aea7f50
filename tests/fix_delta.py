"""Delta fixtures: real Delta tables written with deltalake under a temporary root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from reconciler.sample import GENERATORS, write_delta_month
from replicator.config import Settings, load_settings
from replicator.yearmonth import YearMonth

WriteMonth = Callable[..., pa.Table]


@pytest.fixture
def delta_root(tmp_path: Path) -> str:
    root = tmp_path / "delta"
    root.mkdir()
    return str(root)


@pytest.fixture
def write_month(delta_root: str) -> WriteMonth:
    """write_month(table, "YYYY-MM", rows=100, seed=0, data=None) -> the Arrow data written."""

    def write(
        table: str,
        year_month: str,
        rows: int = 100,
        seed: int = 0,
        data: pa.Table | None = None,
        root: str | None = None,
    ) -> pa.Table:
        month = YearMonth.parse(year_month)
        if data is None:
            data = GENERATORS[table](month, rows, seed)
        write_delta_month(f"{root or delta_root}/{table}", month, data)
        return data

    return write


@pytest.fixture
def settings(pg_dsn: str, delta_root: str) -> Settings:
    return load_settings(dsn=pg_dsn, delta_root=delta_root, environ={})


@pytest.fixture
def cli_env(pg_dsn: str, delta_root: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for the command lines, pointing at the test database and Delta root."""
    env = {"POSTGRES_DSN": pg_dsn, "SIGNALS_DELTA_ROOT": delta_root}
    import os

    for name in (
        "POSTGRES_DSN_FILE",
        "POSTGRES_SIGNALS_WRITE_REQUIRED",
        "POSTGRES_SIGNALS_VERIFY_COUNTS",
        *(n for n in os.environ if n.startswith("RECONCILER_") and n != "RECONCILER_TEST_DSN"),
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
