"""The deadline of the filesystem call a thread is serving (README: "no call waits longer than
``--timeout``").

A ``getattr`` of a deep path may walk several listings, each one request with its own client
deadline; without a shared bound a slow server could make one system call cost a deadline per
level (issue 17 §1, issue 18 §0.3).  ``Tree`` opens a scope per call; the client cuts every
request's deadline to it.  A ``ContextVar``, so each FUSE worker thread (and nothing it hands
work to) has its own.  Imports nothing from xnatfs: the client and the tree both use it.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from typing import ContextManager, Optional

__all__ = ["scope", "current", "left"]

_DEADLINE: ContextVar[Optional[float]] = ContextVar("xnatfs_call_deadline", default=None)


class _Scope:
    """``scope``'s context manager: a class, not ``contextlib.contextmanager``'s generator,
    because every FUSE request opens one or two (a LOOKUP, an OPEN) and the generator's
    set-up was ~1 µs of each (benchmarks/RESULTS.md, "Per-message cost")."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._token: Optional[Token[Optional[float]]] = None

    def __enter__(self) -> float:
        outer = _DEADLINE.get()
        mine = time.monotonic() + self._seconds
        if outer is not None and outer <= mine:
            return outer
        self._token = _DEADLINE.set(mine)
        return mine

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _DEADLINE.reset(self._token)
            self._token = None


def scope(seconds: float) -> ContextManager[float]:
    """Bound everything inside by ``seconds`` from now; an enclosing, earlier deadline stays."""
    return _Scope(seconds)


def current() -> Optional[float]:
    """The ``time.monotonic()`` value this thread's call must end by, or None."""
    return _DEADLINE.get()


def left(default: float) -> float:
    """Seconds left of the current call's deadline (``default`` outside any), never < 0."""
    d = _DEADLINE.get()
    return default if d is None else max(0.0, d - time.monotonic())
