"""A follower's cycle: it compares nothing and exports what the leader found (so two replicas
neither double the load nor write the same rows). Should it take over, it compares every month
once, since it never saw their inputs itself."""

from __future__ import annotations

from reconciler.findings import read_findings
from reconciler.monthstate import MonthStates
from replicator.config import Settings
from replicator.postgres import Session
from replicator.syncstate import read_all_sync_states


def follow(conn: Session, months: MonthStates, settings: Settings) -> None:
    """Adopts the leader's findings and the months' sync state; forgets the months it has no
    finding of."""
    states = read_all_sync_states(conn, settings.tables)
    findings = read_findings(conn, settings.tables)
    conn.rollback()
    for month in [m for m in months if m not in findings]:
        months.forget(month)
    for month, found in findings.items():
        months.ensure(month).adopt(found, states.get(month))
