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

One content version at a time: an open of another version than opens of the path still open
(the file changed on XNAT while a program reads the old one) is served with ``direct_io`` and
keeps the pages.  With one page cache per path, the pages either open filled would reach the
other, and both would read a mix of the two versions to a successful end; this way the new
open reads its own handle only, and the old open reads pages of its own version (found with
a reviewer's reproducer, ``tests/reliability/test_cache_integrity.py``).  Only such an open
pays: no page cache for it, and no shared ``mmap`` (a ``direct_io`` file refuses it before
libfuse 3.16's ``FUSE_DIRECT_IO_ALLOW_MMAP``).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Dict, Hashable, Optional, Tuple

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
        # _lock protects _paths and _open
        self._paths: "collections.OrderedDict[str, _Pages]" = collections.OrderedDict()
        #: path -> content version -> how many opens through the page cache are still open
        #: (bounded by the open files: a path goes when its last such open is released)
        self._open: Dict[str, Dict[Hashable, int]] = {}

    def opened(
        self, path: str, version: Hashable, verified: bool, taints: int
    ) -> Tuple[bool, bool]:
        """(keep_cache, direct_io) for an open of ``path`` (content ``version``); unless
        direct_io, the caller reports its release with :meth:`closed`."""
        with self._lock:
            counts = self._open.get(path)
            if counts is None:
                self._open[path] = {version: 1}
            elif len(counts) > 1 or version not in counts:
                return True, True  # another version is being read: keep its pages, read apart
            else:
                counts[version] += 1
            return self._keep_locked(path, version, verified, taints), False

    def closed(self, path: str, version: Hashable) -> None:
        """An open that :meth:`opened` served through the page cache was released."""
        with self._lock:
            counts = self._open.get(path, {})
            left = counts.get(version, 0) - 1
            if left > 0:
                counts[version] = left
                return
            counts.pop(version, None)
            if not counts:
                self._open.pop(path, None)

    def keep_cache(self, path: str, version: Hashable, verified: bool, taints: int) -> bool:
        """May this open of ``path`` (content ``version``) keep the pages of earlier opens?
        ``verified``: served from a verified cache entry; ``taints``: the content cache's
        count now."""
        with self._lock:
            return self._keep_locked(path, version, verified, taints)

    def _keep_locked(self, path: str, version: Hashable, verified: bool, taints: int) -> bool:
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
