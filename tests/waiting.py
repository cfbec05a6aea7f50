"""Small helpers for tests that run real processes: polling with a deadline, free ports, and
finding the system tools they need (Prometheus, Alertmanager, ...)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable

import pytest


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


def tool(name: str, *aliases: str) -> str:
    """The path of a system tool; a failure under CI (where .ci/run installs it), else a skip."""
    found = next(filter(None, map(shutil.which, (name, *aliases))), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed (see .ci/run for how to install it)")
    return found
