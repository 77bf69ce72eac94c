"""The running filesystem's parts, built and started in one fixed order (S3QL ``mount.py``).

``Runtime`` owns the client, the two caches and the tree.  The constructor only records what to
build: threads and sockets start in :meth:`start`, which ``cli.run_foreground`` calls before it
hands the operations to libfuse (the mount runs in the foreground of a process of its own; a
daemon is a new process, never a fork of this one, so nothing started here is lost), and
:meth:`close` stops them in reverse order.  A failed mount still calls ``close``.  Tests use a
``Runtime`` without any mount.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import logging
import math
import os
import sqlite3
import threading
import time
from typing import Any, Dict, List, Mapping, Optional

from xnatfs import __version__, proxy
from xnatfs.bids.layout import MOUNT_NAME, BidsLayout
from xnatfs.cache.content import ContentCache, archive_object_uri
from xnatfs.cache.download import AttemptSink
from xnatfs.cache.meta import MetaCache
from xnatfs.cache.times import TimesIndex
from xnatfs.layouts.xnat.layout import uncached_uri
from xnatfs.options import Options
from xnatfs.private import open_cache_lock, private_dir
from xnatfs.tree.tree import Tree
from xnatfs.tree.writes import UploadsInUse, Writer
from xnatfs.uploads.journal import journal_dir, read_entries, uploads_dir
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.client import ClientOptions, XnatClient

log = logging.getLogger(__name__)


class Runtime:
    """Client + caches + tree for one mount.  ``start()`` once, ``close()`` once."""

    def __init__(self, options: Options, credentials: Credentials) -> None:
        self.options = options
        self._credentials = credentials
        self.client: Optional[XnatClient] = None
        self.meta: Optional[MetaCache] = None
        self.content: Optional[ContentCache] = None
        self.tree: Optional[Tree] = None
        #: the BIDS view mounted at ``MNT/.bids`` (issue 10)
        self.bids: Optional[BidsLayout] = None
        self.times: Optional[TimesIndex] = None
        #: the write side; None on a read-only mount
        self.writer: Optional[Writer] = None
        #: why writes answer EROFS when there is no writer (``fs/ops.py``)
        self.writes_off = "mounted read-only"
        self.started_at = 0.0
        self._errors_lock = threading.Lock()
        self._lock_file: Any = None
        #: errno name -> count of failed filesystem calls (for ``.xnatfs/stats``)
        self.errors: Dict[str, int] = {}
        #: FUSE writes served (requests, bytes); under _errors_lock
        self.writes: Dict[str, int] = {"requests": 0, "bytes": 0}
        #: FUSE requests by kind, for ``stats`` (what a walk cost in round trips)
        self.fuse_calls: Dict[str, int] = {"getattr": 0, "readdir": 0}
        #: ``fs.noopen.ImplicitHandles`` once the kernel answers opens alone (set by the FUSE
        #: adapter at init), for the stats
        self.zero_message_opens: Optional[Any] = None

    def start(self) -> None:
        """Start the parts in dependency order: cache lock, client, caches, tree, layouts,
        then (unless read-only) the writer."""
        o = self.options
        self.started_at = time.time()
        private_dir(o.cache_dir)
        # a shared lock for as long as the mount lives: ``xnatfs cache clear`` takes it
        # exclusively and so refuses while any mount uses this cache
        self._lock_file = open_cache_lock(o.cache_dir)
        fcntl.flock(self._lock_file, fcntl.LOCK_SH)
        self.client = XnatClient(
            o.url,
            self._credentials,
            ClientOptions(
                pool_size=max(o.max_threads, o.max_downloads) + 2,
                connect_timeout=o.connect_timeout,
                read_timeout=o.read_timeout,
                retries=o.retries,
                verify=o.verify,
                max_requests=o.max_requests,
                # the README's "no call waits longer than --timeout": the client's whole-call bound
                deadline=o.fs_timeout,
            ),
        )
        self.client.start()
        self.meta = MetaCache(ttl=o.listing_ttl)
        self.content = ContentCache(
            os.path.join(o.cache_dir, "content"),
            size_limit=o.cache_size,
            fetch=self._fetch,
            fetch_archive=self._fetch_archive,
            max_downloads=o.max_downloads,
            # a paused stream is dropped after the longest silence we allow the server
            stream_idle=o.read_timeout,
            stop_transfers=self.client.stop_transfers,
        )
        self.content.start()
        self.tree = Tree(
            self.client,
            self.meta,
            self.content,
            fs_timeout=o.fs_timeout,
            stats_fn=self.stats,
            prefetch=o.prefetch,
            walk_ahead=o.walk_ahead,
            bulk_min=o.bulk_zip,
            experiment_listings=not o.per_directory_listings,
        )
        self.times = TimesIndex(os.path.join(o.cache_dir, "times.db"))
        self.times.start()
        self.tree.times = self.times
        self.tree.catalog_times = o.catalog_times
        self._mount_bids()
        if not o.read_only:
            self._start_writer()

    def _mount_bids(self) -> None:
        """The BIDS view (``MNT/.bids``, docs/BIDS.md) over the started client and cache."""
        o = self.options
        assert self.tree is not None
        self.bids = BidsLayout(
            self.client,
            self.content,
            private_dir(os.path.join(o.cache_dir, "bids")),
            cache_size=o.cache_size,
            config_path=o.bids_config or "",
            max_conversions=o.bids_conversions,
            conversion_timeout=o.bids_conversion_timeout,
        )
        self.tree.mount(MOUNT_NAME, self.bids)

    def _start_writer(self) -> None:
        """The write side (journal, upload workers) over the started tree and client."""
        o = self.options
        assert self.tree is not None and self.client is not None
        self.writer = Writer(
            self.tree,
            self.client,
            private_dir(uploads_dir(o.cache_dir)),
            allow_delete=o.allow_delete,
            experiment_type=o.experiment_type,
            scan_type=o.scan_type,
            fs_timeout=o.fs_timeout,
            # a new file closed empty (XNAT cannot store it) stays shown for the mount's life,
            # not only while the kernel trusts its name (entry_timeout = listing_ttl): a
            # `touch stamp` that make checks minutes later was gone (README)
            empty_ttl=math.inf,
            upload_workers=o.upload_workers,
            upload_backoff=o.upload_backoff,
            upload_backoff_max=o.upload_backoff_max,
        )
        try:
            self.writer.start()
        except UploadsInUse as exc:
            # reads share the cache; writes would share the journal with the other mount
            self.writer = None
            self.writes_off = f"writes are off in this mount: {exc.strerror}"
            log.warning("%s (%s)", self.writes_off, exc.filename)
            return
        # uploads that failed at once while XNAT was down go as soon as it answers again
        self.client.on_server_back(self.writer.uploader.retry_soon)
        self.tree.attach_overlay(self.writer)

    def _fetch(self, uri: str, sink: Any) -> None:
        """The content cache's way to the network for files (it never sees the client).  A
        cache proxy between the mount and XNAT (``xnatfs cache-proxy``) is told what the sink
        asks (``AttemptSink``: a refetch past its entry, or a stream past its cache) and its
        answers are reported to the sink, which then holds back bytes from the proxy's disk
        until their verdict.  Without a proxy, only a stream's URL differs: XNAT reads neither
        the digest parameter nor the proxy's header."""
        assert self.client is not None
        if not isinstance(sink, AttemptSink):
            self.client.download(uri, sink)
            return

        def on_headers(headers: Mapping[str, str]) -> None:
            stored = proxy.stored_answer(headers)
            if stored is not None:
                sink.answered(stored)

        self.client.download(
            uncached_uri(uri) if sink.uncached else uri,
            sink,
            headers={proxy.REFRESH_HEADER: "1"} if sink.fresh else None,
            on_headers=on_headers,
        )

    def _fetch_archive(self, uri: str, sink: Any) -> None:
        """... and for archives (keys of kind ARCHIVE, bulk zips): ``uri`` is one that
        ``cache.content.archive_uri`` made."""
        assert self.client is not None
        self.client.download_archive(archive_object_uri(uri), sink, format="zip")

    def note_error(self, name: str) -> None:
        with self._errors_lock:
            self.errors[name] = self.errors.get(name, 0) + 1

    def note_write(self, nbytes: int) -> None:
        """One FUSE write of ``nbytes`` (for ``stats``: how many requests a copy cost)."""
        with self._errors_lock:
            self.writes["requests"] += 1
            self.writes["bytes"] += nbytes

    def note_fuse(self, op: str) -> None:
        """One FUSE request of kind ``op`` (``getattr``: the kernel's LOOKUP or GETATTR;
        ``readdir``: one chunk of a listing)."""
        with self._errors_lock:
            self.fuse_calls[op] = self.fuse_calls.get(op, 0) + 1

    def stats(self) -> Dict[str, Any]:
        """What ``MNT/.xnatfs/stats`` shows."""
        with self._errors_lock:
            errors = dict(self.errors)
            writes = dict(self.writes)
            calls = dict(self.fuse_calls)
        return {
            "version": __version__,
            "url": self.options.url,
            "cache_dir": str(self.options.cache_dir),  # for ``xnatfs cache usage`` (issue 16 §7)
            "uptime_s": round(time.time() - self.started_at, 3),
            "requests": _plain(self.client.stats) if self.client else {},
            "limiter": _plain(self.client.limiter) if self.client else {},
            "server": _plain(self.client.server) if self.client else {},
            "listing_cache": _plain(self.meta.stats) if self.meta else {},
            "content_cache": _plain(self.content.stats) if self.content else {},
            "errors": errors,
            "fuse_writes": writes,
            "fuse_calls": calls,
            "uploads": self.writer.status() if self.writer else [],
            "bids": self.bids.stats()["conversions"] if self.bids else {},
            "gc": {"threshold": list(gc.get_threshold()), "collections": _collections()},
            "zero_message_opens": (
                self.zero_message_opens.snapshot() if self.zero_message_opens else None
            ),
        }

    def close(self) -> None:
        """Stop in reverse order; each part gets its own try so one failure stops nothing."""
        for name, part in (
            ("writer", self.writer),
            ("tree", self.tree),
            ("content cache", self.content),
            ("times index", self.times),
            ("client", self.client),
        ):
            if part is None:
                continue
            try:
                part.close()
            except Exception as exc:  # noqa: BLE001 - shutdown must go on
                log.warning("closing the %s: %s", name, exc)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


