"""Generates `grafana/reconciler.json`, the dashboard, from the panel list below.

    python grafana/generate_dashboard.py            # write it
    python grafana/generate_dashboard.py --check    # exit 1 if the file is out of date

Every panel is right under any number of replicas: per-month values take `max by (table,
year_month)` across instances (the replicas export the same findings; the worst wins when they
briefly disagree), and the stat panels never go blank when the daemons stop: they fall back to
a value that turns red. Each panel carries the thresholds or value mappings that colour it, and
links to the runbook section of each alert it relates to. Thresholds that mirror an alert and
the runbook's address come from alerts/config.yml, the status mappings from the reconciler's
own `Status`; the proof that each query returns what the panel expects runs against a real
Prometheus in tests/test_deployment_proof.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from reconciler.verdict import Status

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "grafana" / "reconciler.json"
CONFIG = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text())
SCHEMA_VERSION = 42  # what Grafana 12 writes
DS = {"type": "prometheus", "uid": "${datasource}"}

# The selectors every query uses; $instance and $table are multi-value with "All" = ".*".
DEPLOYMENT_SEL = 'namespace=~"$namespace", job=~"$job"'
SEL = f'{DEPLOYMENT_SEL}, instance=~"$instance"'
MONTH_SEL = f'{SEL}, table=~"$table"'

# The colour of each status; `reconciler_month_status_code` exports `status.code` (worse is
# higher), so the mappings follow the reconciler's enum whatever it gains or reorders.
STATUS_COLOURS = {
    Status.IN_SYNC: "green",
    Status.UNKNOWN: "text",
    Status.LAGGING: "yellow",
    Status.MISSING: "orange",
    Status.ORPHANED: "purple",
    Status.DRIFT: "red",
    Status.ERROR: "dark-red",
}
if set(STATUS_COLOURS) != set(Status):  # a new status must not render uncoloured
    raise SystemExit(
        f"give every Status a colour in STATUS_COLOURS: {sorted(set(Status) - set(STATUS_COLOURS))}"
    )
STATUS_MAPPINGS = [
    {
        "type": "value",
        "options": {
            str(status.code): {
                "text": status.value,
                "color": STATUS_COLOURS[status],
                "index": status.code,
            }
            for status in Status.by_severity()
        },
    }
]
# Thresholds that mirror an alert's, from its parameters.
DEAD_MAN_SECONDS = int(CONFIG["down_after_seconds"])  # ReconcilerDown
PROOF_MAX_AGE = int(CONFIG["proof_max_age_seconds"])  # ReconcilerProofStale: yellow past this,
PROOF_STALE = PROOF_MAX_AGE + int(CONFIG["proof_margin_seconds"])  # red past this (it fires)
REPLICAS = int(CONFIG["replicas"])  # ReconcilerReplicasMissing
NEVER = 86400  # what the dead-man panel shows when no daemon reported in the last 24 h
RUNBOOK = str(CONFIG["runbook_base_url"])
# The runbook sections of the panels that show statuses: the months' status alerts, and what to
# do with the statuses no alert pages for.
STATUS_ALERTS = (
    "ReconcilerMonthDrift",
    "ReconcilerMonthLagging",
    "ReconcilerMonthError",
    "Orphaned or missing months",
)


def month_status() -> str:
    return f"max by (table, year_month) (reconciler_month_status_code{{{MONTH_SEL}}})"


def runbook_links(sections: tuple[str, ...]) -> list[dict[str, Any]]:
    """Panel links to runbook sections: an alert's is the same URL as its runbook_url (the
    anchor GitHub gives a heading: lower case, spaces to dashes)."""
    return [
        {
            "title": f"Runbook: {name}",
            "url": f"{RUNBOOK}#{name.lower().replace(' ', '-')}",
            "targetBlank": True,
        }
        for name in sections
    ]


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def panel(  # noqa: PLR0913 (the fields of a panel, all but five optional and by keyword)
    title: str,
    kind: str,
    grid: tuple[int, int, int, int],
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "none",
    mappings: list[dict[str, Any]] | None = None,
    steps: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    alerts: tuple[str, ...] = (),
) -> dict[str, Any]:
    h, w, x, y = grid
    defaults: dict[str, Any] = {"unit": unit}
    if mappings:
        defaults["mappings"] = mappings
    if steps:
        defaults["thresholds"] = steps
        defaults["color"] = {"mode": "thresholds"}
    if custom:
        defaults["custom"] = custom
    return {
        "title": title,
        "type": kind,
        "datasource": DS,
        "description": description,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "targets": [
            {"datasource": DS, "refId": chr(ord("A") + i), **t} for i, t in enumerate(targets)
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
        "links": runbook_links(alerts),
    }


def stat_options() -> dict[str, Any]:
    return {
        "colorMode": "background",
        "graphMode": "none",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    }


def panels() -> list[dict[str, Any]]:
    found = [
        panel(
            "Last complete cycle",
            "stat",
            (5, 4, 0, 0),
            "The dead-man's switch: seconds since any daemon of the job completed a cycle. "
            f"Red after {DEAD_MAN_SECONDS // 60} minutes; shows {NEVER} s (red) when no daemon "
            "reported in the last 24 hours, instead of going blank.",
            [
                {
                    "expr": "time() - max(max_over_time(reconciler_last_cycle_timestamp_seconds"
                    f"{{{SEL}}}[24h])) or on() vector({NEVER})",
                    "instant": True,
                    "legendFormat": "last cycle",
                }
            ],
            unit="s",
            steps=thresholds((None, "green"), (DEAD_MAN_SECONDS, "red")),
            options=stat_options(),
            alerts=("ReconcilerDown",),
        ),
        panel(
            "Sources",
            "stat",
            (5, 4, 4, 0),
            "Whether Delta and Postgres answered the daemons' last cycle (the best instance: "
            "down means no replica reaches it); 'no daemon reporting' (red) as soon as no "
            "daemon is scraped.",
            [
                {
                    "expr": f"max by (source) (reconciler_source_up{{{SEL}}})"
                    ' or on() label_replace(vector(0), "source", "no daemon reporting", "", "")',
                    "instant": True,
                    "legendFormat": "{{source}}",
                }
            ],
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "down", "color": "red", "index": 0},
                        "1": {"text": "up", "color": "green", "index": 1},
                    },
                }
            ],
            options=stat_options(),
            alerts=("ReconcilerSourceDown",),
        ),
        panel(
            "Leaders",
            "stat",
            (5, 4, 8, 0),
            "How many instances hold the leader lock: exactly one is right; none means no "
            "month is compared or repaired (also shown when no daemon reports).",
            [
                {
                    "expr": f"sum(reconciler_leader{{{SEL}}}) or on() vector(0)",
                    "instant": True,
                    "legendFormat": "leaders",
                }
            ],
            steps=thresholds((None, "red"), (1, "green"), (2, "red")),
            options=stat_options(),
            alerts=("ReconcilerNoLeader",),
        ),
        panel(
            "Replicas reporting",
            "stat",
            (5, 4, 12, 0),
            f"Reconciler processes that answer their scrape, per namespace, of the {REPLICAS} "
            "expected (alerts/config.yml `replicas`); whatever the instance filter. Fewer means "
            "the deployment has lost its high availability; 0 (red) when none reports.",
            [
                {
                    "expr": f"count by (namespace) (reconciler_build_info{{{DEPLOYMENT_SEL}}})"
                    ' or on() label_replace(vector(0), "namespace", "no daemon reporting", "", "")',
                    "instant": True,
                    "legendFormat": "{{namespace}}",
                }
            ],
            steps=thresholds((None, "red"), (REPLICAS, "green")),
            options=stat_options(),
            alerts=("ReconcilerReplicasMissing",),
        ),
        panel(
            "Auto-repair circuit",
            "stat",
            (5, 4, 16, 0),
            "Open (red) while auto-repair is suspended because too many months drift at once; "
            "'no daemon reporting' (red) when no daemon is scraped.",
            [
                {
                    "expr": f"max(reconciler_auto_repair_circuit_open{{{SEL}}}) or on() vector(-1)",
                    "instant": True,
                    "legendFormat": "circuit",
                }
            ],
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "-1": {"text": "no daemon reporting", "color": "red", "index": 0},
                        "0": {"text": "closed", "color": "green", "index": 1},
                        "1": {"text": "open", "color": "red", "index": 2},
                    },
                }
            ],
            options=stat_options(),
            alerts=("ReconcilerAutoRepairCircuitOpen",),
        ),
        panel(
            "Months not in sync",
            "stat",
            (5, 4, 20, 0),
            "Months (of the selected tables) whose status is anything but in_sync; "
            "'no daemon reporting' (red) when no daemon is scraped.",
            [
                {
                    "expr": f"count({month_status()} > 0)"
                    f" or on() (0 * count({month_status()})) or on() vector(-1)",
                    "instant": True,
                    "legendFormat": "months",
                }
            ],
            mappings=[
                {
                    "type": "value",
                    "options": {"-1": {"text": "no daemon reporting", "color": "red", "index": 0}},
                }
            ],
            steps=thresholds((None, "green"), (1, "red")),
            options=stat_options(),
            alerts=STATUS_ALERTS,
        ),
        panel(
            "Month status",
            "state-timeline",
            (10, 24, 0, 5),
            "Every month of every table, once: the worst status any instance reports (the "
            "replicas export the leader's findings).",
            [{"expr": month_status(), "legendFormat": "{{table}} {{year_month}}"}],
            mappings=STATUS_MAPPINGS,
            options={
                "showValue": "never",
                "mergeValues": True,
                "rowHeight": 0.8,
                "legend": {"showLegend": False},
            },
            alerts=STATUS_ALERTS,
        ),
        panel(
            "Which months are not in sync",
            "table",
            (8, 12, 0, 15),
            "One row per month that is not in sync, with its status.",
            [
                {
                    "expr": f"{month_status()} > 0",
                    "instant": True,
                    "format": "table",
                    "legendFormat": "{{table}} {{year_month}}",
                }
            ],
            mappings=STATUS_MAPPINGS,
            options={"showHeader": True},
            custom={"cellOptions": {"type": "color-background"}},
            alerts=STATUS_ALERTS,
        ),
        panel(
            "Months whose repairs keep failing",
            "table",
            (8, 12, 12, 15),
            "Failed repairs since the month's last successful one (from the repair audit).",
            [
                {
                    "expr": "max by (table, year_month) (reconciler_month_repair_failures"
                    f"{{{MONTH_SEL}}}) > 0",
                    "instant": True,
                    "format": "table",
                    "legendFormat": "{{table}} {{year_month}}",
                }
            ],
            options={"showHeader": True},
            alerts=("ReconcilerRepairsFailing",),
        ),
        panel(
            "Sync lag per month",
            "timeseries",
            (8, 12, 0, 23),
            "Seconds since the oldest Delta commit of the month that Postgres does not hold.",
            [
                {
                    "expr": "max by (table, year_month) (reconciler_month_sync_lag_seconds"
                    f"{{{MONTH_SEL}}})",
                    "legendFormat": "{{table}} {{year_month}}",
                }
            ],
            unit="s",
            alerts=("ReconcilerMonthLagging",),
        ),
        panel(
            "Proof age per month",
            "timeseries",
            (8, 12, 12, 23),
            "Seconds since both sides of the month were last digested from their data (a deep "
            "check, or the sync), the newest any instance reports. The daemon re-proves every "
            f"month at most {PROOF_MAX_AGE} s apart (yellow past that); ReconcilerProofStale "
            f"fires past {PROOF_STALE} s (red).",
            [
                {
                    "expr": "time() - max by (table, year_month) "
                    f"(reconciler_month_last_proof_timestamp_seconds{{{MONTH_SEL}}})",
                    "legendFormat": "{{table}} {{year_month}}",
                }
            ],
            unit="s",
            steps=thresholds((None, "green"), (PROOF_MAX_AGE, "yellow"), (PROOF_STALE, "red")),
            custom={"thresholdsStyle": {"mode": "line"}},
            alerts=("ReconcilerProofStale",),
        ),
        panel(
            "Repairs by trigger, outcome and mode",
            "timeseries",
            (8, 12, 0, 31),
            "Repairs from the audit table: auto (the daemon) and manual (reconciler repair); "
            "mode narrow (only the differing rows), full (the month rewritten) or none (nothing "
            "written).",
            [
                {
                    "expr": "sum by (trigger, outcome, mode) (max by (table, trigger, outcome, "
                    f'mode) (increase(reconciler_repairs_total{{{SEL}, table=~"$table"}}'
                    "[$__rate_interval])))",
                    "legendFormat": "{{trigger}} {{outcome}} {{mode}}",
                }
            ],
            custom={"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}},
            alerts=("ReconcilerRepairsFailing",),
        ),
        panel(
            "Repairs in the time range",
            "stat",
            (8, 6, 12, 31),
            "Audited repairs within the dashboard's time range, by trigger and outcome (narrow "
            "and full added up).",
            [
                {
                    # max across replicas per mode first, then the modes added up.
                    "expr": "sum by (trigger, outcome) (max by (table, trigger, outcome, mode) "
                    f'(increase(reconciler_repairs_total{{{SEL}, table=~"$table"}}'
                    "[$__range])))",
                    "instant": True,
                    "legendFormat": "{{trigger}} {{outcome}}",
                }
            ],
            steps=thresholds((None, "blue")),
            options=stat_options(),
        ),
        panel(
            "Comparisons per instance",
            "timeseries",
            (8, 6, 18, 31),
            "Comparisons per second by instance: only the leader compares.",
            [
                {
                    "expr": "sum by (instance) (rate(reconciler_checks_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "legendFormat": "{{instance}}",
                },
                {
                    "expr": "sum by (instance) (rate(reconciler_check_failures_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "legendFormat": "{{instance}} failed",
                },
            ],
            unit="ops",
        ),
        panel(
            "Rows per month and side",
            "timeseries",
            (8, 8, 0, 39),
            "Row counts of each month in Delta and in Postgres.",
            [
                {
                    "expr": "max by (table, year_month, side) (reconciler_month_rows"
                    f"{{{MONTH_SEL}}})",
                    "legendFormat": "{{table}} {{year_month}} {{side}}",
                }
            ],
            unit="short",
        ),
        panel(
            "Replication failures (sync state)",
            "timeseries",
            (8, 8, 8, 39),
            "Consecutive failed replications recorded by the writer, per month.",
            [
                {
                    "expr": "max by (table, year_month) (reconciler_replication_failures"
                    f"{{{MONTH_SEL}}})",
                    "legendFormat": "{{table}} {{year_month}}",
                }
            ],
            unit="short",
            alerts=("ReconcilerReplicationFailures",),
        ),
        panel(
            "Last check duration per month",
            "timeseries",
            (8, 8, 16, 39),
            "How long the last completed comparison of each month took (a gauge: never empty "
            "while nothing changes).",
            [
                {
                    "expr": "max by (table, year_month) "
                    f"(reconciler_month_last_check_duration_seconds{{{MONTH_SEL}}})",
                    "legendFormat": "{{table}} {{year_month}}",
                }
            ],
            unit="s",
        ),
    ]
    for number, item in enumerate(found, start=1):
        item["id"] = number
    return found


def variable(name: str, label: str, query: str, *, multi: bool) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable", "qryType": 1},
        "refresh": 2,
        "sort": 1,
        "regex": "",
        "hide": 0,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "options": [],
    }
    if multi:
        found["allValue"] = ".*"
        found["current"] = {"text": ["All"], "value": ["$__all"]}
    return found


def dashboard() -> dict[str, Any]:
    return {
        "id": None,
        "uid": "signal-reconciler",
        "title": "Signal reconciler: Delta → Postgres",
        "description": "Generated by grafana/generate_dashboard.py.",
        "tags": ["reconciler", "delta", "postgres"],
        "timezone": "utc",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable(
                    "namespace",
                    "Namespace",
                    "label_values(reconciler_build_info, namespace)",
                    multi=True,
                ),
                variable(
                    "job",
                    "Job",
                    'label_values(reconciler_build_info{namespace=~"$namespace"}, job)',
                    multi=False,
                ),
                variable(
                    "instance",
                    "Instance",
                    'label_values(reconciler_build_info{job=~"$job"}, instance)',
                    multi=True,
                ),
                variable(
                    "table",
                    "Table",
                    'label_values(reconciler_month_status_code{job=~"$job"}, table)',
                    multi=True,
                ),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Fail if the file is out of date.")
    args = parser.parse_args(argv)
    content = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != content:
            print(
                "out of date (run python grafana/generate_dashboard.py): " + str(TARGET),
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(content)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
