"""The deadline of the filesystem call a thread is serving (README: "no call waits longer than
``--timeout``").

A ``getattr`` of a deep path may walk several listings, each one request with its own client
deadline; without a shared bound a slow server could make one system call cost a deadline per
level (issue 17 §1, issue 18 §0.3).  ``Tree`` opens a scope per call; the client cuts every
request's deadline to it.  A ``ContextVar``, so each FUSE worker thread (and nothing it hands
work to) has its own.  Imports nothing from xnatfs: the client and the tree both use it.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Iterator, Optional

__all__ = ["scope", "current", "left"]

_DEADLINE: ContextVar[Optional[float]] = ContextVar("xnatfs_call_deadline", default=None)


@contextlib.contextmanager
def scope(seconds: float) -> Iterator[float]:
    """Bound everything inside by ``seconds`` from now; an enclosing, earlier deadline stays."""
    outer = _DEADLINE.get()
    mine = time.monotonic() + seconds
    if outer is not None and outer <= mine:
        yield outer
        return
    token = _DEADLINE.set(mine)
    try:
        yield mine
    finally:
        _DEADLINE.reset(token)


def current() -> Optional[float]:
    """The ``time.monotonic()`` value this thread's call must end by, or None."""
    return _DEADLINE.get()


def left(default: float) -> float:
    """Seconds left of the current call's deadline (``default`` outside any), never < 0."""
    d = _DEADLINE.get()
    return default if d is None else max(0.0, d - time.monotonic())
