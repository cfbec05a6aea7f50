"""The metrics collector over a view, with a fresh registry per test (as client_python's own
tests do): what each family exports per month, and that a month outside the view is gone."""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from exporter.metrics import DaemonView, Metrics, MonthStateCollector, status_code_help
from reconciler.record import MonthRecord
from reconciler.verdict import EXPORTED, Status
from tests.months import month_key

NOW = dt.datetime(2026, 11, 5, 12, tzinfo=dt.UTC)
CODES = {str(s): s.code for s in Status.by_severity()}


def view(*months: MonthRecord, **changes: object) -> DaemonView:
    fields: dict[str, object] = {
        "months": months,
        "sources_up": {"delta": True, "postgres": False},
        "last_cycle": NOW,
        "leader": True,
        "circuit_open": False,
        "statuses": tuple(str(s) for s in EXPORTED),
        "status_codes": CODES,
        "repairs": {
            ("ranking_signal", "auto", "repaired", "narrow"): 3,
            ("ranking_signal", "auto", "failed", "full"): 2,
        },
    }
    fields.update(changes)
    return DaemonView(**fields)  # type: ignore[arg-type]


def registry(daemon: DaemonView) -> CollectorRegistry:
    fresh = CollectorRegistry()
    fresh.register(MonthStateCollector(lambda: daemon, "9.9.9"))
    return fresh


DRIFT = MonthRecord(
    month_key("ranking_signal", "2026-10"),
    Status.DRIFT,
    delta_rows=10,
    postgres_rows=11,
    lag_seconds=0.0,
    last_sync_at=NOW - dt.timedelta(hours=1),
    checked_at=NOW,
    proven_at=NOW - dt.timedelta(minutes=5),
    duration_seconds=0.25,
    consecutive_failures=1,
    repair_failures=2,
)


def test_every_per_month_family_of_a_month() -> None:
    reg = registry(view(DRIFT))
    labels = {"table": "ranking_signal", "year_month": "2026-10"}
    value = reg.get_sample_value
    assert value("reconciler_month_status", {**labels, "status": "drift"}) == 1
    assert value("reconciler_month_status", {**labels, "status": "in_sync"}) == 0
    assert value("reconciler_month_status_code", labels) == Status.DRIFT.code
    assert value("reconciler_month_rows", {**labels, "side": "delta"}) == 10
    assert value("reconciler_month_rows", {**labels, "side": "postgres"}) == 11
    assert value("reconciler_month_last_check_timestamp_seconds", labels) == NOW.timestamp()
    assert (
        value("reconciler_month_last_proof_timestamp_seconds", labels)
        == (NOW - dt.timedelta(minutes=5)).timestamp()
    )
    assert value("reconciler_month_last_check_duration_seconds", labels) == 0.25
    assert value("reconciler_replication_failures", labels) == 1
    assert value("reconciler_month_repair_failures", labels) == 2
    assert (
        value(
            "reconciler_repairs_total",
            {"table": "ranking_signal", "trigger": "auto", "outcome": "failed", "mode": "full"},
        )
        == 2
    )
    assert (
        value("reconciler_repair_failures_total", {"table": "ranking_signal", "trigger": "auto"})
        == 2
    )
    assert value("reconciler_source_up", {"source": "postgres"}) == 0
    assert value("reconciler_leader") == 1
    assert value("reconciler_build_info", {"version": "9.9.9"}) == 1


def test_unknown_times_have_no_sample_and_a_month_gone_from_the_view_is_gone() -> None:
    fresh = MonthRecord(month_key("composite_signal_daily", "2026-09"))
    reg = registry(view(fresh, last_cycle=None))
    labels = {"table": "composite_signal_daily", "year_month": "2026-09"}
    assert reg.get_sample_value("reconciler_month_status", {**labels, "status": "unknown"}) == 1
    assert reg.get_sample_value("reconciler_month_last_proof_timestamp_seconds", labels) is None
    assert reg.get_sample_value("reconciler_last_cycle_timestamp_seconds") is None
    empty = registry(view())
    assert empty.get_sample_value("reconciler_month_status_code", labels) is None


def test_the_status_code_help_names_every_status_with_its_code() -> None:
    text = status_code_help(CODES)
    for status in Status:
        assert f"{status.code} {status}" in text
    assert (
        f"# HELP reconciler_month_status_code {text}"
        in generate_latest(registry(view(DRIFT))).decode()
    )


def test_no_created_series() -> None:
    metrics = Metrics(lambda: view(DRIFT), "9.9.9")
    metrics.checks.labels(table="ranking_signal").inc()
    assert "_created" not in generate_latest(metrics.registry).decode()
