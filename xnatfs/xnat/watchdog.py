"""A deadline for the one part of an HTTP exchange that socket timeouts cannot bound: the
status line and headers.

http.client reads them line by line with as many ``recv`` calls as it takes, each with the
socket's per-read timeout, so a server that sends one header byte every few seconds holds a
caller almost without limit (issue 17 §1).  ``DeadlineHTTPConnection.getresponse`` arms the
client's watchdog with the request's deadline (both in a ``ContextVar`` the client sets around
each request); when it passes first, the watchdog shuts the socket down, the blocked ``recv``
returns, and the client reports a timeout.  The body is bounded by ``body.read_body`` instead.

Each client owns one watchdog; its thread starts on first use (never before the client is used,
so never before a daemon forks), sleeps while nothing is armed and ends with ``close()``.
"""
from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from contextvars import ContextVar
from typing import Dict, List, Optional, Tuple

import urllib3.connection
import urllib3.connectionpool

__all__ = ["REQUEST_DEADLINE", "Watchdog", "POOL_CLASSES"]

#: the ``time.monotonic()`` deadline of the request this thread is sending, and the watchdog
#: of the client sending it; None outside a request
REQUEST_DEADLINE: "ContextVar[Optional[Tuple[float, Watchdog]]]" = ContextVar(
    "xnatfs_request_deadline", default=None)


class Watchdog:
    """Shuts a socket down when its deadline passes unless it was disarmed first."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        # _cond guards the three fields below
        self._heap: List[Tuple[float, int]] = []
        self._armed: Dict[int, socket.socket] = {}
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._ids = itertools.count(1)
        #: sockets shut down so far (for tests and stats)
        self.fired = 0

    def arm(self, deadline: float, sock: socket.socket) -> int:
        """Shut ``sock`` down at ``deadline`` (a clock value) unless disarmed; 0 once closed."""
        with self._cond:
            if self._closed:
                return 0
            token = next(self._ids)
            self._armed[token] = sock
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xnatfs-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def close(self) -> None:
        """End the thread (armed sockets are left alone: their requests end by themselves)."""
        with self._cond:
            self._closed = True
            self._armed.clear()
            self._heap.clear()
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed: drop it
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                left = deadline - self._clock()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                sock = self._armed.pop(token, None)
            if sock is not None:
                self.fired += 1
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed: nothing is waiting on it


class _Armed:
    """Mixin: arm the watchdog around reading the status line and headers."""

    def getresponse(self):  # type: ignore[no-untyped-def]
        armed = REQUEST_DEADLINE.get()
        sock = getattr(self, "sock", None)
        token = 0
        if armed is not None and isinstance(sock, socket.socket):
            token = armed[1].arm(armed[0], sock)
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            if token:
                armed[1].disarm(token)  # type: ignore[index]


class DeadlineHTTPConnection(_Armed, urllib3.connection.HTTPConnection):
    pass


class DeadlineHTTPSConnection(_Armed, urllib3.connection.HTTPSConnection):
    pass


class DeadlineHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = DeadlineHTTPConnection


class DeadlineHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = DeadlineHTTPSConnection


#: for ``PoolManager.pool_classes_by_scheme``
POOL_CLASSES = {"http": DeadlineHTTPConnectionPool, "https": DeadlineHTTPSConnectionPool}
