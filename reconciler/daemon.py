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
from exporter.server import MetricsServer
from reconciler import __version__
from reconciler.cycle import CycleSummary, Reconciler
from reconciler.leader import LeaderLock
from reconciler.monthstate import MonthStates
from replicator.config import Settings, parse_host_port
from replicator.postgres import Database

logger = logging.getLogger(__name__)


@dataclass
class Overrides:
    """Command-line choices that outlive a configuration reload."""

    interval_seconds: float | None = None
    auto_repair: bool | None = None
    metrics_addr: str | None = None


class Daemon:
    def __init__(self, load_settings: Callable[[], Settings], overrides: Overrides) -> None:
        self._load_settings = load_settings
        self.overrides = overrides
        self.settings = load_settings()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._failures = 0
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

    def reload(self) -> None:
        try:
            settings = self._load_settings()
        except (ValueError, OSError) as exc:
            logger.error("configuration reload failed, keeping the old one: %s", exc)
            return
        self.leader.release()
        self.settings = settings
        self.leader = self._new_leader()
        self._configure()
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
            self._stop.set()

        def reload(_: int, __: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def stop(self) -> None:
        self._stop.set()

    def serve_metrics(self) -> MetricsServer:
        daemon_settings = self.settings.daemon
        host, port = parse_host_port(self.overrides.metrics_addr or daemon_settings.metrics_addr)
        auth = None
        if daemon_settings.basic_auth_user and daemon_settings.basic_auth_password:
            auth = (daemon_settings.basic_auth_user, daemon_settings.basic_auth_password)
        server = MetricsServer(
            self.metrics.registry,
            host,
            port,
            ready=self.ready,
            tls_cert_file=daemon_settings.tls_cert_file,
            tls_key_file=daemon_settings.tls_key_file,
            basic_auth=auth,
        )
        server.start()
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
                self._stop.wait(wait)
        finally:
            self.leader.release()
        return summary

    def _keep_leader_alive(self) -> None:
        while not self._stop.wait(self.settings.daemon.leader_lease_seconds / 3):
            self.leader.keep_alive()
