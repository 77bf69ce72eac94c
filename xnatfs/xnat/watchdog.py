"""A deadline for the one part of an HTTP exchange that socket timeouts cannot bound: the
status line and headers.

http.client reads them line by line with as many ``recv`` calls as it takes, each with the
socket's per-read timeout, so a server that sends one header byte every few seconds holds a
caller almost without limit (issue 17 §1).  ``DeadlineHTTPConnection.getresponse`` arms the
client's watchdog with the request's deadline (both in a ``ContextVar`` the client sets around
each request); when it passes first, the watchdog shuts the socket down, the blocked ``recv``
returns, and the client reports a timeout.  The body is bounded by ``body.read_body`` instead.

The deadline is a :class:`RequestDeadline`, not a number: an upload's body may take longer than
the deadline to send (bytes moving, each send bounded by the socket timeout), so the answer is
owed from the last body byte on; the upload body calls :meth:`RequestDeadline.body_sent` then,
and ``getresponse`` first waits while the kernel's send queue still drains towards the server
(:meth:`RequestDeadline.wait_drained`: megabytes may sit in socket buffers after the last
``send``), then arms the watchdog.

Each client owns one watchdog; its thread starts on first use (never before the client is used,
so never before a daemon forks), sleeps while nothing is armed and ends with ``close()``.

A deadline armed on a pooled connection is armed on its :class:`Lease`, not on its socket: the
connection goes back to the pool inside the read that returns a body's last bytes (urllib3
releases it there), before the reader can disarm, and another request may take it from the pool
at once.  A watchdog firing in that window shut the other request's socket down (its GET failed
and was retried).  The pool ends the lease before it takes the connection back, so a deadline
that passes after that shuts nothing down.
"""

from __future__ import annotations

import fcntl
import heapq
import itertools
import socket
import struct
import termios
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, Tuple

import urllib3.connection
import urllib3.connectionpool

__all__ = [
    "REQUEST_DEADLINE",
    "RequestDeadline",
    "Watchdog",
    "Lease",
    "shuttable_of",
    "POOL_CLASSES",
]


class Shuttable(Protocol):
    """What the watchdog shuts down: a socket, or the :class:`Lease` of a pooled one."""

    def shutdown(self, how: int, /) -> None: ...


class Lease:
    """One request's hold on a pooled connection, from the pool's ``_get_conn`` to its
    ``_put_conn``.  :meth:`shutdown` shuts the connection's socket down only while the hold
    lasts; :meth:`end` (the pool taking the connection back) waits for a shutdown under way,
    so none reaches a connection another request may be using."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # guards _ended; held across the shutdown
        self._ended = False

    def shutdown(self, how: int, /) -> None:
        with self._lock:
            if self._ended:
                return  # back in the pool: perhaps another request's connection now
            sock = getattr(self._conn, "sock", None)
            if sock is not None:
                sock.shutdown(how)

    def end(self) -> None:
        with self._lock:
            self._ended = True


def shuttable_of(raw: Any) -> Optional[Shuttable]:
    """What a deadline on the body of a urllib3 response may shut down: its connection's
    :class:`Lease`; the socket itself for a pool that is not ours (a proxy's, see
    docs/SECURITY.md); None once the connection is back in the pool (the body was read)."""
    conn = getattr(raw, "_connection", None)
    if conn is None:
        return None
    lease = getattr(conn, "xnatfs_lease", None)
    if isinstance(lease, Lease):
        return lease
    sock = getattr(conn, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


class RequestDeadline:
    """The ``time.monotonic()`` value by which one request must be answered (``at``).

    Only the thread sending the request changes it (a float store: atomic), and only later:
    :meth:`body_sent` moves it to ``max(at, now + answer)`` when an upload body has been sent,
    so a slow upload is bounded per send while bytes move and by ``answer`` seconds after.
    """

    #: longest wait between looks at a draining send queue (no event says "the peer acked")
    POLL = 0.05
    #: the first wait: a small body is usually acknowledged within it.  The waits double up
    #: to ``POLL``; a first wait of ``POLL`` cost every small upload 50 ms (the queue still
    #: held the body's last bytes at the first look, acknowledged microseconds later: a
    #: `tar x` of 4 KiB files spent most of each close() here, RESULTS.md "Small files")
    POLL_FIRST = 0.001

    def __init__(self, at: float, answer: float, clock=time.monotonic, sleep=time.sleep) -> None:
        self.at = at
        self._answer = answer
        self._clock = clock
        self._sleep = sleep
        self._sent = False

    def body_sent(self) -> None:
        """The last body byte is on its way: XNAT's answer is owed within ``answer`` s."""
        self._sent = True
        self.at = max(self.at, self._clock() + self._answer)

    def wait_drained(self, sock: socket.socket, stall: float) -> None:
        """After :meth:`body_sent`: wait while ``sock``'s send queue shrinks (the server is
        still reading the body), then owe the answer from when it emptied.  Gives up once the
        queue has not shrunk for ``stall`` s (then ``at`` stays: bytes stopped moving)."""
        if not self._sent:
            return
        last = unsent_bytes(sock)
        moved = self._clock()
        pause = self.POLL_FIRST
        while last:
            self._sleep(pause)
            pause = min(self.POLL, pause * 2)
            now = self._clock()
            queued = unsent_bytes(sock)
            if queued is None:
                return
            if queued < last:
                moved, last = now, queued
            if queued == 0:
                self.at = max(self.at, now + self._answer)
                return
            if now - moved >= stall:
                return


