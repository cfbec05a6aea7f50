"""`reconciler run`: the process lifecycle and nothing else — signals, configuration reload,
the loop with its back-off, the leader-lease thread and the metrics endpoint.

What one cycle does lives in `reconciler.cycle`; what to compare in `reconciler.planner`; when
to repair in `reconciler.autorepair`. Command-line choices reach the daemon inside the settings
(`config.with_overrides`), so that a reload keeps them.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from exporter.metrics import DaemonView, Metrics
from exporter.page import render_page
from exporter.server import MetricsAddressError, MetricsServer
from exporter.webconfig import WebConfig, WebConfigError, load_web_config
from reconciler import __version__
from reconciler.context import Context
from reconciler.cycle import Reconciler
from reconciler.leader import LeaderLock
from reconciler.leading import CycleSummary
from reconciler.monthstate import MonthStates
from replicator import interrupts
from replicator.config import ConfigError, Settings, parse_host_port
from replicator.errors import InputError, ReplicationError
from replicator.postgres import Database, cancel_all

logger = logging.getLogger(__name__)


def _web_config(settings: Settings) -> WebConfig:
    try:
        return load_web_config(settings.daemon.web_config_file)
    except WebConfigError as exc:
        raise ConfigError(str(exc)) from None


def _leader(settings: Settings) -> LeaderLock:
    db = Database(settings.require_dsn(), connect_timeout=settings.postgres.connect_timeout_seconds)
    return LeaderLock(db, lease_seconds=settings.daemon.leader_lease_seconds)


class Daemon:
    def __init__(self, load_settings: Callable[[], Settings]) -> None:
        self._load_settings = load_settings
        settings = load_settings()
        self.web = _web_config(settings)  # checked before anything starts
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()  # ends the wait between cycles (stop, reload)
        self._failures = 0
        self.server: MetricsServer | None = None
        self.reconciler = Reconciler(
            Metrics(self.view, __version__), Context.build(settings, _leader(settings))
        )

    @property
    def settings(self) -> Settings:
        return self.reconciler.context.settings

    @property
    def leader(self) -> LeaderLock:
        return self.reconciler.context.leader

    def reload(self) -> None:
        """SIGHUP: everything is read again (the DSN file, the web config with its password and
        certificates); only the listen address needs a restart, and says so."""
        try:
            self.apply(self._load_settings())
        except (ValueError, OSError, ReplicationError) as exc:
            logger.error("configuration reload failed, keeping the old one: %s", exc)
            return
        logger.info("configuration reloaded")

    def apply(self, settings: Settings) -> None:
        """Works with `settings` from now on (what a reload does once it has read them)."""
        web = _web_config(settings)
        old = self.settings
        same_database = settings.require_dsn().same_as(old.require_dsn())
        same_lease = settings.daemon.leader_lease_seconds == old.daemon.leader_lease_seconds
        leader = self.leader
        if not (same_database and same_lease):  # else the lock stays: no needless failover
            leader.release()
            leader = _leader(settings)
        self.web = web
        self.reconciler.configure(Context.build(settings, leader))
        if self.server is not None:
            self.server.reload(web)
            if settings.daemon.metrics_addr != old.daemon.metrics_addr:
                logger.warning(
                    "daemon.metrics_addr changed from %s to %s: needs a restart (still serving"
                    " on %s)",
                    old.daemon.metrics_addr,
                    settings.daemon.metrics_addr,
                    old.daemon.metrics_addr,
                )

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

        interrupts.disarm()  # the daemon stops gracefully, it is not interrupted
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def stop(self) -> None:
        """Ends the loop; a statement under way (a long digest) is cancelled, so that the
        process stops within seconds, not after the month."""
        self._stop.set()
        self._wake.set()
        cancel_all("reconciler-daemon", "reconciler-repair")

    def serve_metrics(self) -> MetricsServer:
        host, port = parse_host_port(self.settings.daemon.metrics_addr)
        try:
            server = MetricsServer(
                self.metrics.registry,
                host,
                port,
                ready=self.ready,
                web=self.web,
                option_hint="set --metrics-addr, daemon.metrics_addr or "
                "RECONCILER_DAEMON_METRICS_ADDR",
                page=lambda: render_page(self.view(), version=__version__, ready=self.ready()),
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
                wait = self.reconciler.context.interval * min(2**self._failures, 4)
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            self.leader.release()
        return summary

    def _keep_leader_alive(self) -> None:
        while not self._stop.wait(self.settings.daemon.leader_lease_seconds / 3):
            self.leader.keep_alive()
