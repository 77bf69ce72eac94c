"""One cap on the requests a mount has in flight, adaptive (AIMD), shared by every caller.

Why: a mount is many greedy callers at once (FUSE threads, walk-ahead, prefetch, bulk zips,
downloads, uploads, the heartbeat).  On a cluster, 100 nodes times that is thousands of
concurrent requests on one Java server (issue 13 §2).  The client takes a slot here around
each HTTP exchange (``XnatClient._send``; a streamed download holds its slot until its
response is closed), so one number, ``--max-requests``, bounds them all.

The limit adapts as TCP's congestion window does:

* additive increase: every answered request adds ``1/limit`` (about +1 per window of
  ``limit`` requests), up to ``max_requests``;
* multiplicative decrease: an overload sign (429, 503, 502, 504, a timeout, a refused or
  broken connection) halves it, at most once per "round": only a request that *started after*
  the last decrease may decrease again, so 16 failures of one burst count once;
* a second overload sign in a row with no success between (the server is down or
  restarting, not having a hiccup) also *pauses* the whole mount for a jittered, doubling
  delay (``backoff_base`` .. ``backoff_max``): while paused nothing is sent, then one request
  probes.  A ``Retry-After`` pauses the mount for as long as it asks (capped at
  ``backoff_max``).  So a mount sends about one request per pause while XNAT is down, and the
  jitter spreads N mounts' first requests after a restart over the last pause instead of one
  instant (no retry storm).

A caller waits for a slot no longer than its deadline; a pause that outlasts the deadline
fails the call at once (``SlotUnavailable``) rather than holding it pointlessly.

Locking: ``_cond`` guards every field; nothing is called with it held except the clock.
Deadlock freedom: a slot is never held while waiting for another slot or for the login lock
(``client.py``: a login needs a slot, and no slot holder waits for the login lock).  A slot
given back by a garbage-collection finalizer (``release_orphan``: a streamed response dropped
unclosed) never waits for ``_cond``: the collector runs at any allocation, also in a thread
that holds ``_cond`` itself, and a blocking ``release`` there deadlocked the whole mount (every
request waited for a lock its holder could never give back; seen under load in CI).  It is
queued and taken in by whoever holds ``_cond`` next.
"""

from __future__ import annotations

import collections
import enum
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, Optional, Tuple

__all__ = ["Outcome", "RequestLimiter", "Slot", "SlotUnavailable"]


#: longest a waiter sleeps before it looks again (for slots finalizers gave back)
_ORPHAN_RECHECK_S = 1.0


class Outcome(enum.Enum):
    """What an exchange says about the server's health."""

    #: an answer came (any status not listed under OVERLOAD): the server is serving
    OK = "ok"
    #: 429/502/503/504, a timeout, a refused/reset connection: back off
    OVERLOAD = "overload"
    #: no information (the request failed before reaching the server, or was refused by us)
    NEUTRAL = "neutral"


class SlotUnavailable(Exception):
    """No slot before the caller's deadline (``paused``: the mount is backing off)."""

    def __init__(self, message: str, paused: bool) -> None:
        super().__init__(message)
        self.paused = paused


@dataclass
class Slot:
    """One request's permission to be in flight; give it back with ``release`` exactly once
    (a second release is ignored, so ``finally`` blocks may release defensively)."""

    started: float
    released: bool = False


