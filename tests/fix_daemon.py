"""Daemon fixtures: in-process daemons with short intervals, daemon processes (`reconciler run`),
a daemon running in a thread with its /metrics served, and scraping /metrics into samples."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.daemon import Daemon
from replicator.config import AutoRepairSettings, DaemonSettings, Settings, with_overrides
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_delta import WriteMonth
from tests.waiting import free_port

Samples = dict[tuple[str, tuple[Any, ...]], float]


def scrape(url: str, auth: tuple[str, str] | None = None) -> Samples:
    """Every sample of a /metrics page, by (name, sorted labels)."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def make_daemon(settings: Settings) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(auto_repair: AutoRepairSettings | None = None, **daemon: Any) -> Daemon:
        configured = with_overrides(
            settings,
            daemon=DaemonSettings(
                **{
                    "interval_seconds": 0.2,
                    "metrics_addr": "127.0.0.1:0",
                    "leader_lease_seconds": 5.0,
                    **daemon,
                }
            ),
            auto_repair=auto_repair or AutoRepairSettings(),
        )
        made.append(Daemon(lambda: configured))
        return made[-1]

    yield make
    for daemon in made:
        daemon.stop()
        daemon.leader.release()


class DaemonProcess:
    def __init__(self, env: dict[str, str], config: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from reconciler.cli import main; main()",
                "run",
                "--config",
                str(config),
                "--metrics-addr",
                f"127.0.0.1:{self.port}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        return None

    def leader(self) -> bool:
        return self.metric("reconciler_leader") == 1.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def daemons(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], DaemonProcess]]:
    config = tmp_path / "ha.toml"
    config.write_text(
        "[daemon]\ninterval_seconds = 0.5\nleader_lease_seconds = 2\n"
        "[auto_repair]\nenabled = true\ngrace_period_seconds = 0\n"
    )
    env = {**os.environ, **cli_env, "PYTHONPATH": os.getcwd()}
    started: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        started.append(DaemonProcess(env, config))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def running_daemon(settings: Settings, write_month: WriteMonth) -> Iterator[tuple[Daemon, str]]:
    write_month("ranking_signal", "2026-10", rows=30)
    write_month("composite_signal_daily", "2026-10", rows=30)
    for table in ("ranking_signal", "composite_signal_daily"):
        MonthWriter(settings).write_month(settings.table(table), YearMonth.parse("2026-10"))
    configured = with_overrides(
        settings,
        daemon=DaemonSettings(
            interval_seconds=0.5, metrics_addr="127.0.0.1:0", leader_lease_seconds=10.0
        ),
    )
    daemon = Daemon(lambda: configured)
    server = daemon.serve_metrics()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        yield daemon, server.url
    finally:
        daemon.stop()
        thread.join(timeout=10)
        server.stop()
