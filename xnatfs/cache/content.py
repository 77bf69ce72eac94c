"""Content cache: whole files on disk, one download per file, readers served as bytes arrive.

Layout under ``directory`` (all directories mode 0700, files 0600)::

    index/            a diskcache.Cache: SQLite index + the cached files (LRU by size_limit)
        cache.db
        ab/abcd....bin      one cached file, named by the sha256 of its ContentKey
    partial/          downloads in progress (same filesystem, so adoption is a rename)
    owners/           one locked file per process using the cache (``partials.py``)

A ``ContentKey`` is (uri, size, digest, mtime): a file changed on the server has another key, so
a stale copy is never served (rclone ``_checkObject``); old copies age out by LRU. The on-disk name
is the sha256 of the key (fsspec ``HashCacheMapper``), and the diskcache key is that same hex
string, so the index holds no URIs.

A finished download is *adopted*: ``_Index.adopt_many`` renames the partial file into the
index's file layout (``stored_name``) and writes its row, instead of copying it through
diskcache's ``set``. The cache survives restarts; partial files left by a crash are removed by
``start()``.

Opens of cached files never touch SQLite: ``_present`` (every key in the index, read at start)
says what is cached and the file's path follows from its key; access times are kept in memory
and written in batches before each cull and at close.

Integrity (issue 18 §1): an open of a cached file costs one ``fstat`` on top: the size must be
the indexed one, and a file this process has not checked since it was last written (another
process's, an earlier mount's: told by inode and mtime, ``_verified``) is hashed against its MD5
once before it is served.  The MD5 is kept in the row's ``tag`` for ``verify_entries`` (``xnatfs
cache verify``).  Files are ``fdatasync``ed before their row is written; room is made before a
download starts (``_ensure_room``) and when a write meets ENOSPC or EDQUOT (``_make_room``); a
file larger than the cache can hold is streamed, not kept (``stream.StreamHandle``).  A user's
write that meets a full disk (the spool and journal share it) asks for room too
(``make_room_for_write``).  On a disk full to its last block SQLite cannot write: eviction then
deletes files before rows (``_Index.free_up``), and access times wait in memory.

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

This module must not import ``xnatfs.tree`` or ``xnatfs.xnat``: it gets ``fetch(uri, sink)``
for files and ``fetch_archive(uri, sink)`` for keys of kind ``archive`` (XNAT's zip of a
folder, ``docs/XNAT-API.md`` §3.3), and never looks into a URI to tell them apart.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sqlite3
import threading
import time
from typing import Dict, Optional, Tuple

from xnatfs.cache.bulk import BulkFetches
from xnatfs.cache.download import DownloadCancelled, IntegrityError, digest_file
from xnatfs.cache.handle import ContentHandle, _Verification

# names this module has always exported (callers and tests import them from here)
from xnatfs.cache.index import (  # noqa: F401
    VerifyReport,
    _Index,
    damaged,
    set_index_aside,
    stored_name,
    verify_entries,
)
from xnatfs.cache.key import ARCHIVE, FILE, ContentKey, archive_object_uri, archive_uri
from xnatfs.cache.stream import StreamHandle
from xnatfs.private import refuse_planted_db

#: one logger for the whole content cache, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.cache.content")

__all__ = [
    "ContentCache",
    "ContentHandle",
    "ContentKey",
    "ARCHIVE",
    "FILE",
    "archive_uri",
    "archive_object_uri",
    "DownloadCancelled",
    "IntegrityError",
]

#: How long ``close()`` waits for running downloads when no deadline is given.
_DEFAULT_CLOSE_SECONDS = 10.0
#: a cached file up to this size that needs its MD5 checked is hashed in ``open`` (a hash of
#: 32 MiB takes ~50 ms); a larger one by a thread while it is read (``_Verification``)
VERIFY_INLINE_MAX = 32 << 20


class ContentCache(BulkFetches):
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

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Remove partial files left by a crash, open the index (culling it to ``size_limit``) and
        create the download pool: the only place threads are started."""
        with self._lock:
            if self._pool is not None:
                return
            # only those of processes that are gone: another mount (or ``xnatfs cache
            # usage``) may share the directory, its downloads still running
            self._owners.claim()
            self._owners.sweep()
            try:
                self._open_index()
            except sqlite3.DatabaseError as exc:
                if not damaged(exc):
                    raise
                self._set_index_aside(exc)
                self._open_index()
            self._touched = {}
            self._closing = False
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_downloads, thread_name_prefix="xnatfs-download"
            )
            self._read_ahead_stop = False
            self._read_ahead_thread = threading.Thread(
                target=self._read_ahead_worker, name="xnatfs-readahead", daemon=True
            )
            self._read_ahead_thread.start()

    def _open_index(self) -> None:
        """Open the index, cull it to ``size_limit`` (the limit may have shrunk since the last
        run) and read what it holds.  Caller holds ``_lock``."""
        refuse_planted_db(os.path.join(self._index_dir, "cache.db"))  # SQLite follows links
        index = _Index(
            self._index_dir,
            size_limit=self.size_limit,
            eviction_policy="least-recently-used",
            cull_limit=0,  # nothing here calls set(); _adopt_many culls (see _Index)
        )
        try:
            evicted = index.cull_unpinned(set())
            self._present = index.entries()
            self._volume = index.volume()
        except BaseException:
            index.close()
            raise
        self._stats["evictions"] += len(evicted)
        self._index = index

    def _set_index_aside(self, error: BaseException) -> None:
        """The index's SQLite file is damaged (a fault of the disk, a hand in the directory):
        the cache is only a copy of XNAT, so it starts empty instead of failing every start —
        the mount's, and ``xnatfs cache clear``'s, which was the way out."""
        log.warning(
            "content cache: the index %s is damaged (%s); starting with an empty cache",
            os.path.join(self._index_dir, "cache.db"),
            error,
        )
        set_index_aside(self._index_dir, self._partial_tag)

    def close(self, deadline: Optional[float] = None) -> None:
        """Cancel queued downloads, wait for running ones until ``deadline`` (time.monotonic();
        default 10 s from now), then close the index.

        Running downloads are told to stop at their next chunk, and their transfers are ended
        (``stop_transfers``): a server that sent a byte every 0.5 s, inside the read timeout,
        never completed a 1 MiB chunk, so the download never saw the flag and every unmount
        waited the whole 10 s for it (measured: 10.0 s; the hostile trickle test's teardown).
        Readers of any unfinished download get DownloadCancelled. Whatever is still running at
        the deadline is logged and abandoned (its result is discarded, never adopted).
        """
        if deadline is None:
            deadline = time.monotonic() + _DEFAULT_CLOSE_SECONDS
        with self._lock:
            pool, self._pool = self._pool, None
            self._closing = True
            running = list(self._downloads.values())
        if pool is None:
            return
        with self._read_ahead_cond:
            self._read_ahead_stop = True
            self._read_ahead_cond.notify()
        if self._read_ahead_thread is not None:
            self._read_ahead_thread.join(max(0.0, deadline - time.monotonic()))
        pool.shutdown(wait=False, cancel_futures=True)
        if running and self._stop_transfers is not None:
            self._stop_transfers()
        stuck = [d.uri for d in running if not d.wait(deadline)]
        if stuck:
            log.warning(
                "content cache: %d download(s) still running at close: %s",
                len(stuck),
                ", ".join(stuck),
            )
        with self._index_lock:
            index, self._index = self._index, None
            if index is not None:
                try:
                    self._flush_touches(index)
                finally:
                    index.close()
                    self._owners.release()

    def __enter__(self) -> "ContentCache":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------

    def open(self, key: ContentKey) -> "ContentHandle | StreamHandle":
        """A handle on ``key``'s bytes; never waits for the network.

        Long because: the "downloading? cached? else start" decision is one critical section
        (single flight) with its retry when a cached file vanished; it reads best whole.

        Cached → a handle on the cached file (and an LRU touch). A download of ``key`` running →
        a handle that follows it. Else a download is queued on the pool and followed. Raises
        RuntimeError if the cache is not started.

        A hit never touches SQLite: ``_present`` says the file is cached and its path follows
        from its key (``stored_name``), so it costs one ``os.open`` — made outside the lock,
        since after a page-cache drop it waits for the disk.  Its access time is remembered
        in memory and written to the index in batches.  A key this process has not seen cached
        is looked up in the index once (another mount may share the directory); a file that
        vanished behind our back (``xnatfs cache clear`` elsewhere) is forgotten and fetched
        again.  Every hit is checked first (``_check_cached``: size always, MD5 once per
        daemon); a damaged entry is dropped and fetched again.  A file larger than the cache
        could hold gets a ``StreamHandle`` (``_too_big``): served from the server, not kept.
        """
        hexname = key.hexname()
        ask_index = True
        while True:
            with self._lock:
                index = self._require_started()
                download = self._downloads.get(hexname)
                if download is None:
                    if ask_index and hexname not in self._present:
                        indexed = index.size_of(hexname)
                        if indexed is not None:
                            self._present[hexname] = indexed
                    ask_index = False
                    if hexname not in self._present:
                        if self._too_big(key):
                            self._stats["streamed"] += 1
                            self._stats["misses"] += 1
                            return StreamHandle(
                                key,
                                self._fetcher(key),
                                verify=self.verify,
                                idle_limit=self.stream_idle,
                            )
                        download = self._start_locked(key, hexname)
                if download is not None:
                    self._stats["misses"] += 1
                    fd = download.dup_fd()
                    self._pin_locked(hexname)
                    return ContentHandle(self, key, fd, download=download)
                self._pin_locked(hexname)  # eviction now leaves the file alone
                expected = self._present.get(hexname)
            try:
                fd = os.open(self._stored_path(hexname), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._unpin(hexname)
                self._drop(hexname, key, "cached file is gone")
                continue
            except BaseException:
                self._unpin(hexname)
                raise
            try:
                problem = self._check_cached(fd, key, hexname, expected)
            except BaseException:
                os.close(fd)
                self._unpin(hexname)
                raise
            if isinstance(problem, str):
                os.close(fd)
                self._unpin(hexname)
                self._drop(hexname, key, problem)
                continue
            with self._lock:
                self._stats["hits"] += 1
                self._touched[hexname] = time.time()
            return ContentHandle(self, key, fd, verification=problem)

    def _check_cached(
        self, fd: int, key: ContentKey, hexname: str, expected: Optional[int]
    ) -> "str | _Verification | None":
        """Why the cached file open at ``fd`` must not be served, or None (issue 18 §1).

        Every hit costs one ``fstat``: the size must be the indexed (and listed) one, so a
        truncated, extended or zero-length file after a crash is never served.  A file this
        process has not checked since it was last written (another process's or an earlier
        mount's; told by inode and mtime) is hashed against the listing's MD5 once, before
        the first byte is served; a file larger than ``VERIFY_INLINE_MAX`` is hashed by a
        thread while it is read instead (the ``_Verification`` returned: the read of its last
        bytes waits for it).  Without an MD5 (checksums off on the server) the size is all
        there is to check.
        """
        st = os.fstat(fd)
        if expected is not None and st.st_size != expected:
            return f"size {st.st_size} on disk, {expected} indexed"
        if key.size is not None and key.size >= 0 and st.st_size != key.size:
            return f"size {st.st_size} on disk, {key.size} listed"
        if not (self.verify and key.digest):
            return None
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._verified.get(hexname) == stamp:  # one dict read (atomic): the hit path
            return None
        if st.st_size > VERIFY_INLINE_MAX:
            return self._verify_behind(fd, key, hexname, stamp, st.st_size)
        with self._lock:
            gate = self._verifying.setdefault(hexname, threading.Lock())
        with gate:  # single flight: eight ``cp -r`` after a remount hash each file once
            with self._lock:
                if self._verified.get(hexname) == stamp:
                    return None
            try:
                got = digest_file(fd, st.st_size)
            finally:
                with self._lock:
                    self._verifying.pop(hexname, None)
            if got != key.digest.strip().lower():
                return f"MD5 {got}, listed {key.digest}"
            with self._lock:
                self._verified[hexname] = stamp
                self._stats["verified"] += 1
        return None

    def _verify_behind(
        self, fd: int, key: ContentKey, hexname: str, stamp: Tuple[int, int], size: int
    ) -> _Verification:
        """The running (or a new) background MD5 check of a large cached file (single flight)."""
        with self._lock:
            running = self._behind.get(hexname)
            if running is not None:
                return running

            def done(problem: Optional[str]) -> None:
                # drop first, then let new opens past the check: they fetch it again
                if problem is not None:
                    self._taint(hexname)
                    self._drop(hexname, key, problem)
                with self._lock:
                    self._behind.pop(hexname, None)
                    if problem is None:
                        self._verified[hexname] = stamp
                        self._stats["verified"] += 1

            check = _Verification(fd, size, key.digest.strip().lower(), done)
            self._behind[hexname] = check
            return check

    def _drop(self, hexname: str, key: ContentKey, problem: str) -> None:
        """Forget a damaged cached entry (row and file; handles open on it keep their fd), with
        one log line; the caller then fetches the file again."""
        log.warning(
            "content cache: %s (%s): %s; dropped, fetched again",
            key.uri,
            self._stored_path(hexname),
            problem,
        )
        with self._index_lock:
            with self._lock:
                index = self._index
                self._present.pop(hexname, None)
                self._verified.pop(hexname, None)
                self._touched.pop(hexname, None)
                self._stats["damaged"] += 1
            if index is not None:
                try:
                    index.drop(hexname)
                except Exception as exc:  # noqa: BLE001 - the fresh copy replaces it anyway
                    log.warning("content cache: cannot drop %s from the index: %s", hexname, exc)
                self._volume = index.volume()

    def state(self, key: ContentKey) -> str:
        """ "cached", "downloading" or "absent" (for ``.xnatfs/`` status and ``xnatfs cache``)."""
        hexname = key.hexname()
        with self._lock:
            self._require_started()
            if hexname in self._downloads:
                return "downloading"
            return "cached" if hexname in self._present else "absent"

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
            removed = index.clear(retry=True)
            with self._lock:
                self._present.clear()
                self._touched.clear()
            self._volume = index.volume()
            return removed

    @property
    def stats(self) -> Dict[str, int]:
        """Counters for ``.xnatfs/``: hits, misses, downloads, download_errors, bytes_downloaded,
        downloads_in_flight, evictions, bulk_fetches, damaged (entries dropped on open),
        verified (cached files hashed on first open), streamed (opens of files larger than the
        cache), entries, size_on_disk, pinned."""
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
