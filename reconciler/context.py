"""`Context`: what the daemon's cycles work with, built from one configuration; a reload builds a
new one and keeps everything the daemon learnt."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from reconciler.audit import Trigger
from reconciler.check import Checker
from reconciler.leader import LeaderLock
from reconciler.pacing import Pacer
from reconciler.planner import Periods
from reconciler.repair import Repairer
from replicator.config import Settings
from replicator.postgres import Database
from replicator.yearmonth import YearMonth, current_month, retention_window


@dataclass(frozen=True)
class Context:
    settings: Settings
    db: Database
    checker: Checker
    repairer: Repairer
    leader: LeaderLock
    pacer: Pacer

    @classmethod
    def build(cls, settings: Settings, leader: LeaderLock) -> Context:
        db = Database(
            settings.require_dsn(), "reconciler-daemon", settings.postgres.connect_timeout_seconds
        )
        checker = Checker(db, settings)
        # The audit names the instance: with two daemons, which one repaired matters.
        repairer = Repairer(checker, settings, actor=instance_name(), trigger=Trigger.AUTO)
        digest = settings.digest
        pacer = Pacer(digest.postgres_max_share, digest.postgres_rows_per_second)
        return cls(settings, db, checker, repairer, leader, pacer)

    @property
    def interval(self) -> float:
        return self.settings.daemon.interval_seconds

    @property
    def auto_repair(self) -> bool:
        return self.settings.auto_repair.enabled

    @property
    def periods(self) -> Periods:
        daemon = self.settings.daemon
        return Periods(
            daemon.interval_seconds,
            daemon.postgres_check_period_seconds,
            daemon.deep_check_period_seconds,
        )

    def window(self) -> list[YearMonth]:
        return retention_window(current_month(), self.settings.daemon.retention_months)


def instance_name() -> str:
    return f"reconciler-daemon:{socket.gethostname()}:{os.getpid()}"
