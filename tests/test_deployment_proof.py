"""The deployment, proven with real parts: two real daemon processes against one database, a
real Prometheus (Debian's package) scraping both with the shipped rules (generated with short
`for:` durations by the same generator), and a real Alertmanager with the shipped inhibition
rules. Every dashboard query is evaluated through Prometheus's HTTP API and must return what
its panel expects: one row per month, every status mapped to a colour, and the dead-man,
source and leader panels red, not blank, once the daemons are gone."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main as reconciler_main
from replicator.config import Settings
from replicator.writer import MonthWriter
from replicator.yearmonth import YearMonth
from tests.fix_daemon import DaemonProcess
from tests.fix_delta import WriteMonth
from tests.waiting import free_port, tool, until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
JOB = "signal-reconciler"
MONTHS = {
    ("ranking_signal", "2026-10"): 0,  # in sync
    ("ranking_signal", "2026-09"): 5,  # drift
    ("composite_signal_daily", "2026-10"): 0,
}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = get_json(f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}")
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        query = urllib.parse.urlencode({"match[]": match})
        return list(get_json(f"{self.base}/api/v1/label/{label}/values?{query}")["data"])

    def alerts(self) -> list[dict[str, Any]]:
        try:
            return list(get_json(f"{self.base}/api/v1/alerts")["data"]["alerts"])
        except OSError:
            return []

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [
            a for a in self.alerts() if a["labels"]["alertname"] == name and a["state"] == "firing"
        ]


def panel_queries(variables: dict[str, str]) -> dict[str, list[str]]:
    """Panel title -> its queries with the dashboard's variables filled in as Grafana would."""
    board = json.loads((ROOT / "grafana" / "reconciler.json").read_text())
    found: dict[str, list[str]] = {}
    for panel in board["panels"]:
        exprs = []
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(f"${name}", value)
            exprs.append(expr)
        key = panel["title"] + (" (table)" if panel["type"] == "table" else "")
        found[key] = exprs
    return found


def mapped_codes() -> set[str]:
    board = json.loads((ROOT / "grafana" / "reconciler.json").read_text())
    (status,) = [p for p in board["panels"] if p["title"] == "Month status"]
    return set(status["fieldConfig"]["defaults"]["mappings"][0]["options"])


