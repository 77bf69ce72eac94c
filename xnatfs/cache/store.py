"""The state of the content cache and its download machinery (single flight, room, adoption).

``ContentStore`` is the base of :class:`~xnatfs.cache.content.ContentCache`: its constructor
holds every field (the lock order is written out on ``ContentCache``), and its methods start,
run and end downloads, make room in the index and adopt finished files into it.  Reading
(``open``), the life cycle and bulk fetches build on it in ``content.py`` and ``bulk.py``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import secrets
import sqlite3
import threading
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from xnatfs.cache.download import Download, DownloadCancelled, Ended, Fetch
from xnatfs.cache.handle import _Verification
from xnatfs.cache.index import _Index, stored_name
from xnatfs.cache.key import ARCHIVE, ContentKey
from xnatfs.cache.partials import PartialOwners
from xnatfs.cache.stream import IDLE_LIMIT
from xnatfs.private import private_dir

#: one logger for the whole content cache, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.cache.content")

#: insertions between two reads of the real index volume (another mount may share the index)
_VOLUME_SYNC = 64
#: bytes of cached files evicted at least when a user's write meets a full disk
#: (``make_room_for_write``)
WRITE_ROOM = 16 << 20


class ContentStore:
    """Fields and download machinery of :class:`~xnatfs.cache.content.ContentCache` (which
    documents the locks: ``_index_lock`` → ``_lock`` → ``Download._cond``)."""

    def __init__(
        self,
        directory: Union[str, os.PathLike],
        size_limit: int,
        fetch: Fetch,
        max_downloads: int = 8,
        verify: bool = True,
        fetch_archive: Optional[Fetch] = None,
        stream_idle: float = IDLE_LIMIT,
        stop_transfers: Optional[Callable[[], None]] = None,
    ) -> None:
        """Every field of the cache, each with what it holds and which lock guards it.

        Long because: one documented field after another; the list is the cache's state map."""
        #: Read-only after construction.
        self.directory = os.path.abspath(os.fspath(directory))
        self.size_limit = int(size_limit)
        self.max_downloads = max(1, int(max_downloads))
        #: Check MD5 digests from the listing (the size is always checked).
        self.verify = verify
        #: seconds a streamed file's GET waits for an idle reader before it is dropped
        #: (``StreamHandle``; the mount passes ``--read-timeout``)
        self.stream_idle = stream_idle
        self._fetch = fetch
        #: fetches keys of kind ARCHIVE and the zips of ``bulk`` (tests give one fetch for all)
        self._fetch_archive = fetch_archive or fetch
        #: ends the fetches under way at once (``close``; the mount's client shuts their
        #: connections): a running download stops at its next chunk, but a server that
        #: trickles never completes one
        self._stop_transfers = stop_transfers
        self._index_dir = os.path.join(self.directory, "index")
        self._partial_dir = os.path.join(self.directory, "partial")
        # ours and 0700, or refused: a link or another user's folder planted here was
        # followed/adopted, and the mount cached XNAT's bytes in it (``xnatfs.private``)
        for path in (self.directory, self._index_dir, self._partial_dir):
            private_dir(path)

        self._index: Optional[_Index] = None
        self._index_lock = threading.Lock()
        self._lock = threading.Lock()
        # _lock protects the fields below.
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._closing = False
        self._downloads: Dict[str, Download] = {}
        self._pins: Dict[str, int] = {}
        self._partial_tag = secrets.token_hex(4)
        #: the lock that keeps other processes sharing the directory off our partial files
        self._owners = PartialOwners(
            os.path.join(self.directory, "owners"), self._partial_dir, self._partial_tag
        )
        self._partial_seq = itertools.count()
        #: hex -> size of every file in the index, as far as this process knows: an open of a
        #: cached file is then one os.open, no SQLite (diskcache's LRU-updating get is a write
        #: transaction, ~0.2 ms, on every open)
        self._present: Dict[str, int] = {}
        #: hex -> (st_ino, st_mtime_ns) of the cached file when its MD5 was last checked by
        #: this process (downloaded here, or hashed on its first open): a file written by an
        #: earlier mount or another process, or changed since, is hashed once before it is
        #: served (issue 18 §1)
        self._verified: Dict[str, Tuple[int, int]] = {}
        #: hex -> the background MD5 check of a large cached file (``_verify_behind``)
        self._behind: Dict[str, _Verification] = {}
        #: hex -> lock held while one opener hashes that file (the others wait for it)
        self._verifying: Dict[str, threading.Lock] = {}
        #: bytes of downloads running now (room made for them before they start)
        self._reserved = 0
        #: hex -> last open time not yet written to the index (``_flush_touches``)
        self._touched: Dict[str, float] = {}
        #: cached files to page in (``prefetch``), newest kept when it overflows
        self._read_ahead_queue: "collections.deque[str]" = collections.deque(maxlen=256)
        self._read_ahead_cond = threading.Condition()
        self._read_ahead_stop = False
        self._read_ahead_thread: Optional[threading.Thread] = None
        #: opened file's hex -> cached files to page in once the kernel asks that open for
        #: bytes (``prefetch(..., after=)``); the oldest dropped past 64 folders' worth
        self._read_ahead_after: "collections.OrderedDict[str, List[str]]" = (
            collections.OrderedDict()
        )
        #: bytes the index holds (``volume()``), kept up to date here and re-read from SQLite
        #: whenever it nears the limit, so an insertion costs no volume query
        self._volume = 0
        self._adopted_since_sync = 0
        #: bumps whenever readers may have been served bytes that failed a check (``taints``)
        self._taints = 0
        #: called (no lock held) after each taint (``on_taint``); set up before ``start``
        self._taint_listeners: List[Callable[[str], None]] = []
        self._stats = {
            "hits": 0,  # opens served by a complete cached copy
            "misses": 0,  # opens that started or joined a download
            "downloads": 0,  # downloads started
            "download_errors": 0,  # downloads that ended in an error
            "bytes_downloaded": 0,  # bytes received by finished downloads (running ones added live)
            "evictions": 0,  # entries culled by the size limit
            "bulk_fetches": 0,  # archives fetched to bring many files at once (``bulk``)
            "damaged": 0,  # cached entries dropped on open: wrong size, gone, bad MD5
            "verified": 0,  # cached files hashed on first open (written by others)
            "streamed": 0,  # opens served straight from the server (file > cache)
        }

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
        download = self._register_locked(key, hexname)
        try:
            self._submit_locked(download, hexname)
        except RuntimeError:
            del self._downloads[hexname]
            download.fail(DownloadCancelled(key.uri), lambda error: None)
            raise
        return download

    def _fetcher(self, key: ContentKey) -> Fetch:
        return self._fetch_archive if key.kind == ARCHIVE else self._fetch

    def _register_locked(self, key: ContentKey, hexname: str) -> Download:
        """A new download of ``key``, registered (readers join it) but not queued yet."""
        # unique within this process (O_EXCL guards against anything else): a counter is
        # cheaper than random bytes for the hundreds a bulk fetch registers at once
        partial = os.path.join(
            self._partial_dir, f"{hexname}.{self._partial_tag}{next(self._partial_seq)}.part"
        )
        download = Download(
            key.uri,
            key.size,
            key.digest,
            partial,
            self._fetcher(key),
            verify=self.verify,
            cancelled=lambda: self._closing,
            max_bytes=self.size_limit,
            make_room=self._make_room,
            restarted=lambda: self._taint(hexname),
        )
        self._downloads[hexname] = download
        self._stats["downloads"] += 1
        return download

    def _submit_locked(self, download: Download, hexname: str, go_on: bool = False) -> None:
        """Queue a registered download on the pool. Caller holds self._lock; raises
        RuntimeError when the pool is shut down.

        The done-callback is added with ``_lock`` held, and a callback added to a finished
        future runs at once, in this thread; ``_on_cancelled`` takes ``_lock`` when the future
        was cancelled, which would deadlock here.  It cannot be: only ``close`` cancels
        (``shutdown(cancel_futures=True)``, whose callbacks run in close's thread), and it
        takes the pool out of ``_pool`` under ``_lock`` before that, so a pool seen here under
        ``_lock`` has cancelled nothing yet.  Keep it so (the request limiter's finalizer once
        deadlocked the same way)."""
        if self._pool is None:
            raise RuntimeError("content cache is closing")
        try:
            future = self._pool.submit(self._run, download, hexname, go_on)
        except RuntimeError as exc:  # pool shut down under us
            raise RuntimeError("content cache is closing") from exc
        future.add_done_callback(lambda f: self._on_cancelled(f, download, hexname))

    def _fetch_alone(self, download: Download, hexname: str, go_on: bool = False) -> None:
        """A registered download whose bytes a bulk fetch did not deliver: one GET of its own
        (or, when the cache is closing, the readers learn that).  ``go_on``: the zip broke off
        inside this member; its GET goes on with the bytes fed so far (``Download.run``)."""
        if not go_on:
            download.restart()
        with self._lock:
            try:
                self._submit_locked(download, hexname, go_on)
                return
            except RuntimeError:
                pass
        download.fail(
            DownloadCancelled(download.uri),
            lambda error: self._unregister(download, hexname, error),
        )

    def _on_cancelled(
        self, future: concurrent.futures.Future, download: Download, hexname: str
    ) -> None:
        """Done-callback: a download whose queued work was cancelled (``close``) never ran."""
        if future.cancelled():
            download.fail(
                DownloadCancelled(download.uri),
                lambda error: self._unregister(download, hexname, error),
            )

    def _run(self, download: Download, hexname: str, go_on: bool = False) -> None:
        """Pool task. The download adopts its file, then unregisters, then wakes its readers, so
        ``open``/``state`` see the key downloading or cached, never absent in between."""
        need = download.size or 0
        if need:
            with self._lock:
                self._reserved += need
        released = False

        def ended(error: Optional[BaseException]) -> None:
            # before the readers wake: the adopted bytes now count in the volume instead
            nonlocal released
            if need and not released:
                released = True
                with self._lock:
                    self._reserved -= need
            self._unregister(download, hexname, error)

        try:
            if need:
                self._ensure_room(need)
            download.run(
                adopt=lambda path: self._adopt(hexname, path, download.digest),
                ended=ended,
                go_on=go_on,
            )
        finally:
            if need and not released:
                released = True
                with self._lock:
                    self._reserved -= need

    def _ensure_room(self, need: int) -> None:
        """Before a download of ``need`` bytes starts (its bytes already counted in
        ``_reserved``): evict least-recently-used unpinned entries so that the index plus
        running downloads stay under the limit and the cache disk has room for it (issue 18
        §0: eviction ran only after an insertion, so a full cache disk gave ENOSPC with
        nothing evicted).

        Never raises: room is made as well as it can be, and a download that still meets a
        full disk makes room again at that write (``_make_room``).  On a disk that is full
        to its last block SQLite cannot write (not even the DELETE of a row: its journal
        needs room), so a disk short of ``need`` is first freed files first (``free_up``),
        as at a failed write.  Before, the cull's ``database or disk is full`` escaped the
        pool task: the download never ran nor ended, its readers got ETIMEDOUT, and every
        later open of that file joined the dead download until the unmount."""
        try:
            with self._index_lock:
                with self._lock:
                    index = self._index
                    reserved = self._reserved
                    pinned = set(self._pins)
                if index is None:
                    return
                target = self.size_limit - reserved
                short = 0
                try:
                    st = os.statvfs(self._partial_dir)
                    short = max(0, need - st.f_bavail * st.f_frsize)
                except OSError:
                    pass
                if short:
                    self._free_up(index, pinned, short)
                if self._volume > target:
                    self._cull(index, pinned, max(0, target))
        except (OSError, sqlite3.Error) as exc:
            log.warning(
                "content cache: could not make room for a download of %d bytes: %s", need, exc
            )

    def _make_room(self, need: int) -> bool:
        """A write into ``partial/`` failed with ENOSPC or EDQUOT: evict at least ``need``
        bytes of unpinned entries; True if anything was evicted (the write is then tried
        again)."""
        with self._index_lock:
            with self._lock:
                index = self._index
                pinned = set(self._pins)
            if index is None:
                return False
            count = len(self._free_up(index, pinned, need))
        log.log(  # nothing evicted: the read's error line says it, once
            logging.INFO if count else logging.DEBUG,
            "content cache: cache disk full; evicted %d entr%s to make room",
            count,
            "y" if count == 1 else "ies",
        )
        return count > 0

    def make_room_for_write(self, path: str, need: int) -> int:
        """A user's write to ``path`` (the upload spool or journal) met a full disk (ENOSPC or
        EDQUOT): evict cached files to make room for it, at least ``need`` bytes and
        ``WRITE_ROOM`` (a ``cp`` of a large file then costs one eviction per ``WRITE_ROOM``,
        not one per 128 KiB write); returns how many entries went.  The caller writes once
        more, and answers the errno if it fails again (one pass, rclone's vfs cache does the
        same for its writes).

        Only what is safe to lose is evicted: entries of the index (whole downloads, checked
        against their size and MD5 when adopted, copies of what XNAT holds), least recently
        used first, never one open now (pinned), never a running download's partial file,
        and never anything outside the cache directory (the spool and journal hold the only
        copy of what users wrote).  Nothing when ``path`` is on another filesystem (no room
        made there) or the cache is closed."""
        try:
            if os.stat(path).st_dev != os.stat(self.directory).st_dev:
                return 0
        except OSError:
            return 0
        with self._index_lock:
            with self._lock:
                index = self._index
                pinned = set(self._pins)
            if index is None:
                return 0
            try:
                evicted = self._free_up(index, pinned, max(need, WRITE_ROOM))
            except (OSError, sqlite3.Error) as exc:
                log.warning("content cache: could not make room for a write: %s", exc)
                return 0
        count = len(evicted)
        # nothing evicted: the write's own error line says it (a writer that goes on after
        # ENOSPC must not add a line per write)
        log.log(
            logging.INFO if count else logging.DEBUG,
            "content cache: disk full for a write to %s; evicted %d entr%s to make room",
            path,
            count,
            "y" if count == 1 else "ies",
        )
        return count

    def _free_up(self, index: "_Index", pinned: Set[str], need: int) -> List[str]:
        """Evict files first (``_Index.free_up``) until ``need`` bytes are free; caller holds
        ``_index_lock``.  For a disk with no room left, where SQLite cannot write."""
        with self._lock:
            touched = dict(self._touched)
        evicted = index.free_up(pinned, need, touched)
        self._volume = index.volume()
        self._forget_evicted(evicted)
        return evicted

    def _cull(self, index: "_Index", pinned: Set[str], target: int) -> int:
        """Evict down to ``target`` bytes; caller holds ``_index_lock``.  Returns how many."""
        self._flush_touches(index)
        evicted = index.cull_unpinned(pinned, target)
        self._volume = index.volume()
        self._forget_evicted(evicted)
        return len(evicted)

    def _forget_evicted(self, evicted: List[str]) -> None:
        """Drop what this process remembers of entries the index just evicted."""
        with self._lock:
            for gone in evicted:
                self._present.pop(gone, None)
                self._touched.pop(gone, None)
                self._verified.pop(gone, None)
            self._stats["evictions"] += len(evicted)

    @property
    def taints(self) -> int:
        """How many times readers may have been served bytes that then failed their check (a
        download attempt thrown away, a download failed, a cached file failing its MD5 while
        read).  ``fs.keepcache``: unchanged since the pages of a file were dropped means every
        page read since is of verified bytes."""
        return self._taints

    def on_taint(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(hexname)`` after every taint of the key of that ``hexname()``, from
        the thread that saw it, with no lock held
        (``fs.noopen``: the kernel keeps pages there without asking, so they are dropped when
        it happens, not at the next open).  It must be quick and must not call back in."""
        self._taint_listeners.append(listener)

    def trusted(self, key: ContentKey) -> bool:
        """Is ``key`` a complete cached entry with its checks done (no download of it running,
        no background MD5 check of it pending)?"""
        hexname = key.hexname()
        with self._lock:
            return (
                hexname in self._present
                and hexname not in self._downloads
                and hexname not in self._behind
            )

    def _taint(self, hexname: str) -> None:
        with self._lock:
            self._taints += 1
        self._tell_taint(hexname)

    def _tell_taint(self, hexname: str) -> None:
        for listener in self._taint_listeners:
            listener(hexname)

    def _ender(self, download: Download, hexname: str) -> Ended:
        """The ``ended`` callback of ``download``: unregister it (bound now, not in a loop)."""
        return lambda error: self._unregister(download, hexname, error)

    def _unregister(self, download: Download, hexname: str, error: Optional[BaseException]) -> None:
        """After this returns nobody can join ``download`` (joins happen under self._lock)."""
        with self._lock:
            if self._downloads.get(hexname) is download:
                del self._downloads[hexname]
            self._stats["bytes_downloaded"] += download.bytes_received
            if error is not None:
                self._stats["download_errors"] += 1
                self._taints += 1
        if error is not None:
            self._tell_taint(hexname)

    def _flush_touches(self, index: "_Index") -> None:
        """Write the remembered access times (before a cull reads them, and at close).

        On a full cache disk SQLite cannot write them (``database or disk is full``): they
        stay in memory for the next flush and the LRU order is the one on disk meanwhile.
        Raised, that failed the cull before a download (the download hung) and the cache's
        close at unmount."""
        with self._lock:
            touched, self._touched = self._touched, {}
        try:
            index.touch_many(touched)
        except sqlite3.OperationalError as exc:
            log.debug("content cache: access times not written (%s); kept for later", exc)
            with self._lock:
                for hexname, when in touched.items():
                    self._touched.setdefault(hexname, when)  # a newer touch wins

    def _adopt(self, hexname: str, partial_path: str, digest: str) -> None:
        """Move one verified partial file into the index (raises if the index refuses it)."""
        error = self._adopt_many([(hexname, partial_path, os.stat(partial_path).st_size, digest)])[
            0
        ]
        if error is not None:
            raise error

    def _adopt_many(
        self, items: Sequence[Tuple[str, str, int, str]]
    ) -> List[Optional[BaseException]]:
        """Move verified partial files into the index in one transaction, then evict LRU
        entries that are not pinned; per item None or the error that kept it out.

        Runs in a download pool thread.
        """
        with self._index_lock:
            with self._lock:
                index = self._index
                pinned = set(self._pins)
            if index is None:  # close() gave up waiting for us
                return [DownloadCancelled(path) for _, path, _, _ in items]
            inodes = {}
            for hexname, path, _, _ in items:
                try:
                    inodes[hexname] = os.stat(path).st_ino
                except OSError:
                    pass
            results = index.adopt_many(items)
            sizes = [
                (hexname, size)
                for (hexname, _, size, _), error in zip(items, results)
                if error is None
            ]
            stamps = self._own_stamps(inodes, [hexname for hexname, _ in sizes])
            with self._lock:  # pins taken while we stored count too
                pinned |= set(self._pins)
                for hexname, size in sizes:
                    self._present[hexname] = size
                self._verified.update(stamps)
            self._volume += sum(size for _, size in sizes)
            self._adopted_since_sync += len(sizes)
            evicted: List[str] = []
            if self._volume > self.size_limit or self._adopted_since_sync >= _VOLUME_SYNC:
                # near the limit (or another mount shares the index): the real numbers decide
                self._flush_touches(index)
                try:
                    evicted = index.cull_unpinned(pinned)
                except sqlite3.OperationalError as exc:
                    # a full disk: the entries are adopted; the next insertion culls
                    log.debug("content cache: no cull after an insertion: %s", exc)
                self._volume = index.volume()
                self._adopted_since_sync = 0
                if evicted:
                    with self._lock:
                        for gone in evicted:
                            self._present.pop(gone, None)
                            self._touched.pop(gone, None)
                            self._verified.pop(gone, None)
        if evicted:
            log.debug(
                "content cache: evicted %d entr%s",
                len(evicted),
                "y" if len(evicted) == 1 else "ies",
            )
            with self._lock:
                self._stats["evictions"] += len(evicted)
        return results

    def _own_stamps(
        self, inodes: Dict[str, int], hexnames: List[str]
    ) -> Dict[str, Tuple[int, int]]:
        """(inode, mtime) of each adopted file that is still the one we renamed in: checked by
        this process as it arrived, so no hashing on its first open."""
        stamps = {}
        for hexname in hexnames:
            try:
                st = os.stat(self._stored_path(hexname))
            except OSError:
                continue
            if st.st_ino == inodes.get(hexname):  # ours, not a copy another mount kept
                stamps[hexname] = (st.st_ino, st.st_mtime_ns)
        return stamps

    def _too_big(self, key: ContentKey, room: Optional[int] = None) -> bool:
        """Is ``key`` larger than the cache could ever hold (its limit, or the free disk plus
        all it could evict: ``room``, else ``_room_locked()``)?  Such a file is streamed from
        the server and not kept (gcsfuse).  Caller holds self._lock."""
        if key.size is None or key.size < 0:
            return False
        if key.size > self.size_limit:
            return True
        if room is None:
            room = self._room_locked()
        return room is not None and key.size > room

    def _room_locked(self) -> Optional[int]:
        """The most the cache could hold now: the free disk plus all it could evict (None if
        the disk cannot say).  One ``statvfs``: a bulk fetch asks once for all its files.
        Caller holds self._lock."""
        try:
            st = os.statvfs(self._partial_dir)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize + self._volume - self._reserved

    def _stored_path(self, hexname: str) -> str:
        """Where the cached file of ``hexname`` lives (``stored_name``)."""
        return os.path.join(self._index_dir, stored_name(hexname))
