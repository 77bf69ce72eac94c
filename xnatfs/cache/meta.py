"""Metadata cache: listings and object records kept in memory for a TTL.

A ``cachetools.TTLCache`` from a hashable key (by convention a tuple of path parts, e.g.
``("DEMO1", "SUBJ01")``) to whatever the loader returned (a listing, a record). Entries age out
after ``ttl`` seconds of the injected ``timer`` and are dropped early by ``invalidate``/
``invalidate_prefix`` after a local change (rclone ``_age``/``ForgetPath``; fsspec ``DirCache``).

Concurrent misses for one key are collapsed into one loader call (single flight), so a directory
that 16 threads ``stat`` at once is listed once. Loader errors go to every waiter of that flight and
are never cached: the next call loads again.

No wait is unbounded (issue 17 §1): a caller that joins another caller's load waits at most its own
``timeout`` and then gets ``TimeoutError`` (errno ETIMEDOUT), while the load goes on and is stored
for the next caller.  ``load_async`` starts a load on another thread (the stale-while-slow refresh
of ``tree.Tree``) and hands back the flight to wait on for as long as the caller chooses.

A listing the caller fetched itself (the upload's check, ``tree/uploading.py``) is stored with
``refresh``: taken ``mark()`` before its request, it is stored only if no invalidation touched
its key since (a local change that happened meanwhile wins, as it does over a running load),
and it cancels the loads of that key running then (they may predate it).

This module must not import ``xnatfs.tree`` or ``xnatfs.xnat``.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Hashable, Iterable, Optional, Tuple

import cachetools

log = logging.getLogger(__name__)

#: Stored in place of nothing, so a loader may legitimately return None.
_MISSING = object()
#: Invalidations remembered for ``refresh`` (older ones: it refuses, as if they touched its key).
_INVALIDATIONS_KEPT = 4096


@dataclass
class _Flight:
    """One running loader call for one key; waiters block on ``done``."""

    #: Thread running the loader (a loader that asks for its own key would wait forever).
    owner: int
    #: Set once ``value`` or ``error`` is final.
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = _MISSING
    error: Optional[BaseException] = None
    #: Cleared by an invalidation that happens while the loader runs: the result may predate a
    #: local change, so it is handed to the waiters but not stored.
    store: bool = True


class MetaCache:
    """TTL cache with single-flight loading and prefix invalidation.

    Thread-safety: every method may be called from any thread. ``_lock`` protects ``_cache``,
    ``_flights``, ``_stats``, ``_generation`` and ``_invalidations``; it is a leaf lock
    (nothing else is acquired while it is held) and it is never held while a loader runs, so a
    loader may use this cache for *other* keys.
    """

    def __init__(
        self,
        ttl: float = 60.0,
        maxsize: int = 200_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Seconds an entry stays fresh, measured with ``timer``.
        self.ttl = ttl
        self._lock = threading.Lock()
        # _lock protects the three fields below.
        self._cache: cachetools.TTLCache = cachetools.TTLCache(
            maxsize=maxsize, ttl=ttl, timer=timer
        )
        self._flights: Dict[Hashable, _Flight] = {}
        self._stats = {
            "hits": 0,
            "misses": 0,
            "loads": 0,
            "errors": 0,
            "joins": 0,
            "timeouts": 0,
            "refreshes": 0,
            "refreshes_refused": 0,
        }
        #: invalidations so far, and the last ones: (number, "key" | "prefix", key or prefix)
        self._generation = 0
        self._invalidations: Deque[Tuple[int, str, Hashable]] = deque(maxlen=_INVALIDATIONS_KEPT)

    # -- reading ---------------------------------------------------------------------------------

    def get_or_load(
        self, key: Hashable, loader: Callable[[], Any], timeout: Optional[float] = None
    ) -> Any:
        """Return the fresh value of ``key``, calling ``loader()`` once if there is none.

        Blocks while the loader (of this thread or of another one that got there first) runs;
        waiting for another thread's loader lasts at most ``timeout`` seconds (None: no bound),
        then ``TimeoutError`` (ETIMEDOUT).  Raises whatever the loader raised, to every caller
        that waited on that call; the error is not cached. A loader that asks for its own key
        raises RuntimeError instead of deadlocking.
        """
        me = threading.get_ident()
        with self._lock:
            value = self._cache.get(key, _MISSING)
            if value is not _MISSING:
                self._stats["hits"] += 1
                return value
            self._stats["misses"] += 1
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight(owner=me)
                leader = True
                self._stats["loads"] += 1
            else:
                if flight.owner == me:
                    raise RuntimeError(f"metadata loader for {key!r} asked for its own key")
                leader = False
                self._stats["joins"] += 1
        if not leader:
            if not flight.done.wait(timeout):
                with self._lock:
                    self._stats["timeouts"] += 1
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"waited {timeout:g}s for a listing another call is loading",
                    "/".join(map(str, key)) if isinstance(key, tuple) else key,
                )
            if flight.error is not None:
                raise flight.error
            return flight.value
        return self._run(key, flight, loader, raise_error=True)

    def _run(
        self, key: Hashable, flight: _Flight, loader: Callable[[], Any], raise_error: bool
    ) -> Any:
        """Run ``loader`` for ``flight`` (this thread leads it), publish the outcome."""
        try:
            value = loader()
        except BaseException as exc:
            with self._lock:
                self._stats["errors"] += 1
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.error = exc
            flight.done.set()
            if raise_error:
                raise
            return None
        with self._lock:
            if flight.store:
                self._cache[key] = value
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.value = value
        flight.done.set()
        return value

    def load_async(
        self, key: Hashable, loader: Callable[[], Any], submit: Callable[[Callable[[], Any]], Any]
    ) -> _Flight:
        """Make sure a load of ``key`` is running, on a thread of ``submit`` (an executor's
        ``submit``) if none is, and return its flight: ``done`` is set once ``value`` or
        ``error`` is final.  Never blocks on the loader.  A fresh entry gives an already done
        flight holding it."""
        with self._lock:
            value = self._cache.get(key, _MISSING)
            if value is not _MISSING:
                flight = _Flight(owner=0, value=value)
                flight.done.set()
                return flight
            self._stats["misses"] += 1
            running = self._flights.get(key)
            if running is not None:
                self._stats["joins"] += 1
                return running
            flight = self._flights[key] = _Flight(owner=0)
            self._stats["loads"] += 1
        try:
            submit(lambda: self._run(key, flight, loader, raise_error=False))
        except BaseException as exc:  # noqa: BLE001 - the executor is shut down: the flight fails
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.error = exc
            flight.done.set()
        return flight

    def get_fresh(self, key: Hashable) -> Any:
        """The fresh value of ``key`` or None (counted as a hit when there is one); never
        loads, never waits."""
        with self._lock:
            value = self._cache.get(key, _MISSING)
            if value is _MISSING:
                return None
            self._stats["hits"] += 1
            return value

    def peek(self, key: Hashable) -> Any:
        """Return the fresh value of ``key`` or None; never loads and never waits for a loader.

        Used to answer a negative lookup from the cached parent listing without a request.
        """
        with self._lock:
            value = self._cache.get(key, _MISSING)
        return None if value is _MISSING else value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._cache

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    # -- writing ---------------------------------------------------------------------------------

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` as fresh now (e.g. a listing the caller already has)."""
        with self._lock:
            self._cache[key] = value

    def invalidate(self, key: Hashable) -> None:
        """Forget ``key`` after a local change; a load of it running now will not be stored."""
        with self._lock:
            self._locked_invalidate(key)

    def _locked_invalidate(self, key: Hashable) -> None:
        """Caller holds self._lock."""
        self._locked_note("key", key)
        self._cache.pop(key, None)
        flight = self._flights.get(key)
        if flight is not None:
            flight.store = False

    def _locked_note(self, kind: str, what: Hashable) -> None:
        """Count an invalidation and remember it for ``refresh``.  Caller holds self._lock."""
        self._generation += 1
        self._invalidations.append((self._generation, kind, what))

    def mark(self) -> int:
        """The invalidations so far: take it before fetching a listing to ``refresh`` with."""
        with self._lock:
            return self._generation

    def _locked_touched_since(self, key: Hashable, since: int) -> bool:
        """Did an invalidation after mark ``since`` drop ``key``?  Also True when the ones
        right after ``since`` are no longer remembered.  Caller holds self._lock."""
        oldest = self._invalidations[0][0] if self._invalidations else self._generation + 1
        if since < oldest - 1 or since > self._generation:
            return True
        for number, kind, what in reversed(self._invalidations):
            if number <= since:
                return False
            if kind == "key" and what == key:
                return True
            if kind == "prefix" and isinstance(key, tuple):
                prefix: Any = what
                if key[: len(prefix)] == prefix:
                    return True
        return False

    def refresh(
        self,
        key: Hashable,
        value: Any,
        since: int,
        prefixes: Iterable[tuple] = (),
        keys: Iterable[Hashable] = (),
    ) -> bool:
        """Invalidate ``prefixes`` and ``keys`` (as ``invalidate_prefix``/``invalidate``) and
        store ``value``, which the caller fetched after mark ``since``, as the fresh value of
        ``key``; in one step, so that no load or invalidation comes in between.  Not stored
        (False; the invalidations still happen) when an invalidation after ``since`` touched
        ``key``: a local change the value may predate.  A load of ``key`` running now is not
        stored either: it may have begun before the change the value shows."""
        with self._lock:
            refused = self._locked_touched_since(key, since)
            for prefix in prefixes:
                self._locked_invalidate_prefix(prefix)
            for k in keys:
                self._locked_invalidate(k)
            flight = self._flights.get(key)
            if flight is not None:
                flight.store = False
            if refused:
                self._stats["refreshes_refused"] += 1
                return False
            self._cache[key] = value
            self._stats["refreshes"] += 1
            return True

    def invalidate_prefix(self, prefix: tuple) -> int:
        """Forget every tuple key that starts with ``prefix`` (``()`` forgets all tuple keys).

        Returns how many cached entries were dropped. Loads running for such keys are not stored.
        Cost is one pass over the keys, which is fine for the once-per-local-change use.
        """
        with self._lock:
            return self._locked_invalidate_prefix(prefix)

    def _locked_invalidate_prefix(self, prefix: tuple) -> int:
        """Caller holds self._lock."""
        n = len(prefix)

        def matches(k: Hashable) -> bool:
            return isinstance(k, tuple) and k[:n] == prefix

        self._locked_note("prefix", prefix)
        doomed = [k for k in self._cache.keys() if matches(k)]
        for k in doomed:
            self._cache.pop(k, None)
        for k, flight in self._flights.items():
            if matches(k):
                flight.store = False
        return len(doomed)

    def clear(self) -> None:
        """Forget everything (loads running now are not stored)."""
        with self._lock:
            self._locked_note("prefix", ())
            self._cache.clear()
            for flight in self._flights.values():
                flight.store = False

    # -- counters --------------------------------------------------------------------------------

    @property
    def stats(self) -> Dict[str, int]:
        """Counters for ``.xnatfs/``: hits, misses, loads, errors, joins (misses that waited on
        another caller's load), timeouts (joins that gave up at their deadline), refreshes
        (values stored by ``refresh``) and refreshes_refused, entries and in_flight."""
        with self._lock:
            out = dict(self._stats)
            out["entries"] = len(self._cache)
            out["in_flight"] = len(self._flights)
        return out
