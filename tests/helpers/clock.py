"""``FakeClock``: the injected ``timer``/``clock`` of the unit tests (cache TTLs, upload backoff,
the request limiter, the prearchive waits)."""

from __future__ import annotations


class FakeClock:
    """Time moves only when the test says so (``advance``), or when the code under test
    ``sleep``s on it: no test waits for real time to pass."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        """An injected ``sleep``: returns at once, the clock moved on."""
        assert seconds >= 0
        self.now += seconds
