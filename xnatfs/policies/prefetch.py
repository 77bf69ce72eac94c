"""Prefetch: download the next files of a folder when one is opened."""

from __future__ import annotations

import threading
from typing import List

import cachetools

from xnatfs.view.layout import View
from xnatfs.view.node import NodeInfo
from xnatfs.view.paths import PathParts


class Prefetch:
    """Queue downloads of the next ``window`` files of the folder (by name, the order of
    ``cp -r``, ``ls`` and DICOM readers), so per-request latency overlaps instead of adding up.
    A sliding window: each open moves it, and the queue stays short enough that a file
    somebody actually opens is never stuck behind a long list of guesses."""

    #: the next files of a folder read from the cache are paged in from disk ahead of the
    #: reader (``ContentCache.prefetch``: WILLNEED): worth asking at a hit too
    on_cached_opens = True

    def __init__(self, window: int) -> None:
        self.window = window
        #: guards _queued (never held while calling the engine or the cache)
        self._lock = threading.Lock()
        #: folder -> (the listing its window was queued from, end of that window); bounded
        self._queued: cachetools.LRUCache = cachetools.LRUCache(maxsize=1024)

    def on_readdir(self, view: View, parts: PathParts, children: List[NodeInfo]) -> None:
        return None

    def on_open(self, view: View, parts: PathParts, node: NodeInfo) -> bool:
        where = parts[:-1]
        if self._still_ahead(where, node.name):
            return True
        folder = view.node(where)
        listing = view.listing(where, folder)
        names = listing.sorted_files()
        start = listing.position(node.name) + 1
        if start == 0:
            return False
        end = min(len(names), start + self.window)
        with self._lock:
            # the window already queued for this folder listing: only extend it, unless the
            # reader went back (a second pass) or jumped past it (``_still_ahead`` answered
            # the opens while more than half of it was left: a reader going through a folder
            # asks the cache once per half window; benchmarks/RESULTS.md, "Prefetch in half
            # windows")
            done = self._queued.get(where, (None, 0))
            if done[0] is listing and done[1] - self.window <= start <= done[1]:
                start = done[1]
            if start >= end:
                return True
            self._queued[where] = (listing, end)
        keys = (view.content_key(listing.children[name]) for name in names[start:end])
        # the cached ones are paged in only once the kernel asks this open for bytes
        view.content.prefetch((key for key in keys if key is not None), view.content_key(node))
        return True

    def _still_ahead(self, where: PathParts, name: str) -> bool:
        """More than half of the window last queued for the folder ``where`` is still ahead
        of ``name``: nothing to ask.  Read from the listing that window was queued from,
        without asking the engine for the folder's node and current listing (what the opens
        between two refills save); a listing loaded anew since is taken up at the next refill.
        """
        with self._lock:
            done = self._queued.get(where)
        if done is None:
            return False
        listing, end = done
        start = listing.position(name) + 1
        return 0 < start and end - self.window <= start and end - start > self.window // 2

    def close(self) -> None:
        return None