@pytest.fixture
def stack(
    cli_env: dict[str, str],
    settings: Settings,
    write_month: WriteMonth,
    pg: psycopg.Connection[Any],
    tmp_path: Path,
) -> Iterator[tuple[Prometheus, str, list[DaemonProcess]]]:
    prometheus_bin = tool("prometheus")
    alertmanager_bin = tool("alertmanager", "prometheus-alertmanager")
    for (table, month), _ in MONTHS.items():
        write_month(table, month, rows=40)
        MonthWriter(settings).write_month(settings.table(table), YearMonth.parse(month))
    pg.execute("DELETE FROM ranking.ranking_signal WHERE year_month = '2026-09' AND rank = 1")

    # The shipped rules and inhibitions, generated with durations a test can wait for.
    config = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text())
    config["for"] = dict.fromkeys(config["for"], "2s")
    config["down_after_seconds"] = 5
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / "config.yml").write_text(yaml.safe_dump(config))
    subprocess.run(
        [
            "python",
            str(ROOT / "alerts" / "generate_rules.py"),
            "--config",
            str(tmp_path / "alerts" / "config.yml"),
            "--out",
            str(tmp_path),
        ],
        check=True,
    )

    daemon_config = tmp_path / "daemon.toml"
    daemon_config.write_text("[daemon]\ninterval_seconds = 0.5\nleader_lease_seconds = 2\n")
    env = {**os.environ, **cli_env, "PYTHONPATH": os.getcwd()}
    daemons = [DaemonProcess(env, daemon_config), DaemonProcess(env, daemon_config)]

    am_port, prom_port = free_port(), free_port()
    inhibit = yaml.safe_load((tmp_path / "alerts" / "alertmanager-inhibit.yml").read_text())
    (tmp_path / "alertmanager.yml").write_text(
        yaml.safe_dump(
            {
                "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
                "receivers": [{"name": "null"}],
                **inhibit,
            }
        )
    )
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(tmp_path / "alerts" / "reconciler.rules.yml")],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "static_configs": [
                            {
                                "targets": [f"127.0.0.1:{d.port}" for d in daemons],
                                "labels": {"namespace": "ranking"},
                            }
                        ],
                    }
                ],
            }
        )
    )
    processes = [
        subprocess.Popen(
            [
                alertmanager_bin,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--rules.alert.resend-delay=1s",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        yield Prometheus(prom_port), f"http://127.0.0.1:{am_port}", daemons
    finally:
        for daemon in daemons:
            daemon.stop()
        for proc in processes:
            proc.terminate()
            proc.wait(timeout=20)


def test_dashboard_and_alerts_with_two_replicas_a_real_prometheus_and_alertmanager(
    stack: tuple[Prometheus, str, list[DaemonProcess]],
    delta_root: str,
    cli_env: dict[str, str],
) -> None:
    prometheus, alertmanager, daemons = stack
    variables = {
        "namespace": ".*",
        "job": JOB,
        "instance": ".*",
        "table": ".*",
        "__rate_interval": "15s",
        "__range": "10m",
    }
    queries = panel_queries(variables)
    status_query = queries["Month status"][0]

    def every_month_reported() -> bool:
        try:
            series = prometheus.query(status_query)
            both = prometheus.query(f'count(reconciler_month_status_code{{job="{JOB}"}})')
        except OSError:
            return False
        return len(series) == len(MONTHS) and bool(both) and both[0]["value"][1] == "6"

    until(every_month_reported, 90, "both replicas to report every month to Prometheus")

    # The template variables resolve from the exported labels.
    assert prometheus.label_values("job", "reconciler_build_info") == [JOB]
    assert len(prometheus.label_values("instance", f'reconciler_build_info{{job="{JOB}"}}')) == 2
    assert sorted(
        prometheus.label_values("table", f'reconciler_month_status_code{{job="{JOB}"}}')
    ) == ["composite_signal_daily", "ranking_signal"]

    # One row per month, each status a mapped code; the worst month is the drifting one.
    series = prometheus.query(status_query)
    got = {(s["metric"]["table"], s["metric"]["year_month"]): int(s["value"][1]) for s in series}
    assert got == MONTHS
    assert {str(code) for code in got.values()} <= mapped_codes()
    (row,) = prometheus.query(queries["Which months are not in sync (table)"][0])
    assert (row["metric"]["table"], row["metric"]["year_month"], row["value"][1]) == (
        "ranking_signal",
        "2026-09",
        "5",
    )
    assert prometheus.query(queries["Months not in sync"][0])[0]["value"][1] == "1"
    assert float(prometheus.query(queries["Last complete cycle"][0])[0]["value"][1]) < 900
    sources = prometheus.query(queries["Sources"][0])
    assert {s["metric"]["source"]: s["value"][1] for s in sources} == {
        "delta": "1",
        "postgres": "1",
    }
    assert prometheus.query(queries["Leaders"][0])[0]["value"][1] == "1"
    assert len(prometheus.query(queries["Last check duration per month"][0])) == len(MONTHS)
    assert len(prometheus.query(queries["Rows per month and side"][0])) == 2 * len(MONTHS)
    assert len(prometheus.query(queries["Sync lag per month"][0])) == len(MONTHS)
    for exprs in queries.values():
        for expr in exprs:
            prometheus.query(expr)  # every query is valid against the real server

    # The drift pages once for the deployment, not once per replica, with its labels.
    until(lambda: prometheus.firing("ReconcilerMonthDrift"), 60, "the drift alert to fire")
    (drift,) = prometheus.firing("ReconcilerMonthDrift")
    assert drift["labels"]["job"] == JOB and drift["labels"]["namespace"] == "ranking"
    assert "instance" not in drift["labels"] and "pod" not in drift["labels"]
    assert drift["annotations"]["runbook_url"].startswith("https://")

    # On-call repairs by hand: counted as manual by both replicas, once on the dashboard.
    repaired = CliRunner().invoke(
        reconciler_main, ["repair", "--year-month", "2026-09", "--table", "ranking_signal"]
    )
    assert repaired.exit_code == 0, repaired.output

    def manual_repair_shown() -> bool:
        result = prometheus.query(queries["Repairs in the time range"][0])
        values = {
            (r["metric"]["trigger"], r["metric"]["outcome"]): float(r["value"][1]) for r in result
        }
        return values.get(("manual", "repaired"), 0) >= 0.5

    until(manual_repair_shown, 60, "the manual repair on the dashboard")
    until(lambda: not prometheus.firing("ReconcilerMonthDrift"), 60, "the drift alert to resolve")

    # A Delta outage: the source-down alert pages; the dead-man alert it causes is inhibited.
    hidden = Path(delta_root).with_name("delta-away")
    Path(delta_root).rename(hidden)
    try:
        until(lambda: prometheus.firing("ReconcilerSourceDown"), 60, "source down to fire")
        until(lambda: prometheus.firing("ReconcilerDown"), 60, "the dead-man alert to fire")

        def inhibited() -> bool:
            alerts = get_json(f"{alertmanager}/api/v2/alerts")
            states = {a["labels"]["alertname"]: a["status"] for a in alerts}
            down, source = states.get("ReconcilerDown"), states.get("ReconcilerSourceDown")
            return (
                down is not None
                and source is not None
                and down["state"] == "suppressed"
                and bool(down["inhibitedBy"])
                and source["state"] == "active"
            )

        until(inhibited, 60, "Alertmanager to inhibit the dead-man alert under source down")
    finally:
        hidden.rename(delta_root)
    until(lambda: not prometheus.firing("ReconcilerSourceDown"), 60, "Delta to come back")

    # The daemons go away: the stat panels turn red instead of going blank (Prometheus marks
    # a target's series stale at its first failed scrape).
    for daemon in daemons:
        daemon.stop()

    def sources_gone() -> bool:
        result = prometheus.query(queries["Sources"][0])
        return [r["metric"].get("source") for r in result] == ["no daemon reporting"]

    until(sources_gone, 30, "the sources panel to say no daemon reports")
    assert prometheus.query(queries["Sources"][0])[0]["value"][1] == "0"  # mapped to red
    assert prometheus.query(queries["Months not in sync"][0])[0]["value"][1] == "-1"
    assert prometheus.query(queries["Leaders"][0])[0]["value"][1] == "0"
    now = time.time()
    soon, tomorrow = now + 1200, now + 25 * 3600
    assert float(prometheus.query(queries["Last complete cycle"][0], soon)[0]["value"][1]) > 900
    assert prometheus.query(queries["Last complete cycle"][0], tomorrow)[0]["value"][1] == "86400"
