"""Name resolution with a deadline: the client's connections look the server's name up here.

Why (docs/RELIABILITY.md, "A resolver that hangs"): urllib3 calls ``socket.getaddrinfo`` while
it connects, and getaddrinfo has no timeout of ours: with its DNS server unreachable the C
library waits 5 s per try, server and address family, and nothing (the connect timeout, the
header watchdog, the call's deadline, the breaker) saw the thread until it came back.  Here a
lookup runs in a small pool of daemon threads (``xnatfs-resolve-N``, started at the first
lookup, never by the constructor) and the connecting thread waits for it no longer than its
connect timeout; past that it gets :class:`ResolveTimeout`, which the connection turns into
urllib3's ``NameResolutionError`` (``[Errno -3]``, what getaddrinfo says when DNS does not
answer) and the client into ``Unreachable`` (EIO), counted by the breaker as a connection
failure (three in a row: ``EHOSTDOWN`` at once).

- One lookup per name at a time: callers asking while it runs wait for it (a hung resolver
  holds one thread per name, never one per FUSE worker), so the pool stays bounded.
- Answers are kept ``ttl`` seconds (30 by default; the C library gives no TTL); failures are
  not kept (the breaker decides about a name that does not resolve).
- An IP literal (``127.0.0.1``, ``::1``) is converted in the caller's thread
  (``AI_NUMERICHOST``, no DNS, no thread hop).
- TLS is unchanged: the connection is made to the address found, and the certificate is
  still checked against the host name of the URL (urllib3 takes SNI and the name it verifies
  from the connection's ``host``, not from the address).

A lookup that hangs cannot be cancelled (the C call has no timeout); its thread stays busy
until the C library gives up, and ``close()`` does not wait for it (a daemon thread).

No requests import here: the connection class below is a urllib3 one (``pool_classes``).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Type

import urllib3.connectionpool
import urllib3.exceptions
import urllib3.util.connection

__all__ = ["Resolver", "ResolveTimeout", "pool_classes"]

#: one ``getaddrinfo`` result: (family, type, proto, canonname, sockaddr)
AddrInfo = Tuple[Any, Any, int, str, Any]
Lookup = Callable[..., List[AddrInfo]]
_Key = Tuple[str, int, int]


class ResolveTimeout(Exception):
    """The name was not resolved within the caller's time (the lookup goes on).  Not a
    ``TimeoutError``: that is ``socket.timeout``, which the client takes for a read timeout."""


class _Lookup:
    """One lookup under way: callers wait on ``done``; the worker sets ``result``/``error``."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.done = threading.Event()
        self.result: List[AddrInfo] = []
        self.error: Optional[BaseException] = None


