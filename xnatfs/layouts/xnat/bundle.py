"""One or two requests describe everything below an experiment's scans (issue 12, B4).

Listed one directory at a time, a session costs one request per scan (its resources) and one
per scan resource (its files): a cold ``find`` of a project was one request per directory.
XNAT answers the same rows for a whole experiment at once:

* ``<experiment>/resources?all=true``: the resources of the experiment and of all its scans,
  each row with ``category`` and ``cat_id`` (the scan ID) — docs/XNAT-API.md §1.7
  (``XNATTemplate.loadCatalogs`` ``allowAll``);
* ``<experiment>/scans/ALL/files``: the files of every scan resource in one table whose
  ``URI`` names the scan and the resource id — §1.8 (``XNATTemplate``: a ``SCAN_ID`` of
  ``ALL`` or ``*`` matches every scan of the session, NrgXnat/xnat-web
  ``src/main/java/org/nrg/xnat/restlet/resources/files/XNATTemplate.java``).

``ExperimentBundles`` keeps those answers per experiment for a listing TTL (single flight, its
own ``MetaCache``) and serves the per-directory loads from them: a scan's resources listing from
the first, a scan resource's files listing from the second.  The rows are the ones the
per-directory requests return, so the listings are the same; a directory the bundle cannot
answer with certainty (a resource it does not name, a row whose URI it cannot place) is loaded
on its own, as before.

The files table can be large (every file of the session): it is asked for only when the
experiment's resources are known (the first table) and the whole session holds at most
``FILES_MAX`` files or not more than twice the resource being listed — so ``cp -r`` of one
series of a big session still lists that series alone.

Age: a directory listing made from a table is kept by the engine for a listing TTL from the
moment it is made, so the tables themselves live only half a TTL (``ExperimentBundles(ttl=)``
is given the listing TTL): what a listing shows is at most 1.5 TTL old (one request per
directory: 1 TTL).  A walk of one experiment takes far less than half a TTL.

Warming: a walker who lists an experiment's scans goes into one of them next, and its
resources and files listings come from the two tables — so far three round trips one after
another (the scans listing, then at the scan's ``resources`` the first table, then at its
``files`` the second).  ``warm`` (called as the scans listing is requested) loads the first
table in the background beside the scans listing and the second right after it when the
session is small enough to be listed whole: the walker then waits one round trip less
(benchmarks/RESULTS.md, "Experiment tables beside the scans listing").  An experiment is
warmed once per table lifetime; a table a walker asks for while it is loading is joined, not
asked for again (``MetaCache`` single flight).  A failure there is the walker's own request's
to report: it is only logged (debug).

Invalidation: the engine calls ``invalidated(parts)`` on every local change; the bundles of
every experiment at, above or below ``parts`` are dropped (and a load running for one is not
stored), so a listing loaded after a write is never served from rows older than the write.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote

import cachetools

from xnatfs import deadline
from xnatfs.cache.meta import MetaCache

log = logging.getLogger(__name__)

PathParts = Tuple[str, ...]

#: a session with at most this many files is listed whole at the first files listing
FILES_MAX = 2000

#: experiments whose tables may be loading ahead of walkers at once (``warm``): the pool is
#: the engine's, shared with the refreshes of expired listings, so a ``find`` of a big project
#: must not queue one job per experiment in front of them; past it an experiment is not warmed
#: (its walker asks for the tables itself, as before)
WARM_PENDING_MAX = 4

#: ``.../scans/<scan>/resources/<resource id>/files/...`` in a files row's URI
_SCAN_FILE = re.compile(r"/scans/([^/]+)/resources/([^/]+)/files/")


class ExperimentBundles:
    """Per experiment (keyed by its path parts): its scans' resources and files tables.

    ``client`` offers ``list_scan_resources(experiment_uri)`` and ``list_files(uri)``.
    Thread-safe: ``MetaCache`` does the single flight; ``_lock`` guards the counters only.
    """

    def __init__(self, client: Any, ttl: float = 60.0, files_max: int = FILES_MAX) -> None:
        self.client = client
        self.files_max = files_max
        #: ``ttl``: the listing TTL; the tables live half of it (module docstring, "Age")
        self._cache = MetaCache(ttl=ttl / 2, maxsize=4096)
        #: where ``warm`` runs its loads (an executor's ``submit``; None: no warming).  Set by
        #: the tree: the engine's background pool
        self.submit: Optional[Callable[[Callable[[], None]], Any]] = None
        self._lock = threading.Lock()
        # _lock protects _stats, _warmed and _warming
        self._warming = 0
        self._stats = {
            "resources_from_bundle": 0,
            "files_from_bundle": 0,
            "fallbacks": 0,
            "warmed": 0,
        }
        #: experiments warmed within a table lifetime (``warm``); bounded
        self._warmed: cachetools.TTLCache = cachetools.TTLCache(maxsize=4096, ttl=ttl / 2)

    @property
    def ttl(self) -> float:
        return self._cache.ttl

    # ------------------------------------------------------------------ resources
    def scan_resources(
        self, exp: PathParts, exp_uri: str, scan_id: str, fallback: Callable[[], Any]
    ) -> Any:
        """The resources of scan ``scan_id`` (``Resource`` list), from the experiment's
        ``resources?all=true``; ``fallback()`` (the scan's own listing) if that fails."""
        try:
            table = self._cache.get_or_load(
                exp + ("resources",),
                lambda: self.client.list_scan_resources(exp_uri),
                timeout=_join_timeout(),
            )
        except Exception as exc:  # noqa: BLE001 - the directory's own request decides
            log.debug("resources of %s in one request failed (%s): per scan", exp_uri, exc)
            return self._fallback(fallback)
        self._count("resources_from_bundle")
        return list(table.get(scan_id, ()))

    # ------------------------------------------------------------------ warming
    def warm(self, exp: PathParts, exp_uri: str) -> None:
        """Load the experiment's resources table in the background, then its files table when
        the whole session may be listed at once (module docstring, "Warming").  Never waits."""
        submit = self.submit
        if submit is None:
            return
        with self._lock:
            if exp in self._warmed or self._warming >= WARM_PENDING_MAX:
                return
            self._warmed[exp] = True
            self._warming += 1
            self._stats["warmed"] += 1

        def job() -> None:
            try:
                table = self._cache.get_or_load(
                    exp + ("resources",), lambda: self.client.list_scan_resources(exp_uri)
                )
                if self._cache.peek(exp + ("files",)) is None and self._small(table):
                    self._cache.get_or_load(exp + ("files",), lambda: self._files_table(exp_uri))
            except Exception as exc:  # noqa: BLE001 - the walker's own request reports it
                log.debug("tables of %s ahead of the walker: %s", exp_uri, exc)
            finally:
                with self._lock:
                    self._warming -= 1

        try:
            submit(job)
        except RuntimeError:  # the pool is shut down: the mount is closing
            with self._lock:
                self._warming -= 1

    def _small(self, resources: Dict[str, List[Any]]) -> bool:
        """May the files table of a session with these resources be asked for whatever scan
        is walked into (``_worth_listing_all`` for any of them)?"""
        total = _total_files(resources)
        return total is not None and total <= self.files_max

    # ------------------------------------------------------------------ files
    def scan_files(
        self,
        exp: PathParts,
        exp_uri: str,
        scan_id: str,
        resource_uri: str,
        fallback: Callable[[], Any],
    ) -> Any:
        """The files (``FileEntry`` list) of one scan resource, from the experiment's
        ``scans/ALL/files`` when that table is worth asking for (module docstring);
        ``fallback()`` (the resource's own listing) otherwise."""
        rid = unquote(resource_uri.rstrip("/").rsplit("/", 1)[-1])
        table = self._cache.peek(exp + ("files",))
        if table is None:
            resources = self._cache.peek(exp + ("resources",))
            if not self._worth_listing_all(resources, scan_id, rid):
                return self._fallback(fallback)
            try:
                table = self._cache.get_or_load(
                    exp + ("files",), lambda: self._files_table(exp_uri), timeout=_join_timeout()
                )
            except Exception as exc:  # noqa: BLE001 - the directory's own request decides
                log.debug("files of %s in one request failed (%s): per resource", exp_uri, exc)
                return self._fallback(fallback)
        entries = table.get((scan_id, rid)) if table is not None else None
        if entries is None:
            # not named by the table: a resource made since, or one whose rows we could not
            # place; its own listing is the answer
            return self._fallback(fallback)
        self._count("files_from_bundle")
        return list(entries)

    def _worth_listing_all(
        self, resources: Optional[Dict[str, List[Any]]], scan_id: str, rid: str
    ) -> bool:
        if resources is None:
            return False  # no walk seen: a single resource is listed alone
        total = _total_files(resources)
        mine = next((r.file_count for r in resources.get(scan_id, ()) if r.id == rid), None)
        if total is None or mine is None:
            return False
        return total <= max(self.files_max, 2 * mine)

    def _files_table(self, exp_uri: str) -> Dict[Tuple[str, str], List[Any]]:
        """(scan ID, resource id) -> its rows.  A row whose URI does not name both makes the
        whole table useless (``{}``: every resource then lists itself)."""
        table: Dict[Tuple[str, str], List[Any]] = {}
        for entry in self.client.list_files(f"{exp_uri.rstrip('/')}/scans/ALL"):
            m = _SCAN_FILE.search(entry.uri)
            if m is None:
                return {}
            table.setdefault((unquote(m.group(1)), unquote(m.group(2))), []).append(entry)
        return table

    # ------------------------------------------------------------------ invalidation
    def invalidated(self, parts: PathParts) -> None:
        """A local change at ``parts`` (relative to the layout): forget the bundles of the
        experiment it is in, or of every experiment below it."""
        self._cache.invalidate_prefix(tuple(parts[:5]))

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def _fallback(self, fallback: Callable[[], Any]) -> Any:
        self._count("fallbacks")
        return fallback()

    def _count(self, what: str) -> None:
        with self._lock:
            self._stats[what] += 1


def _total_files(resources: Dict[str, List[Any]]) -> Optional[int]:
    """Files in all of a session's scan resources; None when a count is missing (stats not
    computed: the size of the files table is unknown)."""
    total = 0
    for rs in resources.values():
        for r in rs:
            if getattr(r, "file_count", None) is None:
                return None
            total += r.file_count
    return total


def _join_timeout() -> Optional[float]:
    """How long a call may wait for a table another thread is loading: what is left of its
    filesystem call's deadline (``xnatfs.deadline``).  The thread loading it may have started
    its request later in its own call, or outside any call (walk-ahead, a background refresh)
    with a whole client deadline of its own; waiting for it without a bound held a ``stat``
    past ``--timeout`` (issue 17 §1).  At the deadline the caller gets ``TimeoutError`` and
    takes the directory's own request (whose client deadline is then spent: ETIMEDOUT).
    Outside a call (None) the wait is bounded by the loader's own request."""
    end = deadline.current()
    return None if end is None else max(0.0, end - time.monotonic())
