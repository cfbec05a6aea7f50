"""Alerts, dashboard and exporter agree: promtool rule tests, every metric name used is
exported, every dashboard expression is valid PromQL, and a real Prometheus sees a drift alert
go pending, fire, and resolve after a repair."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from exporter.metrics import EXPORTED_NAMES
from reconciler.daemon import Daemon
from reconciler.repair import Repairer
from replicator.yearmonth import YearMonth
from tests.waiting import free_port, until

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "reconciler.rules.yml"
DASHBOARD = ROOT / "grafana" / "reconciler.json"
METRIC = re.compile(r"\breconciler_[a-z_]+\b")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (.ci/run installs Debian's prometheus package)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return found


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_promtool_checks_and_unit_tests_pass() -> None:
    promtool = tool("promtool")
    subprocess.run([promtool, "check", "rules", str(RULES)], check=True)
    subprocess.run(
        [promtool, "test", "rules", *map(str, (ROOT / "alerts" / "tests").glob("*.test.yml"))],
        check=True,
        cwd=ROOT / "alerts" / "tests",
    )


def test_every_alert_has_the_mixin_shape() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    tested = (ROOT / "alerts" / "tests" / "reconciler.test.yml").read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert name.startswith("Reconciler")
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
        assert name.lower() in anchors, f"no runbook section for {name}"
        assert tested.count(f"alertname: {name}") >= 3, f"{name} needs 3 promtool cases"


def test_dashboard_shape() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["id"] is None and board["uid"] == "signal-reconciler"
    variables = board["templating"]["list"]
    assert [v["name"] for v in variables if v["type"] == "datasource"] == ["datasource"]
    for panel in board["panels"]:
        assert panel["type"] in ("stat", "timeseries", "table", "state-timeline")
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            if "rate(" in target["expr"] or "increase(" in target["expr"]:
                assert "[$__rate_interval]" in target["expr"], panel["title"]


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    promtool = tool("promtool")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:expr_{i}",
                        "expr": expr.replace("$__rate_interval", "5m"),
                    }
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    subprocess.run([promtool, "check", "rules", str(path)], check=True)


def used_metric_names() -> set[str]:
    names = set()
    for rule in alert_rules():
        names |= set(METRIC.findall(rule["expr"]))
    for expr in dashboard_exprs():
        names |= set(METRIC.findall(expr))
    return names


def test_declared_names_cover_what_alerts_and_dashboard_use() -> None:
    assert used_metric_names() <= EXPORTED_NAMES


@pytest.mark.integration
def test_every_name_used_is_exported_by_a_real_daemon(running_daemon: tuple[Daemon, str]) -> None:
    daemon, url = running_daemon
    until(lambda: daemon.reconciler.last_cycle_timestamp is not None, 30, "a cycle")
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    missing = used_metric_names() - exported
    assert not missing, f"used in alerts or the dashboard but not exported: {missing}"


@pytest.mark.integration
@pytest.mark.slow
def test_real_prometheus_sees_drift_pending_firing_and_resolved(
    running_daemon: tuple[Daemon, str], tmp_path: Path, pg: psycopg.Connection[Any]
) -> None:
    prometheus = tool("prometheus")
    daemon, url = running_daemon
    target = url.removeprefix("http://").removesuffix("/metrics")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if rule["alert"] == "ReconcilerMonthDrift":
                rule["for"] = "4s"  # the real rule, with a `for:` short enough for a test
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(tmp_path / "rules.yml")],
                "scrape_configs": [
                    {"job_name": "reconciler", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1/alerts"

    def drift_state() -> str | None:
        try:
            with urllib.request.urlopen(api, timeout=5) as response:
                alerts = json.load(response)["data"]["alerts"]
        except OSError:
            return None
        states = [a["state"] for a in alerts if a["labels"]["alertname"] == "ReconcilerMonthDrift"]
        return states[0] if states else "inactive"

    seen: list[str | None] = []
    try:
        until(lambda: drift_state() == "inactive", 60, "Prometheus to start")
        pg.execute("DELETE FROM ranking.ranking_signal WHERE rank = 1")

        def observe(state: str) -> Callable[[], bool]:
            def check() -> bool:
                seen.append(drift_state())
                return seen[-1] == state

            return check

        until(observe("pending"), 60, "the drift alert to go pending")
        until(observe("firing"), 30, "the drift alert to fire")
        result = Repairer.for_settings(daemon.settings, actor="test").repair(
            daemon.settings.table("ranking_signal"), YearMonth.parse("2026-10")
        )
        assert result.outcome == "repaired"
        until(observe("inactive"), 60, "the drift alert to resolve")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "pending" in seen and "firing" in seen
