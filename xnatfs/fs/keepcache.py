"""Which opens may keep the kernel's page cache of a file (FUSE ``keep_cache``).

With ``keep_cache=1`` the kernel serves a new open from the pages earlier opens read; with 0 it
drops that inode's pages at open (``FOPEN_KEEP_CACHE`` unset: the kernel invalidates the
mapping in ``fuse_finish_open``; docs/FUSE.md §2).  Pages read through an open that was not
served from a verified cache entry — a download being followed, a large cached file still
hashed while read, a streamed file — may hold bytes that later failed their check: that open
ends in EIO, but its pages stay.  Keeping them for the next open would hand those wrong bytes
out with success (never a wrong byte, issue 17 §5).  (An open of a download whose verdict is
in, the file still being stored, is verified: ``ContentHandle.verified``.)

So an unverified open always drops the path's pages and puts the path on probation, noting
the content cache's ``taints`` count.  The next open served from the verified cache entry
keeps the pages read since (the warm path: no extra pass) only if that count has not moved,
i.e. no download attempt was thrown away, no download failed and no cached file failed its
MD5 anywhere meanwhile: then every page read since the drop holds verified bytes.  Else it
drops them once more.  Per path, because the kernel's page cache is per inode and libfuse's
inodes are paths; per content version, so a changed file never inherits the old one's pages.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Hashable, Optional

#: paths remembered; one forgotten costs one page-cache drop at its next open, never a kept page
TRUSTED_MAX = 65536


@dataclass(frozen=True)
class _Pages:
    """What the kernel holds of one path since its pages were last dropped."""

    version: Hashable  # the content version read since the drop
    taints: Optional[int]  # None: only verified opens since; else the count at the drop


class PageCacheTrust:
    """path -> what its page cache holds; bounded LRU, thread-safe."""

    def __init__(self, limit: int = TRUSTED_MAX) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        # _lock protects _paths
        self._paths: "collections.OrderedDict[str, _Pages]" = collections.OrderedDict()

    def keep_cache(self, path: str, version: Hashable, verified: bool, taints: int) -> bool:
        """May this open of ``path`` (content ``version``) keep the pages of earlier opens?
        ``verified``: served from a verified cache entry; ``taints``: the content cache's
        count now."""
        with self._lock:
            pages = self._paths.get(path)
            if not verified:
                # drop now; pages read from here on are suspect until the count says otherwise
                # (earlier suspects still open keep the older count)
                start = taints
                if pages is not None and pages.taints is not None:
                    start = min(start, pages.taints)
                self._remember(path, _Pages(version, start))
                return False
            keep = (
                pages is not None
                and pages.version == version
                and (pages.taints is None or pages.taints == taints)
            )
            self._remember(path, _Pages(version, None))
            return keep

    def _remember(self, path: str, pages: _Pages) -> None:
        self._paths[path] = pages
        self._paths.move_to_end(path)
        if len(self._paths) > self._limit:
            self._paths.popitem(last=False)