class RequestLimiter:
    """Adaptive cap on concurrent requests.  ``clock`` (monotonic seconds) and ``rand``
    (uniform in [0, 1)) are injected for tests."""

    def __init__(
        self,
        max_requests: int,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        self.max_requests = max_requests
        self._base = backoff_base
        self._max_pause = backoff_max
        self._clock = clock
        self._rand = rand
        self._cond = threading.Condition(threading.Lock())
        #: slots given back by finalizers, not yet counted (``release_orphan``); a deque's
        #: append and popleft are atomic, so this one field is touched without ``_cond``
        self._orphans: Deque[Tuple[Slot, Outcome, Optional[float]]] = collections.deque()
        #: current window (float; int(limit) requests may be in flight); under _cond
        self._limit = float(max_requests)
        self._in_flight = 0
        #: no request starts before this clock value (a pause); under _cond
        self._paused_until = 0.0
        #: clock value of the last decrease; only requests started later decrease again
        self._last_decrease = float("-inf")
        #: overload rounds in a row without a success; under _cond
        self._streak = 0
        #: counters for ``.xnatfs/stats``
        self.peak_in_flight = 0
        self.decreases = 0
        self.pauses = 0

    # ------------------------------------------------------------------ state
    @property
    def limit(self) -> int:
        with self._cond:
            return int(self._limit)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def snapshot(self) -> dict:
        with self._cond:
            now = self._clock()
            return {
                "max_requests": self.max_requests,
                "limit": int(self._limit),
                "in_flight": self._in_flight,
                "peak_in_flight": self.peak_in_flight,
                "decreases": self.decreases,
                "pauses": self.pauses,
                "paused_for": round(max(0.0, self._paused_until - now), 3),
            }

    # ------------------------------------------------------------------ slots
    def try_acquire(self) -> "Slot | float":
        """A slot now, or the seconds to wait before trying again (``inf``: until a release)."""
        with self._cond:
            return self._try_locked()

    def _try_locked(self) -> "Slot | float":
        self._drain_locked()
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        if self._in_flight >= int(self._limit):
            return float("inf")
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        return Slot(started=now)

    def acquire(self, deadline: float) -> Slot:
        """Wait for a slot until ``deadline`` (a ``clock`` value); raise SlotUnavailable."""
        with self._cond:
            while True:
                got = self._try_locked()
                if isinstance(got, Slot):
                    return got
                now = self._clock()
                left = deadline - now
                paused = self._paused_until > now
                if paused and now + got > deadline:
                    raise SlotUnavailable(
                        f"server overloaded or down: requests held back for {got:.1f}s more",
                        paused=True,
                    )
                if left <= 0:
                    raise SlotUnavailable(
                        f"all {int(self._limit)} request slots busy until the deadline",
                        paused=False,
                    )
                # re-checked at least every _ORPHAN_RECHECK_S: a slot a finalizer gave back
                # while this thread held _cond is counted by the next holder, with no notify
                self._cond.wait(min(left, got, _ORPHAN_RECHECK_S))

    def release(self, slot: Slot, outcome: Outcome, retry_after: Optional[float] = None) -> None:
        """Give the slot back and learn from the exchange's ``outcome``."""
        with self._cond:
            self._drain_locked()
            self._release_locked(slot, outcome, retry_after)
            self._cond.notify_all()

    def release_orphan(
        self, slot: Slot, outcome: Outcome, retry_after: Optional[float] = None
    ) -> None:
        """``release`` for a finalizer: never blocks.  Queued, then counted now if ``_cond`` is
        free, else by its holder (who may be this very thread, interrupted by the collector
        inside a critical section: a blocking acquire here would never return)."""
        if slot.released:  # closed normally: the usual case, and no lock needed to see it
            return
        self._orphans.append((slot, outcome, retry_after))
        if self._cond.acquire(blocking=False):
            try:
                self._drain_locked()
                self._cond.notify_all()
            finally:
                self._cond.release()

    def _drain_locked(self) -> None:
        while self._orphans:
            try:
                slot, outcome, retry_after = self._orphans.popleft()
            except IndexError:  # emptied by a collector run inside this loop
                return
            self._release_locked(slot, outcome, retry_after)

    def _release_locked(self, slot: Slot, outcome: Outcome, retry_after: Optional[float]) -> None:
        if slot.released:
            return
        slot.released = True
        self._in_flight = max(0, self._in_flight - 1)
        now = self._clock()
        if outcome is Outcome.OK:
            self._streak = 0
            self._limit = min(float(self.max_requests), self._limit + 1.0 / self._limit)
        elif outcome is Outcome.OVERLOAD:
            if slot.started >= self._last_decrease:
                # a new round of trouble (not one more failure of the same burst)
                self._last_decrease = now
                self._limit = max(1.0, self._limit / 2.0)
                self.decreases += 1
                self._streak += 1
                if self._streak >= 2:
                    step = min(self._max_pause, self._base * (2 ** (self._streak - 2)))
                    # "equal jitter": between half and all of the step
                    self._pause_locked(now, step * (0.5 + 0.5 * self._rand()))
            if retry_after is not None and retry_after > 0:
                self._pause_locked(now, min(retry_after, self._max_pause))

    def _pause_locked(self, now: float, seconds: float) -> None:
        if now + seconds > self._paused_until:
            self._paused_until = now + seconds
            self.pauses += 1
