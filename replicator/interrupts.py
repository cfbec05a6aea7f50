"""Ctrl-C for the command lines, and saying what a command waits for.

SIGINT and SIGTERM are caught at the C level (`signal.set_wakeup_fd`), so they are seen even
while the main thread is blocked inside a driver call waiting for Postgres: a watcher thread
then asks the server to cancel every running statement of the process (`postgres.cancel_all`);
the command unwinds, its open transactions roll back, and it prints one line and exits 130.
If it has not finished within `GRACE_SECONDS`, the watcher ends the process itself (the server
rolls back what the closed connections left open). Whether anything was committed before is
counted (`committed`), so the line says "nothing changed" only when that is true.

A statement that has waited more than `LOCK_REPORT_SECONDS` for a lock is reported once: which
lock, held by which process and since when, from `pg_locks` and `pg_stat_activity` (never the
other session's query text).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from replicator.errors import ReplicationError
from replicator.postgres import (
    COMMITS,
    OPEN,
    AdbcSession,
    Session,
    adbc_without_own_sigint,
    cancel_all,
)

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells expect of an interrupted command
GRACE_SECONDS = 2.0  # a command may take longer to clean up (the demo): `allow`
LOCK_REPORT_SECONDS = 5.0

_requested = threading.Event()
_grace = [GRACE_SECONDS]


def allow(seconds: float) -> None:
    """Gives the command this long to unwind after an interrupt (the demo stops a server)."""
    _grace[0] = max(_grace[0], seconds)


def requested() -> bool:
    """Whether the command was interrupted."""
    return _requested.is_set()


def outcome() -> str:
    """The one line an interrupted command prints (sessions count their own commits)."""
    if COMMITS.count:
        return (
            f"interrupted: {COMMITS.count} transaction(s) had committed before the interrupt "
            "(see the log above); the one under way was rolled back"
        )
    return "interrupted: nothing changed"


def install() -> None:
    """For a console script's process only (never inside tests that call the commands)."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.signal(signal.SIGINT, _noted)
    signal.signal(signal.SIGTERM, _noted)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    adbc_without_own_sigint()
    threading.Thread(target=_watch_signals, args=(read,), name="interrupt", daemon=True).start()
    threading.Thread(target=_watch_locks, name="lock-watch", daemon=True).start()


def _noted(signum: int, _: FrameType | None) -> None:
    """In the main thread, once it runs Python again: unwind (the watcher thread has already
    cancelled what Postgres was doing)."""
    _requested.set()
    raise KeyboardInterrupt


def _watch_signals(fd: int) -> None:
    while not os.read(fd, 1):
        pass
    _requested.set()
    cancel_all()
    # The main thread unwinds and exits 130 itself; if it cannot (stuck outside Postgres),
    # the process ends here, its connections closed: the server rolls back what they held.
    time.sleep(_grace[0])
    with contextlib.suppress(OSError):
        os.write(2, f"error: {outcome()} (stopped after {_grace[0]:.0f} s)\n".encode())
    os._exit(EXIT_INTERRUPTED)


def disarm() -> None:
    """For a process that handles SIGINT and SIGTERM itself (the daemon stops gracefully)."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing was installed
        signal.set_wakeup_fd(-1)


def _watch_locks() -> None:
    reported: set[tuple[int, float]] = set()
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        for session in OPEN.all():
            since = session.busy_since
            if since is None or now - since < LOCK_REPORT_SECONDS:
                continue
            key = (id(session), since)
            if key in reported:
                continue
            reported.add(key)
            waiting = describe_wait(session)
            if waiting:
                logger.warning("still waiting after %.0f s: %s", now - since, waiting)


_WAIT = """
SELECT l.locktype, l.mode, l.relation::regclass::text, l.objid::bigint, l.objsubid,
       (pg_catalog.pg_blocking_pids(l.pid))[1]
FROM pg_catalog.pg_locks l WHERE l.pid = %s AND NOT l.granted LIMIT 1
"""
_HOLDER = """
SELECT coalesce(a.xact_start, a.backend_start), a.application_name, a.usename
FROM pg_catalog.pg_stat_activity a WHERE a.pid = %s
"""


def describe_wait(session: Session | AdbcSession) -> str | None:
    """Which lock the session's statement waits for, and who holds it; None when it is not
    waiting for a lock (a long statement is not a wait)."""
    pid = session.backend_pid
    if pid is None:
        return None
    try:
        with session.db.named("reconciler-lock-watch").session(autocommit=True) as watch:
            OPEN.discard(watch)
            found = watch.fetchone(_WAIT, (pid,), binary=True)
            if found is None:
                return None
            holder = found[5]
            holder_row = watch.fetchone(_HOLDER, (holder,), binary=True) if holder else None
    except ReplicationError:
        return None
    return _words(found, holder_row)


def _words(lock: tuple[Any, ...], row: tuple[Any, ...] | None) -> str:
    kind, mode, relation, objid, objsubid, holder = lock
    if kind == "advisory" and objsubid == 2 and objid >= 100 and 1 <= objid % 100 <= 12:
        what = f"the month lock of {objid // 100:04d}-{objid % 100:02d} (another write or repair)"
    elif relation:
        what = f"{mode} on {relation}"
    else:
        what = f"a {kind} lock ({mode})"
    if not holder:
        return f"waiting for {what}"
    since, application, user = row if row else (None, None, None)
    who = f"pid {holder}"
    details = [
        d for d in (application and f"application {application}", user and f"user {user}") if d
    ]
    if details:
        who += f" ({', '.join(details)})"
    if isinstance(since, dt.datetime):
        who += f" since {since.astimezone(dt.UTC).isoformat(timespec='seconds')}"
    return f"waiting for {what}, held by {who}"


def interrupted_exit() -> None:
    """Ends an interrupted command: its one line, exit 130."""
    print(f"error: {outcome()}", file=sys.stderr)
    raise SystemExit(EXIT_INTERRUPTED)
