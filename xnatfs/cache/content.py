"""Content cache: whole files on disk, one download per file, readers served as bytes arrive.

Layout under ``directory`` (all directories mode 0700, files 0600)::

    index/            a diskcache.Cache: SQLite index + the cached files (LRU by size_limit)
        cache.db
        ab/cd/abcd....bin   one cached file, named by the sha256 of its ContentKey
    partial/          downloads in progress (same filesystem, so adoption is a rename)

A ``ContentKey`` is (uri, size, digest, mtime): a file changed on the server has another key, so
a stale copy is never served (rclone ``_checkObject``); old copies age out by LRU. The on-disk name
is the sha256 of the key (fsspec ``HashCacheMapper``), and the diskcache key is that same hex
string, so the index holds no URIs.

A finished download is *adopted*: ``_AdoptingDisk.store`` renames the partial file into
diskcache's file layout instead of copying it. The cache survives restarts; partial files left by
a crash are removed by ``start()``.

Eviction and open handles: a handle holds an fd, so an evicted (unlinked) file would stay readable
through it anyway (POSIX). On top of that, open handles *pin* their key, and eviction skips pinned
keys: after each insertion ``_Index.cull_unpinned`` deletes least-recently-used unpinned entries,
one at a time, until the index is back under ``size_limit``. Deleting an open file would free no
disk space until its last reader closes, so skipping it costs nothing and saves a re-download. If
only pinned entries are left, the cache stays over its limit until the next insertion after they
are closed. (We did not skip removals in ``Disk.remove``: the row would be gone and the file left
uncounted; and diskcache's ``touch`` changes the expiry, not the LRU time, so "touch pinned keys,
then cull" does not work.)

``size_limit`` is compared with diskcache's ``volume()``: the cached bytes plus the SQLite index
(tens of KiB).

This module must not import ``xnatfs.tree`` or ``xnatfs.xnat``: it gets ``fetch(uri, sink)``.
"""
from __future__ import annotations

import concurrent.futures
import errno
import functools
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set, Union

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN

from xnatfs.cache.download import Download, DownloadCancelled, Fetch, IntegrityError

log = logging.getLogger(__name__)

__all__ = [
    "ContentCache",
    "ContentHandle",
    "ContentKey",
    "DownloadCancelled",
    "IntegrityError",
]

_DIR_MODE = 0o700
#: How long ``close()`` waits for running downloads when no deadline is given.
_DEFAULT_CLOSE_SECONDS = 10.0


