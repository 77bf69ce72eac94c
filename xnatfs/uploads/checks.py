"""Checks: one listing request shared by the uploads of a resource that ask for it together.

An upload is confirmed by a listing of its resource fetched after its PUT returned (the check,
``Uploader``'s ``verify``).  Several uploads to one resource that finish close together (a
``cp`` of many files with ``--upload-workers`` > 1, programs writing side by side) each asked
for their own; any listing whose request *began* after an upload's PUT returned shows that
upload as well.  ``SharedChecks.fetch(key, fn)`` returns the result of a call of ``fn()`` that
began after ``fetch`` was called: while one call for ``key`` runs, callers that arrive wait
for it to end and then share the next one (the first of them makes it).  So a check never uses
a listing that may predate its PUT, and N uploads finishing while one listing is under way cost
one more listing, not N.

Every wait is bounded (``timeout``: then ``TimeoutError``, errno ETIMEDOUT; the uploader checks
again later); an error of the shared call goes to every caller that shared it.

This module imports nothing from the rest of xnatfs.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Optional

__all__ = ["SharedChecks"]


@dataclass
class _Call:
    """One call of ``fn`` and the callers sharing it."""

    #: set once ``value`` or ``error`` is final
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: Optional[BaseException] = None
    #: callers sharing it (its maker included)
    callers: int = 1


@dataclass
class _Key:
    #: the call under way (its request may have begun before a new caller asked)
    running: Optional[_Call] = None
    #: the next call: callers that arrive while ``running`` runs share it; its maker starts it
    #: once ``running`` is done, and nobody joins it from then on
    waiting: Optional[_Call] = None


class SharedChecks:
    """Thread-safety: every method may be called from any thread; ``_lock`` guards ``_keys``
    and is never held while ``fn`` runs or a caller waits."""

    def __init__(self, timeout: float = 60.0) -> None:
        #: longest wait for another caller's call (seconds)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._keys: Dict[Hashable, _Key] = {}
        #: calls made, and callers served by a call another caller made
        self.stats = {"calls": 0, "shared": 0}

    def fetch(self, key: Hashable, fn: Callable[[], Any], what: str = "") -> Any:
        """The result of a call of ``fn()`` that began after this call did (see the module
        docstring); raises what that call raised.  ``what`` names the call in the error of a
        wait that timed out (the request and its URL: the one log line of a failed close
        names them)."""
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            before: Optional[_Call] = None
            if state.running is None:
                call, make = _Call(), True
                state.running = call
            elif state.waiting is None:
                call, make, before = _Call(), True, state.running
                state.waiting = call
            else:
                call, make = state.waiting, False
                call.callers += 1
                self.stats["shared"] += 1
        if not make:
            return self._result(call, what or str(key))
        if before is not None:
            # a call that never ends (its request bounded by the client's own timeouts) must
            # not hold the callers of this one past theirs: this one is made anyway then
            before.done.wait(self.timeout)
            with self._lock:
                # nobody joins it from now on: its request may begin at once
                if state.waiting is call:
                    state.waiting = None
                state.running = call
        with self._lock:
            self.stats["calls"] += 1
        try:
            call.value = fn()
        except BaseException as exc:  # noqa: BLE001 - every sharer gets it
            call.error = exc
        finally:
            with self._lock:
                if state.running is call:
                    state.running = None
                if state.running is None and state.waiting is None:
                    self._keys.pop(key, None)
            call.done.set()
        return self._result(call, what or str(key))

    def _wait(self, call: _Call, what: str) -> None:
        if not call.done.wait(self.timeout):
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"waited {self.timeout:g}s for {what}, a listing another check makes",
            )

    def _result(self, call: _Call, what: str) -> Any:
        self._wait(call, what)
        if call.error is not None:
            raise call.error
        return call.value
