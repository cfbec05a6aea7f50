"""`reconciler run`: the process lifecycle and nothing else — signals, configuration reload,
the loop with its back-off, the leader-lease thread and the metrics endpoint.

What one cycle does lives in `reconciler.cycle`; what to compare in `reconciler.planner`; when
to repair in `reconciler.autorepair`.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from exporter.metrics import DaemonView, Metrics
from exporter.server import MetricsAddressError, MetricsServer
from exporter.webconfig import WebConfig, WebConfigError, load_web_config
from reconciler import __version__
from reconciler.cycle import CycleSummary, Reconciler
from reconciler.leader import LeaderLock
from reconciler.monthstate import MonthStates
from replicator.config import ConfigError, Settings, parse_host_port
from replicator.errors import InputError, ReplicationError
from replicator.postgres import Database

logger = logging.getLogger(__name__)


@dataclass
class Overrides:
    """Command-line choices that outlive a configuration reload."""

    interval_seconds: float | None = None
    auto_repair: bool | None = None
    metrics_addr: str | None = None
    web_config_file: str | None = None


class Daemon:
    def __init__(self, load_settings: Callable[[], Settings], overrides: Overrides) -> None:
        self._load_settings = load_settings
        self.overrides = overrides
        self.settings = load_settings()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()  # ends the wait between cycles (stop, reload)
        self._failures = 0
        self.server: MetricsServer | None = None
        self.web = self._web_config(self.settings)  # checked before anything starts
        self.reconciler = Reconciler(Metrics(self.view, __version__))
        self.leader = self._new_leader()
        self._configure()

    # -- configuration -------------------------------------------------------------------
    def _new_leader(self) -> LeaderLock:
        db = Database(
            self.settings.require_dsn(),
            connect_timeout=self.settings.postgres.connect_timeout_seconds,
        )
        return LeaderLock(db, lease_seconds=self.settings.daemon.leader_lease_seconds)

    def _configure(self) -> None:
        self.reconciler.configure(
            self.settings,
            self.leader,
            auto_repair=self.auto_repair_enabled,
            interval=self.interval,
        )

    @property
    def interval(self) -> float:
        return self.overrides.interval_seconds or self.settings.daemon.interval_seconds

    @property
    def auto_repair_enabled(self) -> bool:
        if self.overrides.auto_repair is not None:
            return self.overrides.auto_repair
        return self.settings.auto_repair.enabled

    @property
    def metrics_addr(self) -> str:
        return self.overrides.metrics_addr or self.settings.daemon.metrics_addr

    def _web_config(self, settings: Settings) -> WebConfig:
        path = self.overrides.web_config_file or settings.daemon.web_config_file
        try:
            return load_web_config(path)
        except WebConfigError as exc:
            raise ConfigError(str(exc)) from None

    def reload(self) -> None:
        """SIGHUP: everything is read again (the DSN file, the web config with its password and
        certificates); only the listen address needs a restart, and says so."""
        try:
            settings = self._load_settings()
            web = self._web_config(settings)
        except (ValueError, OSError, ReplicationError) as exc:
            logger.error("configuration reload failed, keeping the old one: %s", exc)
            return
        old_addr = self.metrics_addr
        same_database = settings.require_dsn().same_as(self.settings.require_dsn())
        lease = settings.daemon.leader_lease_seconds
        same_lease = lease == self.settings.daemon.leader_lease_seconds
        self.settings, self.web = settings, web
        if not (same_database and same_lease):  # else the lock stays: no needless failover
            self.leader.release()
            self.leader = self._new_leader()
        self._configure()
        if self.server is not None:
            self.server.reload(web)
            if self.metrics_addr != old_addr:
                logger.warning(
                    "daemon.metrics_addr changed from %s to %s: needs a restart (still serving"
                    " on %s)",
                    old_addr,
                    self.metrics_addr,
                    old_addr,
                )
        logger.info("configuration reloaded")

    # -- what the exporter and the probes see --------------------------------------------
    @property
    def metrics(self) -> Metrics:
        return self.reconciler.metrics

    @property
    def months(self) -> MonthStates:
        return self.reconciler.months

    def view(self) -> DaemonView:
        return self.reconciler.view()

    def ready(self) -> tuple[bool, str]:
        return self.reconciler.ready()

    # -- lifecycle -----------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum: int, _: FrameType | None) -> None:
            logger.info("received %s, stopping", signal.Signals(signum).name)
            self.stop()

        def reload(_: int, __: FrameType | None) -> None:
            # Applied as soon as the cycle under way ends (at once between cycles).
            self._reload.set()
            self._wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def serve_metrics(self) -> MetricsServer:
        host, port = parse_host_port(self.metrics_addr)
        try:
            server = MetricsServer(
                self.metrics.registry,
                host,
                port,
                ready=self.ready,
                web=self.web,
                option_hint="set --metrics-addr, daemon.metrics_addr or "
                "RECONCILER_DAEMON_METRICS_ADDR",
            )
        except MetricsAddressError as exc:
            raise InputError(str(exc)) from None
        server.start()
        self.server = server
        return server

    def run_cycle(self) -> CycleSummary:
        return self.reconciler.run_cycle(self._stop)

    def run(self, *, once: bool = False) -> CycleSummary:
        """Cycles until stopped (or once); returns the last cycle's summary."""
        keeper = threading.Thread(target=self._keep_leader_alive, name="leader", daemon=True)
        keeper.start()
        summary = CycleSummary(run_id="")
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                summary = self.run_cycle()
                if once:
                    break
                healthy = all(summary.sources_up.values())
                self._failures = 0 if healthy else self._failures + 1
                # Back off while a source is down, but never so long that recovery takes
                # more than a few cycles.
                wait = self.interval * min(2**self._failures, 4)
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            self.leader.release()
        return summary

    def _keep_leader_alive(self) -> None:
        while not self._stop.wait(self.settings.daemon.leader_lease_seconds / 3):
            self.leader.keep_alive()
