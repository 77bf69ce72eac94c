"""``wait_for``: the one deadline wait of the tests that watch another process or thread (a
mount, a daemon, the emulator) reach a state; never a bare sleep."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.1,
) -> T:
    """Poll ``condition`` until it answers something truthy (returned); fail naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
