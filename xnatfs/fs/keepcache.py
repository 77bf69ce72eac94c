"""Which opens may keep the kernel's page cache of a file (FUSE ``keep_cache``).

With ``keep_cache=1`` the kernel serves a new open from the pages earlier opens read; with 0 it
drops that inode's pages at open (``FOPEN_KEEP_CACHE`` unset: the kernel invalidates the
mapping in ``fuse_finish_open``; fuse-notes.md §2).  Pages read through an open that was not
served from a verified cache entry — a download being followed, a refetched download, a large
cached file still hashed while read — may hold bytes that later failed their check: that open
ends in EIO, but its pages stay.  Keeping them for the next open would hand those wrong bytes
out with success (never a wrong byte, issue 17 §5).

So a file's pages are trusted only from the first open served from its verified cache entry
(that open itself still drops the pages, with ``keep_cache=0``) until an open that is not
verified.  Per path, because the kernel's page cache is per inode and libfuse's inodes are
paths; per content version, so a changed file never inherits the pages of the old one.
"""
from __future__ import annotations

import collections
import threading
from typing import Hashable, Optional

#: paths remembered as trusted; one forgotten costs one page-cache drop at its next open
TRUSTED_MAX = 65536


class PageCacheTrust:
    """path -> the content version whose pages the kernel may keep; bounded LRU, thread-safe."""

    def __init__(self, limit: int = TRUSTED_MAX) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        # _lock protects _trusted
        self._trusted: "collections.OrderedDict[str, Hashable]" = collections.OrderedDict()

    def keep_cache(self, path: str, verified: Optional[Hashable]) -> bool:
        """May this open of ``path`` keep the pages of earlier opens?  ``verified`` is the
        content version when the open is served from a verified cache entry, else None."""
        with self._lock:
            if verified is None:
                self._trusted.pop(path, None)   # its reads may add pages that fail their check
                return False
            if self._trusted.get(path) == verified:
                self._trusted.move_to_end(path)
                return True
            self._trusted[path] = verified      # this open drops the old pages: later ones
            if len(self._trusted) > self._limit:  # may keep what it and they read
                self._trusted.popitem(last=False)
            return False
