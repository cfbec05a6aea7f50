"""Alerts, dashboard and exporter agree: the generated files are up to date (the rule file and
the PrometheusRule never differ), promtool rule tests pass, alerts have the mixin shape, the
inhibitions load in Alertmanager, every metric name used is exported, every dashboard
expression is valid PromQL and keeps every label of what it aggregates across replicas, the
status mappings and the exporter's help follow the reconciler's `Status`, and every panel links
the runbook of the alerts it shows. tests/test_deployment_proof.py runs them all against a real
Prometheus and Alertmanager."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.exposition import generate_latest

from exporter.metrics import EXPORTED_NAMES, MONTH_STATUS_CODE, DaemonView, Metrics
from reconciler.daemon import Daemon
from reconciler.record import MonthRecord
from reconciler.verdict import EXPORTED, Status
from replicator.config import DaemonSettings
from tests.months import month_key
from tests.waiting import tool, until

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "reconciler.rules.yml"
DASHBOARD = ROOT / "grafana" / "reconciler.json"
CONFIG = ROOT / "alerts" / "config.yml"
METRIC = re.compile(r"\breconciler_[a-z_]+\b")
# `max by (labels) (metric` or `max by (labels) (increase(metric`: one aggregation across
# replicas straight over a metric.
MAX_BY = re.compile(r"max by \(([^)]*)\) \((?:[a-z_]+\()*(reconciler_[a-z_]+)")
STATUS_PAIR = re.compile(r"(\d+) ([a-z_]+)")


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def status_codes_in_help(help_text: str) -> dict[str, int]:
    return {name: int(code) for code, name in STATUS_PAIR.findall(help_text.split(":", 1)[1])}


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
    rules = inhibit["inhibit_rules"]
    assert f"{len(rules)} inhibit rules" in done.stdout
    config = yaml.safe_load(CONFIG.read_text())
    deployment = [x for x in config["deployment_labels"] if x not in config["replica_labels"]]
    names = {r["alert"] for r in alert_rules()}
    muted: dict[str, set[str]] = {}
    for rule in rules:
        (source,) = (m.split('"')[1] for m in rule["source_matchers"])
        targets = set(rule["target_matchers"][0].split('"')[1].split("|"))
        assert source in names and targets <= names and source not in targets
        # Only the alerts of the source's own deployment are held back.
        assert rule["equal"][: len(deployment)] == deployment
        muted.setdefault(source, set()).update(targets)
    assert "ReconcilerSourceDown" not in set().union(*muted.values())  # the cause always pages
    # The alerts the daemon's absence or a source outage causes are not paged on top of them.
    assert {"ReconcilerReplicasMissing", "ReconcilerProofStale"} <= muted["ReconcilerDown"]
    assert "ReconcilerProofStale" in muted["ReconcilerSourceDown"]
    (per_month,) = (r for r in rules if "ReconcilerMonthError" in r["source_matchers"][0])
    assert {"table", "year_month"} <= set(per_month["equal"])  # that month's, not every month


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
    # The real daemon's help names every status with the code the dashboard maps.
    assert status_codes_in_help(help_of(text, MONTH_STATUS_CODE)) == {
        str(s): s.code for s in Status
    }


def test_the_alerts_parameters_match_the_daemon_and_the_deployment() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    assert config["replicas"] == deployment["spec"]["replicas"]
    assert config["proof_margin_seconds"] > 0


def test_the_proof_max_age_is_the_daemons_deep_check_period() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert DaemonSettings().deep_check_period_seconds == config["proof_max_age_seconds"]


def status_panels() -> list[dict[str, Any]]:
    """The panels that show each month's status code as a status."""
    return [
        p
        for p in dashboard_panels()
        if all(
            t["expr"].startswith("max by (table, year_month) (reconciler_month_status_code")
            for t in p["targets"]
        )
    ]


def test_dashboard_status_mappings_are_the_reconcilers_statuses() -> None:
    expected = {s.code: s.value for s in Status.by_severity()}
    assert len(expected) == len(Status)
    panels = status_panels()
    assert {p["title"] for p in panels} >= {"Month status", "Which months are not in sync"}
    for panel in panels:
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        options = mapping["options"]
        assert {int(code): o["text"] for code, o in options.items()} == expected, panel["title"]
        assert all(o.get("color") for o in options.values()), panel["title"]
        # Every colour is a different one: two statuses never look alike.
        assert len({o["color"] for o in options.values()}) == len(Status), panel["title"]


