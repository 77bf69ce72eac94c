"""Walk-ahead: parallel listing loads while somebody walks the tree."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, List, Optional, Tuple

import cachetools

from xnatfs.view.layout import Fixed, Loaded, View
from xnatfs.view.node import NodeInfo
from xnatfs.view.paths import PathParts

log = logging.getLogger(__name__)

#: a folder read less than this many seconds after its parent and grandparent means a walk
WALK_WINDOW = 10.0
#: most listings queued ahead of a walker at once
WALK_QUEUE = 512
#: most levels below a folder that its other children are loaded to (the walker's own depth
#: into the first one decides, up to this)
WALK_DEPTH = 8
#: ancestors of a folder read whose "deepest level reached below" is kept up to date
_ANCESTORS = 8
#: seconds a folder queued ahead (or found loaded) and a folder whose children were queued
#: are not looked at again: the default listing TTL (a warm walk then builds no descriptors:
#: they were most of its cost, benchmarks/RESULTS.md "Walk-ahead")
SEEN_TTL = 60.0


class WalkAhead:
    """When the two folders above were read just before, somebody is walking the tree (find,
    cp -r, du, rsync): the listings below are then loaded in the background, ``threads`` at a
    time, instead of one after another as the walker reaches them.  Each is still one request
    per directory.  Folders with ``Fixed`` children are looked through: their children's
    listings are the requests.

    How far and in what order.  Below the folder just read, one level (a walker here may go
    down next).  And when the walker moves on to a second child of a folder, that folder's
    other children are loaded as deep as the walker went into the first one (``find``: the
    whole subtree of every next subject; a loop of ``ls S*/experiments``: one level; browsing
    into one child crawls nothing); FIFO had the workers busy with the last subjects while the
    walker waited, one level after another, on the first.  The queue is served in path
    order, not in the order queued: walkers go depth first in name order, so the folder the
    walker reaches next is the smallest path queued (benchmarks/RESULTS.md "Walk-ahead").
    Bounded: at most ``queue`` listings wait; the rest are left to the walker."""

    #: opens are not this policy's signal (``on_open`` does nothing)
    on_cached_opens = False

    def __init__(
        self,
        threads: int,
        *,
        window: float = WALK_WINDOW,
        queue: int = WALK_QUEUE,
        depth: Optional[int] = None,
    ) -> None:
        self.threads = threads
        self.window = window
        self.queue = queue
        self.depth = WALK_DEPTH if depth is None else depth
        #: guards everything below (short critical sections; never held calling the engine)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        #: (path, tie-breaker, view, node, depth left): the smallest path is loaded first
        self._heap: List[Tuple[PathParts, int, Any, NodeInfo, int]] = []
        self._seq = itertools.count()
        self._workers: List[threading.Thread] = []
        #: queued or loading
        self._pending = 0
        self._closed = False
        #: folder -> when it was last read (to recognise a walk); bounded
        self._recent: cachetools.LRUCache = cachetools.LRUCache(maxsize=4096)
        #: folder -> levels below it wanted when it was queued ahead (or found loaded) within
        #: ``SEEN_TTL``: a folder reached from its parent and again by the walker is looked
        #: at once unless more levels are wanted now (building a folder's listing descriptor
        #: is most of what a warm walk costs here); bounded
        self._queued: cachetools.TTLCache = cachetools.TTLCache(maxsize=32768, ttl=SEEN_TTL)
        #: folder -> when its other children were queued (once per ``SEEN_TTL``); bounded
        self._expanded: cachetools.LRUCache = cachetools.LRUCache(maxsize=4096)
        #: folder -> (first child read below it, deepest level the walker reached below it,
        #: when that first child was read); older than ``SEEN_TTL``: a new walk; bounded
        self._below: cachetools.LRUCache = cachetools.LRUCache(maxsize=16384)

    def on_readdir(self, view: View, parts: PathParts, children: List[NodeInfo]) -> None:
        now = time.monotonic()
        with self._lock:
            recent = self._recent
            walking = len(parts) >= 2 and all(
                now - recent.get(parts[:-i], -1e9) < self.window for i in (1, 2)
            )
            recent[parts] = now
            expand = self._moved_on(parts, now)
        if walking:
            self._walk_ahead(view, parts, children, 1)
        if expand is not None:
            top, depth = expand
            try:
                folders = list(view.listing(top, view.node(top)).children.values())
            except Exception as exc:  # noqa: BLE001 - a guess; the walker reads it anyway
                log.debug("walk-ahead /%s: %s", "/".join(top), exc)
                return
            self._walk_ahead(view, top, folders, depth)

    def _moved_on(self, parts: PathParts, now: float) -> Optional[Tuple[PathParts, int]]:
        """Note the read of ``parts`` below each of its ancestors; the parent and how deep to
        load its children when this is the second child of it the walker reads (once per
        ``SEEN_TTL``).  Caller holds ``_lock``."""
        below = self._below
        for up in range(1, min(_ANCESTORS, len(parts)) + 1):
            ancestor = parts[:-up]
            got = below.get(ancestor)
            if got is None or now - got[2] > SEEN_TTL:
                below[ancestor] = (parts[len(ancestor)], up, now)
            elif got[1] < up:  # (mostly a read: a warm walk pays little here)
                below[ancestor] = (got[0], up, got[2])
        if not parts:
            return None
        top = parts[:-1]
        first, deepest, _since = below[top]
        if first == parts[-1] or now - self._expanded.get(top, -1e9) < SEEN_TTL:
            return None
        self._expanded[top] = now
        return top, min(deepest, self.depth)

    def on_open(self, view: View, parts: PathParts, node: NodeInfo) -> bool:
        return False

    def _walk_ahead(
        self, view: View, parts: PathParts, children: List[NodeInfo], depth: int
    ) -> None:
        """Queue the listings of ``children`` (folders below ``parts``), each to queue its own
        children's while ``depth`` levels are left."""
        if depth < 1 or self.threads < 1:
            return
        jobs: List[Tuple[PathParts, NodeInfo, Loaded]] = []

        def add(job_parts: PathParts, node: NodeInfo) -> None:
            with self._lock:
                if self._queued.get(job_parts, -1) >= depth - 1:
                    return  # seen in this walk, as deep: no descriptor to build
            how = view.descriptor(job_parts, node)
            if isinstance(how, Loaded):
                jobs.append((job_parts, node, how))
            elif isinstance(how, Fixed) and len(job_parts) == len(parts) + 1:
                # objects with fixed children: their children's listings are the requests
                for name, grandchild in how.listing.children.items():
                    if grandchild.is_dir and not grandchild.is_local:
                        add(job_parts + (name,), grandchild)

        for child in children:
            if child.is_dir and not child.is_local:
                add(parts + (child.name,), child)
        with self._lock:
            if self._closed:
                return
            for job_parts, node, how in jobs:
                if self._pending >= self.queue:
                    break
                if self._queued.get(job_parts, -1) >= depth - 1:
                    continue  # queued in this walk, as deep or deeper
                self._queued[job_parts] = depth - 1
                if depth == 1 and view.meta.peek(how.key) is not None:
                    continue  # loaded, and nothing below it wanted (noted: skipped sooner)
                # (a loaded one with levels wanted below costs its worker a cache hit)
                self._pending += 1
                heapq.heappush(self._heap, (job_parts, next(self._seq), view, node, depth - 1))
            # one worker per queued listing, up to ``threads`` (started here, named; they end
            # at close)
            while len(self._workers) < min(self.threads, self._pending):
                worker = threading.Thread(
                    target=self._work, name=f"xnatfs-walk-{len(self._workers)}", daemon=True
                )
                self._workers.append(worker)
                worker.start()
            self._wake.notify(len(jobs))

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._heap and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                parts, _seq, view, node, depth = heapq.heappop(self._heap)
            self._load(view, parts, node, depth)

    def _load(self, view: View, parts: PathParts, node: NodeInfo, depth: int) -> None:
        try:
            listing = view.listing(parts, node)
        except Exception as exc:  # noqa: BLE001 - a guess that failed; the walker will ask
            log.debug("walk-ahead /%s: %s", "/".join(parts), exc)
            listing = None
        finally:
            with self._lock:
                self._pending -= 1
        if listing is not None and depth > 0:
            self._walk_ahead(view, parts, list(listing.children.values()), depth)

    def close(self) -> None:
        """Drop queued loads (running ones finish on their own; the workers then end)."""
        with self._lock:
            self._closed = True
            self._pending -= len(self._heap)
            self._heap.clear()
            self._wake.notify_all()
