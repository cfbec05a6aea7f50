"""Delta tables on Azure storage, for real: Azurite (npm `azurite`) on loopback, delta-rs over
`az://` and `abfss://`, and the whole replicate / check / diff / repair path against them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.check import Checker
from reconciler.diff import diff_month
from reconciler.repair import Repairer
from reconciler.sample import ranking_signal, write_delta_month
from replicator.config import with_overrides
from replicator.month import Month
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth

ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
OCT = YearMonth.parse("2026-10")


def azurite_binary() -> str:
    local = Path(__file__).resolve().parent.parent / ".ci" / "node" / "node_modules" / ".bin"
    found = shutil.which("azurite-blob") or shutil.which("azurite-blob", path=str(local))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("azurite is not installed (.ci/run installs it with npm)")
        pytest.skip("azurite is not installed (npm install --prefix .ci/node azurite)")
    return found


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = azurite_binary()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--silent",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(tmp_path_factory.mktemp("azurite")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "azurite did not start"
            time.sleep(0.2)
    previous = os.environ.get("AZURITE_BLOB_STORAGE_URL")
    os.environ["AZURITE_BLOB_STORAGE_URL"] = url  # where delta-rs finds the emulator
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={url}/{ACCOUNT};"
    ).create_container("signals")
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("AZURITE_BLOB_STORAGE_URL", None)
        else:
            os.environ["AZURITE_BLOB_STORAGE_URL"] = previous
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    "root", ["az://signals/ranking", f"abfss://signals@{ACCOUNT}.dfs.core.windows.net/ranking2"]
)
def test_replicate_check_diff_repair_on_azure(
    azurite: str, settings: Any, pg: psycopg.Connection[Any], root: str
) -> None:
    options = {"account_name": ACCOUNT, "account_key": KEY, "use_emulator": "true"}
    configured = with_overrides(settings, delta={"root": root, "storage_options": options})
    spec = configured.table("ranking_signal")
    write_delta_month(
        configured.table_uri(spec), OCT, ranking_signal(OCT, 2_000, seed=5), storage_options=options
    )
    assert MonthWriter(configured).write_month(spec, OCT).rows == 2_000
    checker = Checker.for_settings(configured)
    assert checker.check(Month.of(spec, OCT)).status == "in_sync"
    assert checker.check(Month.of(spec, OCT), deep=True).status == "in_sync"
    pg.execute("UPDATE ranking.ranking_signal SET value = 0.5 WHERE rank = 17")
    assert checker.check(Month.of(spec, OCT)).status == "drift"
    diff = diff_month("ranking_signal", "2026-10", settings=configured).as_dict()
    assert diff["changed"] and all(c["columns"] == ["value"] for c in diff["changed"])
    assert (
        Repairer.for_settings(configured, actor="test").repair(Month.of(spec, OCT)).outcome
        == "repaired"
    )
    assert checker.check(Month.of(spec, OCT), deep=True).status == "in_sync"
