"""Alerts, dashboard and exporter agree: the generated files are up to date (the rule file and
the PrometheusRule never differ), promtool rule tests pass, alerts have the mixin shape, the
inhibitions load in Alertmanager, every metric name used is exported, and every dashboard
expression is valid PromQL. tests/test_deployment_proof.py runs them all against a real
Prometheus and Alertmanager."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.metrics import EXPORTED_NAMES
from reconciler.daemon import Daemon
from tests.waiting import tool, until

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "reconciler.rules.yml"
DASHBOARD = ROOT / "grafana" / "reconciler.json"
METRIC = re.compile(r"\breconciler_[a-z_]+\b")


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_generated_files_are_up_to_date() -> None:
    for script in ("alerts/generate_rules.py", "grafana/generate_dashboard.py"):
        done = subprocess.run(
            [sys.executable, str(ROOT / script), "--check"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr


def test_the_prometheus_rule_resource_carries_the_rule_file() -> None:
    resource = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


def test_inhibitions_load_in_alertmanager(tmp_path: Path) -> None:
    amtool = tool("amtool")
    inhibit = yaml.safe_load((ROOT / "alerts" / "alertmanager-inhibit.yml").read_text())
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}], **inhibit})
    )
    done = subprocess.run(
        [amtool, "check-config", str(config)], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 inhibit rules" in done.stdout
    (rule,) = inhibit["inhibit_rules"]
    names = {r["alert"] for r in alert_rules()}
    targets = rule["target_matchers"][0].split('"')[1].split("|")
    assert set(targets) <= names and "ReconcilerSourceDown" not in targets


def test_promtool_checks_and_unit_tests_pass() -> None:
    promtool = tool("promtool")
    subprocess.run([promtool, "check", "rules", str(RULES)], check=True)
    subprocess.run(
        [promtool, "test", "rules", *map(str, (ROOT / "alerts" / "tests").glob("*.test.yml"))],
        check=True,
        cwd=ROOT / "alerts" / "tests",
    )


def test_every_alert_has_the_mixin_shape() -> None:
    config = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text())
    base = config["runbook_base_url"]
    assert base.startswith("https://")
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    tested = (ROOT / "alerts" / "tests" / "reconciler.test.yml").read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert name.startswith("Reconciler")
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        assert rule["annotations"]["runbook_url"] == f"{base}#{name.lower()}"
        assert rule["for"] == config["for"][name]
        # This deployment's series only; one alert per deployment, whatever the replicas.
        assert rule["expr"].count(config["selector"]) >= 1, name
        assert " by (" not in rule["expr"], f"{name} would drop the deployment's labels"
        assert name.lower() in anchors, f"no runbook section for {name}"
        assert tested.count(f"alertname: {name}") >= 3, f"{name} needs 3 promtool cases"


def test_dashboard_shape() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["id"] is None and board["uid"] == "signal-reconciler"
    assert board["schemaVersion"] == 42  # what current Grafana (12.x) writes
    variables = board["templating"]["list"]
    assert [v["name"] for v in variables] == ["datasource", "namespace", "job", "instance", "table"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in board["panels"]:
        assert panel["type"] in ("stat", "timeseries", "table", "state-timeline")
        assert panel["datasource"]["uid"] == "${datasource}"
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), panel["title"]
        if panel["type"] in ("stat", "state-timeline"):  # every value gets a colour
            assert defaults.get("mappings") or defaults.get("thresholds"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'job=~"$job"' in target["expr"], panel["title"]
            assert "sum by (table, year_month)" not in target["expr"], "replicas would add up"
            if "rate(" in target["expr"] or "increase(" in target["expr"]:
                window = "[$__range]" if target.get("instant") else "[$__rate_interval]"
                assert window in target["expr"], panel["title"]


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    promtool = tool("promtool")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:expr_{i}",
                        "expr": expr.replace("$__rate_interval", "5m")
                        .replace("$__range", "1h")
                        .replace("$namespace", ".*")
                        .replace("$job", "signal-reconciler")
                        .replace("$instance", ".*")
                        .replace("$table", ".*"),
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


def test_every_name_used_is_exported_by_a_real_daemon(running_daemon: tuple[Daemon, str]) -> None:
    daemon, url = running_daemon
    until(lambda: daemon.reconciler.last_cycle is not None, 30, "a cycle")
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    missing = used_metric_names() - exported
    assert not missing, f"used in alerts or the dashboard but not exported: {missing}"
