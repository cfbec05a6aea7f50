"""Every metric the reconciler exports, defined in one place, in a private registry.

Per-month state and the repair counts (read from the repair audit table, so that a manual
`reconciler repair` counts too, and every replica exports the same numbers) are exported by
`MonthStateCollector`, which builds fresh families on each scrape from the view it is handed
(`DaemonView`), so a month that leaves the retention window leaves the output. This package
knows nothing of the reconciler beyond that view. The check counters and the histogram are
ordinary prometheus-client objects; no `_created` series are exported (they double every
counter's series for a value nobody graphs).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
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
INVALID_PARTITIONS = "reconciler_delta_invalid_partitions"


class MonthView(Protocol):
    """What the exporter reads of one month of one table (the reconciler's `MonthRecord`)."""

    @property
    def labels(self) -> tuple[str, str]: ...  # (table, year_month)
    @property
    def status(self) -> str: ...
    @property
    def delta_rows(self) -> int | None: ...
    @property
    def postgres_rows(self) -> int | None: ...
    @property
    def lag_seconds(self) -> float: ...
    @property
    def last_sync_at(self) -> dt.datetime | None: ...
    @property
    def checked_at(self) -> dt.datetime | None: ...
    @property
    def proven_at(self) -> dt.datetime | None: ...
    @property
    def duration_seconds(self) -> float | None: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def repair_failures(self) -> int: ...


def _epoch(moment: dt.datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


@dataclass(frozen=True)
class MonthGauge:
    """One per-month gauge family: its name, help and how to read it off a month (None: the
    month has no sample)."""

    name: str
    help: str
    value: Callable[[MonthView], float | None]


MONTH_GAUGES: tuple[MonthGauge, ...] = (
    MonthGauge(
        MONTH_SYNC_LAG,
        "Seconds since the oldest Delta commit of the month that Postgres does not hold yet;"
        " 0 when caught up",
        lambda m: m.lag_seconds,
    ),
    MonthGauge(
        MONTH_LAST_SYNC,
        "Last successful replication of the month",
        lambda m: _epoch(m.last_sync_at),
    ),
    MonthGauge(
        MONTH_LAST_CHECK, "Last completed comparison of the month", lambda m: _epoch(m.checked_at)
    ),
    MonthGauge(
        MONTH_LAST_PROOF,
        "Last time both sides of the month were digested from their data (Delta from its"
        " files, Postgres from its rows): a deep check, or the sync itself",
        lambda m: _epoch(m.proven_at),
    ),
    MonthGauge(
        MONTH_CHECK_DURATION,
        "Duration of the month's last completed comparison",
        lambda m: m.duration_seconds,
    ),
    MonthGauge(
        REPLICATION_FAILURES,
        "Consecutive failed replications recorded in sync state",
        lambda m: m.consecutive_failures,
    ),
    MonthGauge(
        MONTH_REPAIR_FAILURES,
        "Failed repairs of the month since its last successful one (0 once in sync)",
        lambda m: m.repair_failures,
    ),
)

# Every name a dashboard or an alert may use, with the suffixes the exposition adds.
EXPORTED_NAMES = frozenset(
    {
        MONTH_STATUS,
        MONTH_STATUS_CODE,
        MONTH_ROWS,
        *(gauge.name for gauge in MONTH_GAUGES),
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
        INVALID_PARTITIONS,
    }
)


@dataclass(frozen=True)
class DaemonView:
    months: tuple[MonthView, ...]
    sources_up: Mapping[str, bool]  # every source, up or not
    last_cycle: dt.datetime | None
    leader: bool
    circuit_open: bool
    statuses: tuple[str, ...]  # every value of the month status state set, in order
    status_codes: Mapping[str, int] = field(default_factory=dict)  # status -> exported code
    # Audited repairs, automatic and manual, by (table, trigger, outcome, mode), from Postgres.
    repairs: Mapping[tuple[str, str, str, str], int] = field(default_factory=dict)
    # Delta partition values that are not months, per table (read by the leader).
    invalid_partitions: Mapping[str, int] = field(default_factory=dict)


def status_code_help(codes: Mapping[str, int]) -> str:
    """The help text of `reconciler_month_status_code`, from the codes themselves."""
    named = ", ".join(f"{code} {name}" for name, code in sorted(codes.items(), key=lambda i: i[1]))
    return f"The month's status as one number, worse is higher: {named}"


class MonthStateCollector(Collector):
    """Fresh gauge families from `view()` on every scrape."""

    def __init__(self, view: Callable[[], DaemonView], version: str) -> None:
        self._view = view
        self._version = version

    def collect(self) -> Iterable[Metric]:
        view = self._view()
        month_labels = ["table", "year_month"]
        status = GaugeMetricFamily(
            MONTH_STATUS,
            "1 for the month's current status, 0 otherwise",
            labels=[*month_labels, "status"],
        )
        code = GaugeMetricFamily(
            MONTH_STATUS_CODE, status_code_help(view.status_codes), labels=month_labels
        )
        rows = GaugeMetricFamily(
            MONTH_ROWS, "Rows of the month on each side", labels=[*month_labels, "side"]
        )
        gauges = [GaugeMetricFamily(g.name, g.help, labels=month_labels) for g in MONTH_GAUGES]
        for month in view.months:
            labels = list(month.labels)
            for name in view.statuses:
                status.add_metric([*labels, name], 1.0 if month.status == name else 0.0)
            if month.status in view.status_codes:
                code.add_metric(labels, view.status_codes[month.status])
            for side, count in (("delta", month.delta_rows), ("postgres", month.postgres_rows)):
                if count is not None:
                    rows.add_metric([*labels, side], count)
            for gauge, family in zip(MONTH_GAUGES, gauges, strict=True):
                value = gauge.value(month)
                if value is not None:
                    family.add_metric(labels, value)
        yield from (status, code, rows, *gauges)
        yield from self._repairs(view)
        yield from self._process(view)

    @staticmethod
    def _repairs(view: DaemonView) -> Iterable[Metric]:
        repairs = CounterMetricFamily(
            REPAIRS,
            "Repairs recorded in the repair audit, automatic and manual; mode narrow (the"
            " differing rows only), full (the month rewritten) or none (nothing written)",
            labels=["table", "trigger", "outcome", "mode"],
        )
        repair_fails = CounterMetricFamily(
            REPAIR_FAILURES,
            "Failed repairs recorded in the repair audit",
            labels=["table", "trigger"],
        )
        failed: dict[tuple[str, str], int] = {}
        for (table, trigger, outcome, mode), count in sorted(view.repairs.items()):
            repairs.add_metric([table, trigger, outcome, mode], count)
            failed[table, trigger] = failed.get((table, trigger), 0)
            if outcome == "failed":
                failed[table, trigger] += count
        for (table, trigger), count in sorted(failed.items()):
            repair_fails.add_metric([table, trigger], count)
        return (repairs, repair_fails)

    def _process(self, view: DaemonView) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            SOURCE_UP, "1 if the source answered in the last cycle", labels=["source"]
        )
        for source, is_up in sorted(view.sources_up.items()):
            up.add_metric([source], 1.0 if is_up else 0.0)
        yield up
        if view.last_cycle is not None:
            yield GaugeMetricFamily(
                LAST_CYCLE, "End of the last complete cycle", value=view.last_cycle.timestamp()
            )
        yield GaugeMetricFamily(
            LEADER,
            "1 on the instance that holds the leader lock",
            value=1.0 if view.leader else 0.0,
        )
        yield GaugeMetricFamily(
            CIRCUIT_BREAKER_OPEN,
            "1 while auto-repair is suspended because too many months drift",
            value=1.0 if view.circuit_open else 0.0,
        )
        invalid = GaugeMetricFamily(
            INVALID_PARTITIONS,
            "Partition values of the table's Delta year_month that are not months (YYYY-MM):"
            " their rows belong to no month and are never compared",
            labels=["table"],
        )
        for table, count in sorted(view.invalid_partitions.items()):
            invalid.add_metric([table], count)
        yield invalid
        info = GaugeMetricFamily(BUILD_INFO, "Build information", labels=["version"])
        info.add_metric([self._version], 1.0)
        yield info


class Metrics:
    """The registry and the process-lifetime counters of one daemon."""

    def __init__(self, view: Callable[[], DaemonView], version: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
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
