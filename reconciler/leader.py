"""Leader election through a Postgres session advisory lock, with a lease; and the leader's
heartbeat, which every replica exports as its dead-man's switch.

The lock lives on a dedicated connection whose `idle_session_timeout` is the lease: a leader
that stops pinging (killed, frozen, partitioned) loses its session, and with it the lock, so
another daemon takes over within about one lease. A leader checks that its connection is still
alive right before every repair, so one that woke up after losing the lock never repairs.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from psycopg import sql

from replicator.errors import ReplicationError
from replicator.postgres import Database, Session

logger = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x5EC0_1EAD


class LeaderLock:
    def __init__(self, db: Database, *, lease_seconds: float) -> None:
        self.db = db.named("reconciler-leader")
        self.lease_seconds = lease_seconds
        self._conn: Session | None = None
        self._held = False
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        """Becomes (or stays) leader if the lock is free; never blocks on the lock."""
        with self._mutex:
            if self._held and self._conn is not None and self._conn.alive():
                return True
            self._drop()
            conn: Session | None = None
            try:
                conn = self.db.session(autocommit=True)
                conn.execute(
                    sql.SQL("SET idle_session_timeout = {}").format(
                        sql.Literal(int(self.lease_seconds * 1000))
                    )
                )
                got = conn.scalar("SELECT pg_catalog.pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
            except ReplicationError as exc:
                logger.warning("leader election failed: %s", exc)
                if conn is not None:
                    conn.close()
                return False
            if got:
                self._conn, self._held = conn, True
                logger.info("became leader")
                return True
            conn.close()
            return False

    def still_leader(self) -> bool:
        """Checked right before acting as leader: the lock's session must still be alive."""
        with self._mutex:
            if not self._held:
                return False
            if self._conn is not None and self._conn.alive():
                return True
            logger.error("lost the leader lock (its connection is gone): not repairing")
            self._drop()
            return False

    def keep_alive(self) -> None:
        """Called more often than the lease, from a thread of its own."""
        with self._mutex:
            if self._held and not (self._conn is not None and self._conn.alive()):
                logger.error("lost the leader lock (its connection is gone)")
                self._drop()

    def release(self) -> None:
        with self._mutex:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._held = None, False


def beat(conn: Session, instance: str) -> dt.datetime | None:
    """The leader completed a cycle; commits on `conn` and returns the time recorded (the one
    every replica exports)."""
    found = conn.scalar(
        "INSERT INTO ranking.leader_heartbeat (instance, cycle_completed_at)"
        " VALUES (%s, now()) ON CONFLICT (singleton) DO UPDATE"
        " SET instance = EXCLUDED.instance, cycle_completed_at = EXCLUDED.cycle_completed_at"
        " RETURNING cycle_completed_at",
        (instance,),
    )
    conn.commit()
    return found if isinstance(found, dt.datetime) else None


def last_beat(conn: Session) -> dt.datetime | None:
    """When the leader last completed a cycle (a follower's dead-man's switch)."""
    found = conn.scalar("SELECT cycle_completed_at FROM ranking.leader_heartbeat")
    return found if isinstance(found, dt.datetime) else None
