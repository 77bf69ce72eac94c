"""Walk-ahead: parallel listing loads while somebody walks the tree."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import cachetools

from xnatfs.view.layout import Fixed, Loaded, View
from xnatfs.view.node import NodeInfo
from xnatfs.view.paths import PathParts

log = logging.getLogger(__name__)

#: a folder read less than this many seconds after its parent and grandparent means a walk
WALK_WINDOW = 10.0
#: most listings queued ahead of a walker at once
WALK_QUEUE = 512


class WalkAhead:
    """When the two folders above were read just before, somebody is walking the tree (find,
    cp -r, du, rsync): the listings one level down are then loaded in the background,
    ``threads`` at a time, instead of one after another as the walker reaches them.  Each is
    still one request per directory.  Folders with ``Fixed`` children are looked through: their
    children's listings are the requests."""

    #: opens are not this policy's signal (``on_open`` does nothing)
    on_cached_opens = False

    def __init__(
        self, threads: int, *, window: float = WALK_WINDOW, queue: int = WALK_QUEUE
    ) -> None:
        self.threads = threads
        self.window = window
        self.queue = queue
        #: guards everything below (short critical sections; never held calling the engine)
        self._lock = threading.Lock()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending = 0
        #: folder -> when it was last read (to recognise a walk); bounded
        self._recent: cachetools.LRUCache = cachetools.LRUCache(maxsize=4096)

    def on_readdir(self, view: View, parts: PathParts, children: List[NodeInfo]) -> None:
        now = time.monotonic()
        with self._lock:
            recent = self._recent
            walking = len(parts) >= 2 and all(
                now - recent.get(parts[:-i], -1e9) < self.window for i in (1, 2)
            )
            recent[parts] = now
        if walking:
            self._walk_ahead(view, parts, children)

    def on_open(self, view: View, parts: PathParts, node: NodeInfo) -> bool:
        return False

    def _walk_ahead(self, view: View, parts: PathParts, children: List[NodeInfo]) -> None:
        jobs: List[Tuple[PathParts, NodeInfo, Loaded]] = []

        def add(job_parts: PathParts, node: NodeInfo) -> None:
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
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="xnatfs-walk")
            for job_parts, node, how in jobs:
                if self._pending >= self.queue or view.meta.peek(how.key) is not None:
                    continue
                self._pending += 1
                self._pool.submit(self._load, view, job_parts, node)

    def _load(self, view: View, parts: PathParts, node: NodeInfo) -> None:
        try:
            view.listing(parts, node)
        except Exception as exc:  # noqa: BLE001 - a guess that failed; the walker will ask
            log.debug("walk-ahead /%s: %s", "/".join(parts), exc)
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        """Drop queued loads (running ones finish on their own)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
