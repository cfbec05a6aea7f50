"""Every metric the reconciler exports, defined in one place, in a private registry.

Per-month state and the repair counts (read from the repair audit table, so that a manual
`reconciler repair` counts too, and every replica exports the same numbers) are exported by
`MonthStateCollector`, which builds fresh families on each scrape from the view it is handed
(`DaemonView`), so a month that leaves the retention window leaves the output. This package
knows nothing of the reconciler beyond that view. The check counters and the histogram are
ordinary prometheus-client objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MONTH_STATUS = "reconciler_month_status"
MONTH_STATUS_CODE = "reconciler_month_status_code"
MONTH_CHECK_DURATION = "reconciler_month_last_check_duration_seconds"
MONTH_REPAIR_FAILURES = "reconciler_month_repair_failures"
MONTH_ROWS = "reconciler_month_rows"
MONTH_SYNC_LAG = "reconciler_month_sync_lag_seconds"
MONTH_LAST_SYNC = "reconciler_month_last_sync_timestamp_seconds"
MONTH_LAST_CHECK = "reconciler_month_last_check_timestamp_seconds"
MONTH_LAST_PROOF = "reconciler_month_last_proof_timestamp_seconds"
REPLICATION_FAILURES = "reconciler_replication_failures"
CHECKS = "reconciler_checks"  # _total is added by prometheus-client
CHECK_FAILURES = "reconciler_check_failures"
CHECK_DURATION = "reconciler_check_duration_seconds"
REPAIRS = "reconciler_repairs"
REPAIR_FAILURES = "reconciler_repair_failures"
DIGEST_ROWS = "reconciler_digest_rows"  # _total
DIGEST_SECONDS = "reconciler_digest_seconds"  # _total
DIGEST_PAUSED = "reconciler_digest_paused_seconds"  # _total
SOURCE_UP = "reconciler_source_up"
LAST_CYCLE = "reconciler_last_cycle_timestamp_seconds"
LEADER = "reconciler_leader"
BUILD_INFO = "reconciler_build_info"
CIRCUIT_BREAKER_OPEN = "reconciler_auto_repair_circuit_open"

# Every name a dashboard or an alert may use, with the suffixes the exposition adds.
EXPORTED_NAMES = frozenset(
    {
        MONTH_STATUS,
        MONTH_STATUS_CODE,
        MONTH_CHECK_DURATION,
        MONTH_REPAIR_FAILURES,
        MONTH_ROWS,
        MONTH_SYNC_LAG,
        MONTH_LAST_SYNC,
        MONTH_LAST_CHECK,
        MONTH_LAST_PROOF,
        REPLICATION_FAILURES,
        f"{CHECKS}_total",
        f"{CHECK_FAILURES}_total",
        f"{CHECK_DURATION}_bucket",
        f"{CHECK_DURATION}_sum",
        f"{CHECK_DURATION}_count",
        f"{REPAIRS}_total",
        f"{REPAIR_FAILURES}_total",
        f"{DIGEST_ROWS}_total",
        f"{DIGEST_SECONDS}_total",
        f"{DIGEST_PAUSED}_total",
        SOURCE_UP,
        LAST_CYCLE,
        LEADER,
        BUILD_INFO,
        CIRCUIT_BREAKER_OPEN,
    }
)


@dataclass(frozen=True)
class MonthView:
    """What the exporter shows of one month of one table."""

    table: str
    year_month: str
    status: str
    delta_rows: int | None
    postgres_rows: int | None
    lag_seconds: float
    last_sync_timestamp: float | None
    last_check_timestamp: float | None
    replication_failures: int
    last_check_duration: float | None = None
    repair_failures: int = 0  # failed repairs since the last successful one; 0 when in sync
    last_proof_timestamp: float | None = None  # both digests last recomputed from the data


@dataclass(frozen=True)
class DaemonView:
    months: tuple[MonthView, ...]
    sources_up: Mapping[str, bool]  # every source, up or not
    last_cycle_timestamp: float | None
    leader: bool
    circuit_open: bool
    statuses: tuple[str, ...]  # every value of the month status state set, in order
    status_codes: Mapping[str, int] = field(default_factory=dict)  # status -> severity
    # Audited repairs, automatic and manual, by (table, trigger, outcome), from Postgres.
    repairs: Mapping[tuple[str, str, str], int] = field(default_factory=dict)


class MonthStateCollector(Collector):
    """Fresh gauge families from `view()` on every scrape."""

    def __init__(self, view: Callable[[], DaemonView], version: str) -> None:
        self._view = view
        self._version = version

    def collect(self) -> Iterable[Metric]:
        view = self._view()
        status = GaugeMetricFamily(
            MONTH_STATUS,
            "1 for the month's current status, 0 otherwise",
            labels=["table", "year_month", "status"],
        )
        code = GaugeMetricFamily(
            MONTH_STATUS_CODE,
            "The month's status as one number, worse is higher: 0 in_sync, 1 unknown,"
            " 2 lagging, 3 missing, 4 orphaned, 5 drift, 6 error",
            labels=["table", "year_month"],
        )
        duration = GaugeMetricFamily(
            MONTH_CHECK_DURATION,
            "Duration of the month's last completed comparison",
            labels=["table", "year_month"],
        )
        repair_failures = GaugeMetricFamily(
            MONTH_REPAIR_FAILURES,
            "Failed repairs of the month since its last successful one (0 once in sync)",
            labels=["table", "year_month"],
        )
        rows = GaugeMetricFamily(
            MONTH_ROWS, "Rows of the month on each side", labels=["table", "year_month", "side"]
        )
        lag = GaugeMetricFamily(
            MONTH_SYNC_LAG,
            "Seconds since the oldest Delta commit of the"
            " month that Postgres does not hold yet; 0 when caught up",
            labels=["table", "year_month"],
        )
        last_sync = GaugeMetricFamily(
            MONTH_LAST_SYNC,
            "Last successful replication of the month",
            labels=["table", "year_month"],
        )
        last_check = GaugeMetricFamily(
            MONTH_LAST_CHECK,
            "Last completed comparison of the month",
            labels=["table", "year_month"],
        )
        last_proof = GaugeMetricFamily(
            MONTH_LAST_PROOF,
            "Last time both sides of the month were digested from their data and found to agree"
            " or not (Delta from its files, Postgres from its rows)",
            labels=["table", "year_month"],
        )
        failures = GaugeMetricFamily(
            REPLICATION_FAILURES,
            "Consecutive failed replications recorded in sync state",
            labels=["table", "year_month"],
        )
        for month in view.months:
            labels = [month.table, month.year_month]
            for name in view.statuses:
                status.add_metric([*labels, name], 1.0 if month.status == name else 0.0)
            if month.status in view.status_codes:
                code.add_metric(labels, view.status_codes[month.status])
            if month.last_check_duration is not None:
                duration.add_metric(labels, month.last_check_duration)
            repair_failures.add_metric(labels, month.repair_failures)
            if month.delta_rows is not None:
                rows.add_metric([*labels, "delta"], month.delta_rows)
            if month.postgres_rows is not None:
                rows.add_metric([*labels, "postgres"], month.postgres_rows)
            lag.add_metric(labels, month.lag_seconds)
            if month.last_sync_timestamp is not None:
                last_sync.add_metric(labels, month.last_sync_timestamp)
            if month.last_check_timestamp is not None:
                last_check.add_metric(labels, month.last_check_timestamp)
            if month.last_proof_timestamp is not None:
                last_proof.add_metric(labels, month.last_proof_timestamp)
            failures.add_metric(labels, month.replication_failures)
        up = GaugeMetricFamily(
            SOURCE_UP, "1 if the source answered in the last cycle", labels=["source"]
        )
        for source, is_up in sorted(view.sources_up.items()):
            up.add_metric([source], 1.0 if is_up else 0.0)
        repairs = CounterMetricFamily(
            REPAIRS,
            "Repairs recorded in the repair audit, automatic and manual",
            labels=["table", "trigger", "outcome"],
        )
        repair_fails = CounterMetricFamily(
            REPAIR_FAILURES,
            "Failed repairs recorded in the repair audit",
            labels=["table", "trigger"],
        )
        failed: dict[tuple[str, str], int] = {}
        for (table, trigger, outcome), count in sorted(view.repairs.items()):
            repairs.add_metric([table, trigger, outcome], count)
            failed[table, trigger] = failed.get((table, trigger), 0)
            if outcome == "failed":
                failed[table, trigger] += count
        for (table, trigger), count in sorted(failed.items()):
            repair_fails.add_metric([table, trigger], count)
        families: list[Metric] = [status, code, rows, lag, last_sync, last_check, last_proof]
        families.append(duration)
        families += [failures, repair_failures, repairs, repair_fails, up]
        if view.last_cycle_timestamp is not None:
            cycle = GaugeMetricFamily(LAST_CYCLE, "End of the last complete cycle")
            cycle.add_metric([], view.last_cycle_timestamp)
            families.append(cycle)
        families.append(
            GaugeMetricFamily(
                LEADER,
                "1 on the instance that holds the leader lock",
                value=1.0 if view.leader else 0.0,
            )
        )
        families.append(
            GaugeMetricFamily(
                CIRCUIT_BREAKER_OPEN,
                "1 while auto-repair is suspended because too many months drift",
                value=1.0 if view.circuit_open else 0.0,
            )
        )
        info = GaugeMetricFamily(BUILD_INFO, "Build information", labels=["version"])
        info.add_metric([self._version], 1.0)
        families.append(info)
        return families


class Metrics:
    """The registry and the process-lifetime counters of one daemon."""

    def __init__(self, view: Callable[[], DaemonView], version: str) -> None:
        self.registry = CollectorRegistry()
        self.checks = Counter(
            CHECKS, "Month comparisons attempted", ["table"], registry=self.registry
        )
        self.check_failures = Counter(
            CHECK_FAILURES,
            "Month comparisons that could not complete",
            ["table"],
            registry=self.registry,
        )
        self.check_duration = Histogram(
            CHECK_DURATION,
            "Duration of one month comparison",
            ["table"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.digest_rows = Counter(
            DIGEST_ROWS, "Rows digested by comparisons, per side", ["side"], registry=self.registry
        )
        self.digest_seconds = Counter(
            DIGEST_SECONDS,
            "Seconds spent computing digests, per side",
            ["side"],
            registry=self.registry,
        )
        self.digest_paused = Counter(
            DIGEST_PAUSED,
            "Seconds the daemon paused to keep its Postgres digest work within its budget",
            registry=self.registry,
        )
        for side in ("delta", "postgres"):
            self.digest_rows.labels(side=side)
            self.digest_seconds.labels(side=side)
        self.registry.register(MonthStateCollector(view, version))

    def declare_tables(self, tables: Iterable[str]) -> None:
        """Counters exist at 0 from the start, so rate() and alerts see them."""
        for table in tables:
            for counter in (self.checks, self.check_failures):
                counter.labels(table=table)
            self.check_duration.labels(table=table)
