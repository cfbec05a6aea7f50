"""Small helpers for tests that wait on real processes: polling with a deadline, free ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def until(
    condition: Callable[[], bool],
    timeout: float = 60.0,
    what: str = "the condition",
    poll: float = 0.1,
) -> None:
    """Polls `condition` until it holds; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