class Resolver:
    """Resolves host names with a deadline (see the module docstring).

    Thread-safety: any thread may call :meth:`resolve`.  ``_lock`` guards ``_cache``,
    ``_pending``, ``_threads`` and ``_closed``; it is never held during a lookup.
    """

    #: answers kept, at most (a client talks to one server, a proxy perhaps)
    CACHE_MAX = 32

    def __init__(
        self,
        lookup: Lookup = socket.getaddrinfo,
        *,
        workers: int = 2,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._lookup = lookup
        self._workers = workers
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._cache: "OrderedDict[_Key, Tuple[float, List[AddrInfo]]]" = OrderedDict()
        self._pending: Dict[_Key, _Lookup] = {}
        self._queue: List[_Lookup] = []
        self._threads: List[threading.Thread] = []
        self._closed = False
        #: lookups started, answers taken from the cache, waits that ran out (stats, tests)
        self.lookups = 0
        self.hits = 0
        self.timeouts = 0

    def resolve(self, host: str, port: int, family: int, timeout: float) -> List[AddrInfo]:
        """The addresses of ``host`` (``getaddrinfo`` results, ``SOCK_STREAM``).  Raises
        ``socket.gaierror`` as getaddrinfo does, :class:`ResolveTimeout` after ``timeout``
        seconds without an answer."""
        if _is_ip_literal(host):
            return socket.getaddrinfo(
                host.strip("[]"), port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
            )
        key = (host, port, family)
        with self._lock:
            if self._closed:
                raise socket.gaierror(socket.EAI_AGAIN, "the client is closed")
            kept = self._cache.get(key)
            if kept is not None and kept[0] > self._clock():
                self.hits += 1
                return list(kept[1])
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Lookup(key)
                self._queue.append(pending)
                self.lookups += 1
                if len(self._threads) < self._workers:
                    t = threading.Thread(
                        target=self._work,
                        name=f"xnatfs-resolve-{len(self._threads)}",
                        daemon=True,
                    )
                    self._threads.append(t)
                    t.start()
                self._wake.notify()
        if not pending.done.wait(max(0.0, timeout)):
            with self._lock:
                self.timeouts += 1
            raise ResolveTimeout(f"name resolution of {host} took longer than {timeout:.3g}s")
        if pending.error is not None:
            raise pending.error
        return list(pending.result)

    def close(self) -> None:
        """Let the idle workers end; a lookup under way is not waited for."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed and not self._queue:
                    return
                job = self._queue.pop(0)
            host, port, family = job.key
            try:
                job.result = self._lookup(host, port, family, socket.SOCK_STREAM)
            except BaseException as exc:  # noqa: BLE001 - handed to every caller waiting
                job.error = exc
            with self._lock:
                self._pending.pop(job.key, None)
                if job.error is None and job.result:
                    self._cache[job.key] = (self._clock() + self._ttl, job.result)
                    self._cache.move_to_end(job.key)
                    while len(self._cache) > self.CACHE_MAX:
                        self._cache.popitem(last=False)
            job.done.set()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


if TYPE_CHECKING:  # the mixin's super() is the urllib3 connection class it is mixed into
    import urllib3.connection

    _ConnectionBase = urllib3.connection.HTTPConnection
else:
    _ConnectionBase = object


class _Resolving(_ConnectionBase):
    """Mixin of the client's urllib3 connections: ``_new_conn`` as urllib3 2.x writes it
    (``urllib3/connection.py``), with the name looked up by ``xnatfs_resolver`` within the
    connect timeout, which covers the lookup and the TCP connect together."""

    xnatfs_resolver: Optional[Resolver] = None
    #: used when urllib3 hands the connection no connect timeout (the client always does)
    xnatfs_default_timeout: float = 5.0

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        resolver = self.xnatfs_resolver
        if resolver is None:
            return super()._new_conn()
        timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else None
        wait = timeout if timeout is not None else self.xnatfs_default_timeout
        began = time.monotonic()
        try:
            found = resolver.resolve(
                conn._dns_host, conn.port, urllib3.util.connection.allowed_gai_family(), wait
            )
        except ResolveTimeout as exc:
            reason = socket.gaierror(socket.EAI_AGAIN, str(exc))
            raise urllib3.exceptions.NameResolutionError(conn.host, conn, reason) from exc
        except socket.gaierror as exc:
            raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
        if timeout is not None:
            timeout = max(0.001, timeout - (time.monotonic() - began))
        try:
            sock = _connect_any(found, timeout, conn.source_address, conn.socket_options)
        except socket.timeout as exc:
            raise urllib3.exceptions.ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            raise urllib3.exceptions.NewConnectionError(
                conn, f"Failed to establish a new connection: {exc}"
            ) from exc
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        return sock


def _connect_any(
    found: List[AddrInfo],
    timeout: Optional[float],
    source_address: Optional[Tuple[str, int]],
    socket_options: Optional[List[Tuple[int, int, Any]]],
) -> socket.socket:
    """Connect to the first of ``found`` that answers (urllib3's ``create_connection`` after
    its getaddrinfo); raises the last error."""
    err: Optional[OSError] = None
    for family, kind, proto, _name, address in found:
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
            return sock
        except OSError as exc:
            err = exc
            if sock is not None:
                sock.close()
    raise err if err is not None else OSError("getaddrinfo returned an empty list")


def pool_classes(
    base: Dict[str, Type[urllib3.connectionpool.HTTPConnectionPool]],
    resolver: Resolver,
    default_timeout: float,
) -> Dict[str, Type[urllib3.connectionpool.HTTPConnectionPool]]:
    """``base`` (scheme -> pool class, for ``PoolManager.pool_classes_by_scheme``) with
    connections that resolve through ``resolver``: classes of one client."""
    out: Dict[str, Type[urllib3.connectionpool.HTTPConnectionPool]] = {}
    for scheme, pool in base.items():
        conn_cls = type(
            pool.ConnectionCls.__name__,
            (_Resolving, pool.ConnectionCls),
            {"xnatfs_resolver": resolver, "xnatfs_default_timeout": default_timeout},
        )
        out[scheme] = type(pool.__name__, (pool,), {"ConnectionCls": conn_cls})
    return out
