"""Bulk zip: the first open in a XNAT resource with many uncached files fetches it as one zip."""

from __future__ import annotations

import logging
import re
import resource
import threading
from typing import List, Optional

import cachetools

from xnatfs.cache.content import ContentKey
from xnatfs.cache.key import archive_uri
from xnatfs.layouts.xnat.loaders import FileTree
from xnatfs.view.layout import Loaded, View
from xnatfs.view.node import NodeInfo
from xnatfs.view.paths import PathParts

log = logging.getLogger(__name__)

#: a bulk zip is used only for resources up to this size, and of small files on average
BULK_MAX_BYTES = 2 << 30
BULK_MAX_MEAN = 16 << 20
#: the part of a zip member's name below its resource's ``files/`` (§3.3 default structure:
#: ``{session}/scans/{id}-{type}/resources/{label}/files/{relpath}``)
_ZIP_MEMBER = re.compile(r"^(?:.*?/)?resources/[^/]+/files/(.+)$")


class BulkZip:
    """Fetch the resource holding an opened file as one zip (§3.3) the first time one of its
    files is opened, when many of its files are not cached: one request instead of one per
    file, which is what lets ``cp -r`` of a DICOM scan keep up with xnatpy's zip download.
    The zip's members are streamed into the cache as they arrive and a reader of any of them
    waits only for its own member (``ContentCache.bulk``).  ``on_open`` is True when the zip is
    on its way (per-file prefetching would fetch the same bytes twice).  Archive resources
    only: the prearchive has no zip download."""

    #: a hit says nothing about a zip: the first open of an uncached file decides
    on_cached_opens = False

    def __init__(self, min_files: int, *, ttl: float = 60.0) -> None:
        #: a resource with at least this many uncached files is fetched as one zip
        self.min_files = min_files
        #: guards _seen (never held while calling the engine or the cache)
        self._lock = threading.Lock()
        #: resource roots whose first open already decided for or against a zip
        self._seen: cachetools.TTLCache = cachetools.TTLCache(maxsize=4096, ttl=ttl)

    def on_readdir(self, view: View, parts: PathParts, children: List[NodeInfo]) -> None:
        return None

    def on_open(self, view: View, parts: PathParts, node: NodeInfo) -> bool:
        folder = view.node(parts[:-1])
        if folder.prearchive:
            return False
        how = view.descriptor(parts[:-1], folder)
        if not isinstance(how, Loaded):
            return False
        with self._lock:
            if how.key in self._seen:
                return False
            self._seen[how.key] = True
        tree = view.cached(how.key, how.load)
        if not isinstance(tree, FileTree):  # not a XNAT resource's files
            return False
        # each file's key once (the layout's checks and a lookup per call; 2,000 files of an
        # fMRI run asked three times each before)
        files = [
            (n, key)
            for listing in tree.folders.values()
            for n in listing.children.values()
            if not n.is_dir and (key := view.content_key(n)) is not None
        ]
        total = sum(n.size for n, _ in files)
        if (
            len(files) < self.min_files
            or total > BULK_MAX_BYTES
            or total > BULK_MAX_MEAN * len(files)
        ):
            return False
        by_path = {
            n.record.path: key for n, key in files if getattr(n.record, "path", None) is not None
        }

        def key_of(member: str) -> Optional[ContentKey]:
            m = _ZIP_MEMBER.match(member)
            return by_path.get(m.group(1)) if m else None

        try:
            started = view.content.bulk(
                archive_uri(folder.uri),
                [key for _, key in files],
                key_of,
                min_files=self.min_files,
                max_files=bulk_max_files(),
            )
        except RuntimeError:  # the cache is closing
            return False
        log.debug("/%s: %d file(s) coming in one zip", "/".join(how.key), started)
        return started > 0

    def close(self) -> None:
        return None


def bulk_max_files() -> int:
    """Files one bulk zip may bring: each holds an open partial file until it is cached, so
    stay well inside the open-files limit (the daemon raises it at start, ``cli``)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(0, min(4096, soft // 2 - 128))
