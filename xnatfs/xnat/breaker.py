"""The circuit breaker: once XNAT is known to be down, calls that need it fail at once.

Why: without it every filesystem call on a dead server paid its own retries and the limiter's
pauses before ``EIO``: 2-12 s per call with ``--timeout 10`` (up to ``--timeout`` each by
default), so an ``ls`` or a shell's tab completion in a mount whose server was down hung for a
minute.  rclone, gcsfuse and CIFS fail fast instead; so does this.

States (one per client, every HTTP exchange passes ``admit`` and ``record``):

* **closed** (XNAT answers): every request goes.  Failures that say "the server is not
  there" are counted; any answer resets the count.  ``THRESHOLD`` of them in a row open the
  breaker.  Connection failures (refused, DNS, connect timeout) count alone; an HTTP
  500/502/504, a connection broken mid-answer or a timeout waiting for an answer can be one
  object's trouble (a listing that
  always fails, a huge one that is always slow), so ``ANSWER_THRESHOLD`` of those in a row
  open the breaker, and only when they came from at least two different folders (paths
  without their last segment: the files of one broken resource are one object's trouble).
  A 503 or 429 ("busy, come back later") is left to the request limiter (its pauses and
  ``Retry-After``).
* **open** (XNAT is down): ``admit`` raises :class:`~.errors.ServerDown` at once (no request;
  :class:`~.errors.HostDown`, EHOSTDOWN "Host is down", while connections fail, else EIO),
  until the next check is due.  Then one request (whichever caller comes first) goes as the
  probe; the others still fail at once while it is out.  A probe that fails doubles the wait
  for the next one (``probe_base`` .. ``probe_max``, jittered: N mounts do not all ask at one
  instant after a restart); any answer closes the breaker.

One WARNING line when it opens and one when it closes; the calls failed in between are counted,
not logged one by one (``snapshot``: ``.xnatfs/stats`` "server", ``xnatfs status``).
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from typing import Callable, List, Optional, Set

from .errors import HostDown, ServerDown

__all__ = ["ANSWER_THRESHOLD", "Breaker", "Failure", "THRESHOLD"]

log = logging.getLogger("xnatfs.xnat.client")

#: connection failures in a row that open the breaker
THRESHOLD = 3
#: failures in a row, from two paths at least, that open it when the server answers (500,
#: 502, 504, a connection broken mid-answer, no answer in time): more, so a flaky server does
#: not open it by chance (one request in two failing: eight in a row once in 256; three in a
#: row, one in eight, opened it every few seconds under the upload fault tests)
ANSWER_THRESHOLD = 8


class Failure(enum.Enum):
    """What one exchange said about the server."""

    #: any HTTP answer that is not one of the statuses below (a 404 is an answer)
    NONE = "none"
    #: no connection at all: refused, reset, DNS, connect timeout
    CONNECTION = "connection"
    #: an answer or a wait that may be one object's: 500/502/503/504, no answer in time
    ANSWER = "answer"


class Breaker:
    """Closed/open/probing state shared by every caller of one client.  ``clock`` (monotonic
    seconds) and ``rand`` (uniform in [0, 1)) are injected for tests."""

    def __init__(
        self,
        server: str,
        *,
        probe_base: float = 1.0,
        probe_max: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.server = server
        self._base = probe_base
        self._max = probe_max
        self._clock = clock
        self._rand = rand
        #: guards every field below; nothing is called with it held but the clock and log
        self._lock = threading.Lock()
        self._fails = 0
        self._connection_fails = 0
        self._paths: Set[str] = set()
        self._last_error = ""
        #: what the last failure was: connection failures make ``HostDown`` (EHOSTDOWN)
        self._kind = Failure.CONNECTION
        #: clock value since when the server is down (None: closed)
        self._down_since: Optional[float] = None
        self._next_probe = 0.0
        self._probe_wait = probe_base
        #: a probe is out: the other callers keep failing at once
        self._probing = False
        #: called (no lock held) when the server answers again after an outage / goes down
        self.on_up: List[Callable[[], None]] = []
        self.on_down: List[Callable[[], None]] = []
        #: counters for the stats
        self.opened = 0
        self.failed_fast = 0
        self._failed_fast_before = 0

    def next_check_in(self) -> Optional[float]:
        """Seconds until a probe is due (0: now), None while closed; while a probe is out,
        ``probe_base`` (look again then: its end decides)."""
        with self._lock:
            if self._down_since is None:
                return None
            if self._probing:
                return self._base
            return max(0.0, self._next_probe - self._clock())

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._down_since is not None

    def snapshot(self) -> dict:
        with self._lock:
            now = self._clock()
            since = self._down_since
            down = since is not None
            return {
                "state": ("probing" if self._probing else "down") if down else "up",
                "down_for_s": round(now - since, 3) if since is not None else 0.0,
                "next_check_in_s": round(max(0.0, self._next_probe - now), 3) if down else 0.0,
                "times_down": self.opened,
                "calls_failed_fast": self.failed_fast,
                "last_error": self._last_error if down else "",
            }

    def admit(self, method: str, url: str) -> bool:
        """Before an exchange: True when it goes as the probe, False when it goes as usual;
        raises ServerDown when the server is down and no probe is due."""
        with self._lock:
            if self._down_since is None:
                return False
            now = self._clock()
            if not self._probing and now >= self._next_probe:
                self._probing = True
                return True
            self.failed_fast += 1
            down_for = now - self._down_since
            wait = max(0.0, self._next_probe - now)
            last = self._last_error
            cls = HostDown if self._kind is Failure.CONNECTION else ServerDown
        raise cls(
            method,
            url,
            None,
            f"XNAT down for {down_for:.0f}s (last: {last}); failing at once, next check in "
            f"{wait:.0f}s",
        )

    def record(self, failure: Failure, path: str, error: str = "", probe: bool = False) -> None:
        """After an exchange (``probe``: what ``admit`` returned for it)."""
        with self._lock:
            now = self._clock()
            if probe:
                self._probing = False
            if failure is Failure.NONE:
                self._fails = self._connection_fails = 0
                self._paths.clear()
                if self._down_since is None:
                    return
                down_for = now - self._down_since
                failed_fast = self.failed_fast - self._failed_fast_before
                self._down_since = None
                self._probe_wait = self._base
            else:
                self._last_error = error
                self._kind = failure
                if self._down_since is not None:
                    if probe:
                        self._reopen_locked(now)
                    return
                self._fails += 1
                # the folder, not the file: eight files of one broken resource (a prefetch,
                # an XNAT share gone for that project) are one object's trouble, not an outage
                self._paths.add(path.rsplit("/", 1)[0])
                if failure is Failure.CONNECTION:
                    self._connection_fails += 1
                if not self._open_locked(now):
                    return
                fails = self._fails
        if failure is Failure.NONE:
            log.warning(
                "%s answers again after %.1fs down (%d calls failed at once meanwhile)",
                self.server,
                down_for,
                failed_fast,
            )
            for callback in list(self.on_up):
                try:
                    callback()
                except Exception:  # a listener's fault is not this request's
                    log.exception("after %s answered again", self.server)
        else:
            for callback in list(self.on_down):
                callback()
            log.warning(
                "%s is down (%d failures in a row, last: %s): calls that need it fail at once "
                "while one request at a time checks whether it is back; cached files and "
                "listings still answer, writes stay in the upload journal",
                self.server,
                fails,
                error,
            )

    def _open_locked(self, now: float) -> bool:
        """Open if the failures in a row say the server is down; True if it opened."""
        if self._connection_fails < THRESHOLD and (
            self._fails < ANSWER_THRESHOLD or len(self._paths) < 2
        ):
            return False
        self._down_since = now
        self._failed_fast_before = self.failed_fast
        if self._connection_fails >= THRESHOLD:
            self._kind = Failure.CONNECTION
        self.opened += 1
        self._probe_wait = self._base
        self._reopen_locked(now)
        return True

    def probe_done(self) -> None:
        """A probe that ended saying nothing about the server (refused by us before sending):
        the next caller probes."""
        with self._lock:
            self._probing = False

    def _reopen_locked(self, now: float) -> None:
        """Schedule the next probe: the wait doubles per failed probe, equal jitter."""
        wait = self._probe_wait
        self._next_probe = now + wait * (0.5 + 0.5 * self._rand())
        self._probe_wait = min(self._max, wait * 2.0)