def a_view() -> DaemonView:
    """What a daemon hands its collector, with one month of every kind of value."""
    now = dt.datetime(2026, 11, 5, 12, tzinfo=dt.UTC)
    month = MonthRecord(
        month_key("ranking_signal", "2026-10"),
        Status.DRIFT,
        delta_rows=10,
        postgres_rows=11,
        last_sync_at=now,
        checked_at=now,
        proven_at=now,
        duration_seconds=0.5,
        consecutive_failures=1,
        repair_failures=1,
    )
    return DaemonView(
        months=(month,),
        sources_up={"delta": True, "postgres": True},
        last_cycle=now,
        leader=True,
        circuit_open=False,
        statuses=tuple(str(s) for s in EXPORTED),
        # As reconciler/cycle.py builds it (the real daemon's help is checked below).
        status_codes={str(s): s.code for s in Status.by_severity()},
        repairs={("ranking_signal", "auto", "repaired", "narrow"): 1},
    )


def exposition() -> str:
    metrics = Metrics(a_view, "0.0.0")  # a fresh registry of its own
    metrics.declare_tables(["ranking_signal"])
    metrics.checks.labels(table="ranking_signal").inc()
    metrics.check_duration.labels(table="ranking_signal").observe(1)
    return generate_latest(metrics.registry).decode()


def help_of(text: str, name: str) -> str:
    (line,) = (line for line in text.splitlines() if line.startswith(f"# HELP {name} "))
    return line.removeprefix(f"# HELP {name} ")


def test_status_code_help_names_every_status_with_its_code() -> None:
    assert status_codes_in_help(help_of(exposition(), MONTH_STATUS_CODE)) == {
        str(s): s.code for s in Status
    }


def exported_labels() -> dict[str, set[str]]:
    """Sample name -> the labels the exporter gives it."""
    found: dict[str, set[str]] = {}
    metrics = Metrics(a_view, "0.0.0")
    metrics.declare_tables(["ranking_signal"])
    for family in metrics.registry.collect():
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_aggregations_across_replicas_keep_every_label_of_the_metric() -> None:
    """`max by (...)` straight over a metric takes one value across replicas: it must keep
    every label the exporter gives the metric, or it takes the max of distinct series (the
    repair counts of the narrow and full modes, say) instead of adding them up."""
    labels = exported_labels()
    assert labels["reconciler_repairs_total"] == {"table", "trigger", "outcome", "mode"}
    exprs = dashboard_exprs() + [rule["expr"] for rule in alert_rules()]
    seen = 0
    for expr in exprs:
        for by, metric in MAX_BY.findall(expr):
            kept = {label.strip() for label in by.split(",")}
            assert labels[metric] <= kept, f"{expr} drops {labels[metric] - kept}"
            seen += 1
    assert seen >= 10
    for expr in exprs:
        if "reconciler_repairs_total" in expr:
            assert "mode" in expr, expr


def runbook_anchors() -> set[str]:
    """The anchors GitHub gives the runbook's sections (lower case, spaces to dashes)."""
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    return {
        re.sub(r"[^a-z0-9 _-]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("## ")
    }


def test_runbook_links_within_itself_resolve() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for anchor in re.findall(r"\]\(#([a-z0-9_-]+)\)", runbook):
        assert anchor in runbook_anchors(), anchor


def test_panel_titles_are_unique() -> None:
    titles = [p["title"] for p in dashboard_panels()]
    duplicated = {t for t in titles if titles.count(t) > 1}
    assert not duplicated, f"panels share a title: {duplicated}"


def test_panels_link_the_runbook_of_the_alerts_they_show() -> None:
    """A panel that shows what an alert watches (the same metric; the status code is the state
    set as one number) links the alert's runbook section; every alert is on some panel."""
    base = yaml.safe_load(CONFIG.read_text())["runbook_base_url"]
    anchors = runbook_anchors()

    def metrics_of(expr: str) -> set[str]:
        return {
            "reconciler_month_status" if m == MONTH_STATUS_CODE else m for m in METRIC.findall(expr)
        }

    watched = {rule["alert"]: metrics_of(rule["expr"]) for rule in alert_rules()}
    linked: set[str] = set()
    for panel in dashboard_panels():
        urls = {link["url"] for link in panel.get("links", [])}
        for url in urls:
            assert url.startswith(f"{base}#"), (panel["title"], url)
            assert url.split("#", 1)[1] in anchors, (panel["title"], url)
        shown = set().union(*(metrics_of(t["expr"]) for t in panel["targets"]))
        related = {name for name, uses in watched.items() if uses & shown}
        expected = {f"{base}#{name.lower()}" for name in related}
        assert expected <= urls, f"{panel['title']} does not link {expected - urls}"
        linked |= {url.split("#", 1)[1] for url in urls}
    assert {name.lower() for name in watched} <= linked, "an alert no panel shows"