#: below this many free bytes a start that failed writing is put down to a full disk
_FULL_BELOW = 1 << 20


def full_disk_at_start(cache_dir: "str | os.PathLike[str]", error: BaseException) -> Optional[str]:
    """The one line a mount that could not start on a full cache disk answers, or None when
    ``error`` is something else.  SQLite says "disk I/O error" when it cannot make its
    shared-memory file on a full disk, so the free space decides, with the errno
    (ENOSPC, EDQUOT: a quota is not in ``statvfs``).  The line names the uploads the
    journal keeps for the next mount on this cache: they are not lost, and another
    ``--cache-dir`` would not send them.  Before, the mount failed with a traceback ending
    in "sqlite3.OperationalError: disk I/O error"."""
    if not isinstance(error, (OSError, sqlite3.Error)):
        return None  # a refused login, a bad option...: not the disk's doing
    code = getattr(error, "errno", None)
    try:
        st = os.statvfs(cache_dir)
        free = st.f_bavail * st.f_frsize
    except OSError:
        return None
    if code not in (errno.ENOSPC, errno.EDQUOT) and free >= _FULL_BELOW:
        return None
    try:
        waiting = len(read_entries(journal_dir(uploads_dir(cache_dir))))
    except OSError:
        waiting = 0
    kept = (
        f"; {waiting} upload(s) not on XNAT yet are kept in its journal and go at the next "
        "mount of this --cache-dir"
        if waiting
        else ""
    )
    return (
        f"cache folder {os.fspath(cache_dir)}: its disk is full ({free} bytes free: {error})"
        f"{kept}. Free space on that disk and mount again"
    )


def _collections() -> List[int]:
    """Python's GC collections so far, youngest generation first (``gc`` in the stats)."""
    return [int(generation.get("collections", 0)) for generation in gc.get_stats()]


def _plain(value: Any) -> Any:
    """Stats objects -> JSON-able dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {k: _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return value