@dataclass(frozen=True)
class ContentKey:
    """Identity of one version of one remote file; any field change means another cache entry."""

    #: Server-relative file URI, as passed to ``fetch``.
    uri: str
    #: Size from the listing in bytes; None (or negative) if the listing did not say.
    size: Optional[int]
    #: MD5 hex digest from the listing (``digest``); "" if the server gave none.
    digest: str = ""
    #: Modification time from the listing (any JSON-able value), "" / None if unknown.
    mtime: Union[float, int, str, None] = None

    def hexname(self) -> str:
        """sha256 of the key: the on-disk name and the index key; stable across processes."""
        return self._hexname

    @functools.cached_property
    def _hexname(self) -> str:
        # computed once per key object: open, state and prefetch all ask for it
        blob = json.dumps([self.uri, self.size, self.digest, self.mtime], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# -- storage: diskcache with adoption -------------------------------------------------------------


@dataclass(frozen=True)
class _Adopt:
    """Value marker for ``index.set``: move this finished file into the store (no copy)."""

    path: str


class _AdoptingDisk(diskcache.Disk):
    """diskcache Disk that adopts finished downloads by ``os.rename``.

    Stored file names derive from the (hex) key, ``ab/cd/<hex>.bin``, so a cached file can be
    found by its key alone. Other value types keep diskcache's behaviour (not used by xnatfs).
    """

    def filename(self, key: Any = UNKNOWN, value: Any = UNKNOWN) -> tuple:
        if isinstance(key, str) and len(key) == 64:
            name = os.path.join(key[:2], key[2:4], key + ".bin")
            return name, os.path.join(self._directory, name)
        return super().filename(key, value)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple:
        if not isinstance(value, _Adopt):
            return super().store(value, read, key=key)
        filename, full_path = self.filename(key, value)
        # One level at a time: makedirs applies ``mode`` to the leaf only.
        parent = self._directory
        for part in os.path.dirname(filename).split(os.sep):
            parent = os.path.join(parent, part)
            try:
                os.mkdir(parent, _DIR_MODE)
            except FileExistsError:
                pass
        os.rename(value.path, full_path)
        return os.stat(full_path).st_size, MODE_BINARY, filename, None


class _Index(diskcache.Cache):
    """The diskcache index, with a cull that skips pinned keys and removes one entry at a time.

    diskcache's own culling removes up to ten least-recently-used entries per step (``cull_limit``
    rows in ``set``, ten per round in ``cull``), which for large files throws away far more than
    needed, possibly the file just stored, and it cannot spare files that are open. So the index is
    opened with ``cull_limit=0`` (``set`` never culls) and ``ContentCache`` calls
    ``cull_unpinned`` after each insertion. This is the one place that relies on diskcache
    internals (``_transact`` and the ``Cache`` table's ``key``/``access_time``/``filename``
    columns, stable through diskcache 5.x); ``test_content_cache.py`` covers it.
    """

    def cull_unpinned(self, pinned: Set[str]) -> List[str]:
        """Delete least-recently-used entries whose key is not in ``pinned`` until ``volume()`` is
        at most ``size_limit``; returns the deleted keys.

        A pinned file is open, so deleting it would free no space until its last reader closes;
        when only pinned entries are left the cache stays over its limit until they are unpinned.
        """
        removed: List[str] = []
        while self.volume() > self.size_limit:
            with self._transact(retry=True) as (sql, cleanup):
                rows = sql(
                    "SELECT rowid, key, filename FROM Cache ORDER BY access_time LIMIT ?",
                    (len(pinned) + 1,),
                ).fetchall()
                victim = next((row for row in rows if row[1] not in pinned), None)
                if victim is None:
                    break
                rowid, key, filename = victim
                sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                cleanup(filename)
            removed.append(key)
        return removed


# -- handles ---------------------------------------------------------------------------------------


class ContentHandle:
    """An open file in the content cache: a cached copy or a running download being followed.

    Holds its own fd, so eviction or adoption of the file never breaks it. One handle may be read
    from several threads at once (``pread``). ``close()`` is idempotent.
    """

    def __init__(
        self,
        cache: "ContentCache",
        key: ContentKey,
        fd: int,
        download: Optional[Download] = None,
        fileobj: Any = None,
    ) -> None:
        #: Read-only.
        self.key = key
        self._cache = cache
        self._fd = fd
        self._download = download
        self._fileobj = fileobj  # keeps diskcache's file object (and so the fd) alive
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def from_cache(self) -> bool:
        """True if this handle opened a complete cached copy (no download involved)."""
        return self._download is None

    def read(self, offset: int, size: int, deadline: float) -> bytes:
        """Bytes [offset, offset+size); short or b"" at the end of the file.

        On a downloading handle, blocks only until those bytes have arrived or ``deadline``
        (a ``time.monotonic()`` value) passes: then TimeoutError (an OSError with errno
        ETIMEDOUT). If the download failed, raises its error (what ``fetch`` raised, or an
        OSError EIO for a size/MD5 mismatch, or DownloadCancelled when the cache closes).
        """
        if self._closed:
            raise OSError(errno.EBADF, f"content handle for {self.key.uri} is closed")
        if self._download is not None:
            return self._download.read(self._fd, offset, size, deadline)
        if size <= 0 or offset < 0:
            return b""
        return os.pread(self._fd, size, offset)

    def wait(self, deadline: float) -> bool:
        """Block until the whole file is there (or failed) or ``deadline``; True if it ended."""
        return True if self._download is None else self._download.wait(deadline)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._fileobj is not None:
                self._fileobj.close()
            else:
                os.close(self._fd)
        finally:
            self._cache._unpin(self.key.hexname())

    def __enter__(self) -> "ContentHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the cache -------------------------------------------------------------------------------------


class ContentCache:
    """Whole remote files on disk with LRU eviction, single-flight downloads and streaming reads.

    ``start()`` opens the index and creates the download pool (threads start there, never in the
    constructor, because the process may daemonize after construction); ``close()`` stops both.

    Thread-safety and lock order: ``_index_lock`` → ``_lock`` → ``Download._cond``.

    - ``_lock`` protects ``_downloads`` (hex → running Download), ``_pins`` (hex → open handles),
      ``_stats``, ``_pool`` and ``_closing``. It is held across the "downloading? cached? else
      start" decision in ``open``, which includes one SQLite lookup, so that a key is never
      downloaded twice at once.
    - ``_index_lock`` serializes insertions into the index (adopt + cull + eviction count). The
      worker never holds ``_lock`` while it waits for SQLite inside an insertion.
    """

    def __init__(
        self,
        directory: Union[str, os.PathLike],
        size_limit: int,
        fetch: Fetch,
        max_downloads: int = 8,
        verify: bool = True,
    ) -> None:
        #: Read-only after construction.
        self.directory = os.path.abspath(os.fspath(directory))
        self.size_limit = int(size_limit)
        self.max_downloads = max(1, int(max_downloads))
        #: Check MD5 digests from the listing (the size is always checked).
        self.verify = verify
        self._fetch = fetch
        self._index_dir = os.path.join(self.directory, "index")
        self._partial_dir = os.path.join(self.directory, "partial")
        for path in (self.directory, self._index_dir, self._partial_dir):
            os.makedirs(path, mode=_DIR_MODE, exist_ok=True)
            os.chmod(path, _DIR_MODE)

        self._index: Optional[_Index] = None
        self._index_lock = threading.Lock()
        self._lock = threading.Lock()
        # _lock protects the fields below.
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._closing = False
        self._downloads: Dict[str, Download] = {}
        self._pins: Dict[str, int] = {}
        self._stats = {
            "hits": 0,             # opens served by a complete cached copy
            "misses": 0,           # opens that started or joined a download
            "downloads": 0,        # downloads started
            "download_errors": 0,  # downloads that ended in an error
            "bytes_downloaded": 0, # bytes received by finished downloads (running ones added live)
            "evictions": 0,        # entries culled by the size limit
        }

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Remove partial files left by a crash, open the index (culling it to ``size_limit``) and
        create the download pool: the only place threads are started."""
        with self._lock:
            if self._pool is not None:
                return
            for name in os.listdir(self._partial_dir):
                path = os.path.join(self._partial_dir, name)
                try:
                    os.unlink(path)
                    log.debug("content cache: removed leftover partial %s", name)
                except OSError as exc:
                    log.warning("content cache: cannot remove leftover partial %s: %s", path, exc)
            self._index = _Index(
                self._index_dir,
                size_limit=self.size_limit,
                eviction_policy="least-recently-used",
                cull_limit=0,  # set() never culls; _adopt calls cull_unpinned (see _Index)
                disk=_AdoptingDisk,
            )
            evicted = self._index.cull_unpinned(set())   # the limit may have shrunk since last run
            self._stats["evictions"] += len(evicted)
            self._closing = False
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_downloads, thread_name_prefix="xnatfs-download"
            )

    def close(self, deadline: Optional[float] = None) -> None:
        """Cancel queued downloads, wait for running ones until ``deadline`` (time.monotonic();
        default 10 s from now), then close the index.

        Running downloads are told to stop at their next chunk; readers of any unfinished download
        get DownloadCancelled. Whatever is still running at the deadline is logged and abandoned
        (its result is discarded, never adopted).
        """
        if deadline is None:
            deadline = time.monotonic() + _DEFAULT_CLOSE_SECONDS
        with self._lock:
            pool, self._pool = self._pool, None
            self._closing = True
            running = list(self._downloads.values())
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        stuck = [d.uri for d in running if not d.wait(deadline)]
        if stuck:
            log.warning("content cache: %d download(s) still running at close: %s",
                        len(stuck), ", ".join(stuck))
        with self._index_lock:
            index, self._index = self._index, None
            if index is not None:
                index.close()

    def __enter__(self) -> "ContentCache":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------

    def open(self, key: ContentKey) -> ContentHandle:
        """A handle on ``key``'s bytes; never waits for the network.

        Cached → a handle on the cached file (and an LRU touch). A download of ``key`` running →
        a handle that follows it. Else a download is queued on the pool and followed. Raises
        RuntimeError if the cache is not started.
        """
        hexname = key.hexname()
        with self._lock:
            index = self._require_started()
            download = self._downloads.get(hexname)
            if download is None:
                fileobj = index.get(hexname, default=None, read=True, retry=True)
                if fileobj is not None:
                    self._stats["hits"] += 1
                    self._pin_locked(hexname)
                    return ContentHandle(self, key, fileobj.fileno(), fileobj=fileobj)
                download = self._start_locked(key, hexname)
            self._stats["misses"] += 1
            fd = download.dup_fd()
            self._pin_locked(hexname)
        return ContentHandle(self, key, fd, download=download)

    def prefetch(self, keys: Iterable[ContentKey]) -> int:
        """Queue downloads of the keys that are neither cached nor downloading; returns how many."""
        started = 0
        for key in keys:
            hexname = key.hexname()
            with self._lock:
                index = self._require_started()
                if hexname in self._downloads or hexname in index:
                    continue
                self._start_locked(key, hexname)
                started += 1
        return started

    def add(self, key: ContentKey, data: bytes) -> bool:
        """Store bytes that arrived another way (a member of a resource's zip) under ``key``,
        after checking them against the key's size and MD5 like a download.  False when the
        key is cached or downloading already, or the bytes do not match."""
        if key.size is not None and key.size >= 0 and len(data) != key.size:
            return False
        if self.verify and key.digest and \
                hashlib.md5(data, usedforsecurity=False).hexdigest() != key.digest:
            log.warning("content cache: %s from a bulk fetch does not match its digest; "
                        "it will be downloaded alone", key.uri)
            return False
        hexname = key.hexname()
        with self._lock:
            index = self._require_started()
            if hexname in self._downloads or hexname in index:
                return False
        fd, path = tempfile.mkstemp(dir=self._partial_dir, prefix=hexname + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self._adopt(hexname, path)
        except BaseException:
            if os.path.exists(path):
                os.unlink(path)
            raise
        return True

    def temp_file(self) -> Any:
        """An anonymous file on the cache's disk (for a zip being split into the cache)."""
        return tempfile.TemporaryFile(dir=self._partial_dir)

    def state(self, key: ContentKey) -> str:
        """"cached", "downloading" or "absent" (for ``.xnatfs/`` status and ``xnatfs cache``)."""
        hexname = key.hexname()
        with self._lock:
            index = self._require_started()
            if hexname in self._downloads:
                return "downloading"
            return "cached" if hexname in index else "absent"

    def wait(self, key: ContentKey, deadline: float) -> bool:
        """Block until no download of ``key`` runs (or ``deadline``); True if none runs."""
        with self._lock:
            download = self._downloads.get(key.hexname())
        return download is None or download.wait(deadline)

    # -- maintenance -----------------------------------------------------------------------------

    def size(self) -> int:
        """Bytes the index counts against ``size_limit`` (cached files plus the SQLite file)."""
        with self._lock:
            index = self._require_started()
        return index.volume()

    def clear(self) -> int:
        """Drop every cached file (running downloads and open handles are unaffected).

        Returns how many entries were removed.
        """
        with self._lock:
            index = self._require_started()
        with self._index_lock:
            return index.clear(retry=True)

    @property
    def stats(self) -> Dict[str, int]:
        """Counters for ``.xnatfs/``: hits, misses, downloads, download_errors, bytes_downloaded,
        downloads_in_flight, evictions, entries, size_on_disk, pinned."""
        with self._lock:
            out = dict(self._stats)
            out["bytes_downloaded"] += sum(d.bytes_received for d in self._downloads.values())
            out["downloads_in_flight"] = len(self._downloads)
            out["pinned"] = len(self._pins)
            index = self._index
        if index is not None:
            out["entries"] = len(index)
            out["size_on_disk"] = index.volume()
        else:
            out["entries"] = out["size_on_disk"] = 0
        return out

    # -- internals -------------------------------------------------------------------------------

    def _require_started(self) -> _Index:
        """Caller holds self._lock."""
        if self._pool is None or self._index is None:
            raise RuntimeError("content cache is not started (or already closed)")
        return self._index

    def _pin_locked(self, hexname: str) -> None:
        """Caller holds self._lock."""
        self._pins[hexname] = self._pins.get(hexname, 0) + 1

    def _unpin(self, hexname: str) -> None:
        with self._lock:
            count = self._pins.get(hexname, 0) - 1
            if count > 0:
                self._pins[hexname] = count
            else:
                self._pins.pop(hexname, None)

    def _start_locked(self, key: ContentKey, hexname: str) -> Download:
        """Register and queue the download of ``key``. Caller holds self._lock."""
        partial = os.path.join(self._partial_dir, f"{hexname}.{secrets.token_hex(4)}.part")
        download = Download(
            key.uri, key.size, key.digest, partial, self._fetch,
            verify=self.verify, cancelled=lambda: self._closing,
        )
        self._downloads[hexname] = download
        self._stats["downloads"] += 1
        assert self._pool is not None
        try:
            future = self._pool.submit(self._run, download, hexname)
        except RuntimeError as exc:  # pool shut down under us
            del self._downloads[hexname]
            download.fail(DownloadCancelled(key.uri), lambda error: None)
            raise RuntimeError("content cache is closing") from exc
        future.add_done_callback(lambda f: self._on_cancelled(f, download, hexname))
        return download

    def _on_cancelled(self, future: concurrent.futures.Future, download: Download,
                      hexname: str) -> None:
        """Done-callback: a download whose queued work was cancelled (``close``) never ran."""
        if future.cancelled():
            download.fail(DownloadCancelled(download.uri),
                          lambda error: self._unregister(download, hexname, error))

    def _run(self, download: Download, hexname: str) -> None:
        """Pool task. The download adopts its file, then unregisters, then wakes its readers, so
        ``open``/``state`` see the key downloading or cached, never absent in between."""
        download.run(
            adopt=lambda path: self._adopt(hexname, path),
            ended=lambda error: self._unregister(download, hexname, error),
        )

    def _unregister(self, download: Download, hexname: str,
                    error: Optional[BaseException]) -> None:
        """After this returns nobody can join ``download`` (joins happen under self._lock)."""
        with self._lock:
            if self._downloads.get(hexname) is download:
                del self._downloads[hexname]
            self._stats["bytes_downloaded"] += download.bytes_received
            if error is not None:
                self._stats["download_errors"] += 1

    def _adopt(self, hexname: str, partial_path: str) -> None:
        """Move a verified partial file into the index, then evict LRU entries that are not pinned.

        Runs in the download thread; raises (and the download fails) if the index refuses it.
        """
        with self._index_lock:
            with self._lock:
                index = self._index
                pinned = set(self._pins)
            if index is None:  # close() gave up waiting for us
                raise DownloadCancelled(partial_path)
            if hexname in index:  # only if another process shares the directory
                os.unlink(partial_path)
                return
            try:
                index.set(hexname, _Adopt(partial_path), retry=True)
            except BaseException:
                # store() may have renamed the file already: do not leave it unindexed.
                _, stored = index.disk.filename(hexname)
                try:
                    if os.path.exists(stored) and hexname not in index:
                        os.unlink(stored)
                except Exception:  # noqa: BLE001 - the original error matters more
                    log.debug("content cache: cleanup of %s failed", stored, exc_info=True)
                raise
            with self._lock:  # pins taken while we stored count too
                pinned |= set(self._pins)
            evicted = index.cull_unpinned(pinned)
        if evicted:
            log.debug("content cache: evicted %d entr%s to store %s", len(evicted),
                      "y" if len(evicted) == 1 else "ies", hexname)
            with self._lock:
                self._stats["evictions"] += len(evicted)