def unsent_bytes(sock: socket.socket) -> Optional[int]:
    """Bytes the kernel still holds for ``sock`` (not yet sent or not yet acknowledged):
    ``SIOCOUTQ`` (= ``TIOCOUTQ``), Linux; None where that is not available."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])
    except (OSError, ValueError, AttributeError):
        return None


#: the deadline of the request this thread is sending, and the watchdog of the client sending
#: it; None outside a request
REQUEST_DEADLINE: "ContextVar[Optional[Tuple[RequestDeadline, Watchdog]]]" = ContextVar(
    "xnatfs_request_deadline", default=None
)


class Watchdog:
    """Shuts a socket down when its deadline passes unless it was disarmed first."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        # _cond guards the three fields below
        self._heap: List[Tuple[float, int]] = []
        self._armed: Dict[int, Shuttable] = {}
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._ids = itertools.count(1)
        #: deadlines that passed so far (for tests and stats): their sockets were shut down,
        #: unless a :class:`Lease` had ended
        self.fired = 0

    def arm(self, deadline: float, sock: Shuttable) -> int:
        """Shut ``sock`` (a socket, or a :class:`Lease`) down at ``deadline`` (a clock value)
        unless disarmed; 0 once closed."""
        with self._cond:
            if self._closed:
                return 0
            token = next(self._ids)
            self._armed[token] = sock
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="xnatfs-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def wake(self) -> None:
        """Look at the deadlines again now (the clock moved: tests with a fake clock)."""
        with self._cond:
            self._cond.notify()

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
                    # inside the lock: once its request disarmed (which waits for the lock)
                    # the connection may go back to the pool and serve another request, whose
                    # socket this must never shut down; shutdown() does not block
                    self.fired += 1
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed: nothing is waiting on it


if TYPE_CHECKING:  # the mixins' super() is urllib3's class they are mixed into
    _ConnectionBase = urllib3.connection.HTTPConnection
    _PoolBase = urllib3.connectionpool.HTTPConnectionPool
else:
    _ConnectionBase = _PoolBase = object


class _Armed(_ConnectionBase):
    """Mixin: arm the watchdog around reading the status line and headers."""

    def getresponse(self):
        armed = REQUEST_DEADLINE.get()
        sock = getattr(self, "sock", None)
        token = 0
        if armed is not None and isinstance(sock, socket.socket):
            # read now, not when the request began: an upload's body has been sent by now
            armed[0].wait_drained(sock, sock.gettimeout() or 30.0)
            token = armed[1].arm(armed[0].at, sock)
        try:
            return super().getresponse()
        finally:
            if token and armed is not None:
                armed[1].disarm(token)


class DeadlineHTTPConnection(_Armed, urllib3.connection.HTTPConnection):
    pass


class DeadlineHTTPSConnection(_Armed, urllib3.connection.HTTPSConnection):
    pass


class _Leasing(_PoolBase):
    """Mixin of the pools: a new :class:`Lease` for each request that takes a connection, ended
    before the connection is taken back (see the module docstring)."""

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        conn: Any = super()._get_conn(timeout)
        conn.xnatfs_lease = Lease(conn)
        return conn

    def _put_conn(self, conn: Any) -> None:
        lease = getattr(conn, "xnatfs_lease", None)
        if lease is not None:
            lease.end()
        super()._put_conn(conn)


class DeadlineHTTPConnectionPool(_Leasing, urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = DeadlineHTTPConnection


class DeadlineHTTPSConnectionPool(_Leasing, urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = DeadlineHTTPSConnection


#: for ``PoolManager.pool_classes_by_scheme``
POOL_CLASSES = {"http": DeadlineHTTPConnectionPool, "https": DeadlineHTTPSConnectionPool}
