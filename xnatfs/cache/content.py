"""Content cache: whole files on disk, one download per file, readers served as bytes arrive.

Layout under ``directory`` (all directories mode 0700, files 0600)::

    index/            a diskcache.Cache: SQLite index + the cached files (LRU by size_limit)
        cache.db
        ab/abcd....bin      one cached file, named by the sha256 of its ContentKey
    partial/          downloads in progress (same filesystem, so adoption is a rename)

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
download starts (``_ensure_room``) and when a write meets ENOSPC (``_make_room``); a file larger
than the cache can hold is streamed, not kept (``stream.StreamHandle``).

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
folder, ``xnat-rest-api.md`` §3.3), and never looks into a URI to tell them apart.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import functools
import hashlib
import itertools
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import diskcache
from diskcache.core import MODE_BINARY

from xnatfs.cache.download import (Download, DownloadCancelled, Fetch, IntegrityError, Span,
                                    digest_file)
from xnatfs.cache.stream import StreamHandle
from xnatfs.cache.zipstream import ZipSplitter

log = logging.getLogger(__name__)

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

_DIR_MODE = 0o700

#: How long ``close()`` waits for running downloads when no deadline is given.
_DEFAULT_CLOSE_SECONDS = 10.0
#: insertions between two reads of the real index volume (another mount may share the index)
_VOLUME_SYNC = 64
#: a cached file up to this size that needs its MD5 checked is hashed in ``open`` (a hash of
#: 32 MiB takes ~50 ms); a larger one by a thread while it is read (``_Verification``)
VERIFY_INLINE_MAX = 32 << 20
#: members of a bulk fetch adopted in one index transaction
_SETTLE_BATCH = 64


#: ``ContentKey.kind`` of a file XNAT stores
FILE = "file"
#: ``ContentKey.kind`` of an archive XNAT makes on request (``<object>/files?format=zip``, §3.3)
ARCHIVE = "archive"
#: what turns an object's URI into the URI of its zip (§3.3); ``archive_object_uri`` undoes it
_ARCHIVE_SUFFIX = "/files?format=zip"


def archive_uri(object_uri: str) -> str:
    """The URI of the zip XNAT makes of everything below ``object_uri`` (§3.3)."""
    return object_uri.rstrip("/") + _ARCHIVE_SUFFIX


def archive_object_uri(uri: str) -> str:
    """The object whose zip ``uri`` (made by :func:`archive_uri`) is."""
    return uri[:-len(_ARCHIVE_SUFFIX)] if uri.endswith(_ARCHIVE_SUFFIX) else uri


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
    #: FILE (fetched with ``fetch``) or ARCHIVE (made by XNAT, fetched with
    #: ``fetch_archive``).  Not part of ``hexname``: an archive's URI differs anyway, and
    #: entries cached before the field existed keep their names.
    kind: str = FILE

    @classmethod
    def archive(cls, object_uri: str, mtime: Union[float, int, str, None] = None
                ) -> "ContentKey":
        """The zip of everything below ``object_uri``: size and digest unknown until made."""
        return cls(uri=archive_uri(object_uri), size=None, digest="", mtime=mtime, kind=ARCHIVE)

    def hexname(self) -> str:
        """sha256 of the key: the on-disk name and the index key; stable across processes."""
        return self._hexname

    @functools.cached_property
    def _hexname(self) -> str:
        # computed once per key object: open, state and prefetch all ask for it
        blob = json.dumps([self.uri, self.size, self.digest, self.mtime], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_ahead(path: str) -> None:
    """Ask the kernel to start reading ``path`` into the page cache (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)


def _sync_all(downloads: Sequence[Download]) -> None:
    """Make the partial files of ``downloads`` durable: one ``syncfs`` of the cache's file
    system when there are several (Linux), else ``fdatasync`` each."""
    if len(downloads) > 1 and _syncfs is not None:
        fd = downloads[0].dup_partial()
        if fd is not None:
            try:
                if _syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
    for download in downloads:
        download.sync()


def _load_syncfs() -> Optional[Callable[[int], int]]:
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.syncfs
        func.argtypes = [ctypes.c_int]
        func.restype = ctypes.c_int
        return func
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


# -- storage: diskcache with adoption -------------------------------------------------------------


def stored_name(hexname: str) -> str:
    """A cached file's path below ``index/``: ``ab/<hex>.bin``, so a file is found from its key
    alone (the index's ``filename`` column holds the same relative path, which is what
    diskcache's clean-up of evicted rows deletes).  One level of 256 folders, not diskcache's
    two (65,536): with two, nearly every new file of a scan made a new folder as well."""
    return os.path.join(hexname[:2], hexname + ".bin")


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

    #: the ``ab`` folders known to exist (one mkdir attempt each per process)
    _folders: Optional[Set[str]] = None

    def _make_parents(self, name: str) -> None:
        """Create the folder of ``name`` below the index (0700) unless it is known to exist."""
        if self._folders is None:
            self._folders = set()
        folder = os.path.dirname(name)
        if folder in self._folders:
            return
        try:
            os.mkdir(os.path.join(self.directory, folder), _DIR_MODE)
        except FileExistsError:
            pass
        self._folders.add(folder)

    def adopt_many(self, items: Sequence[Tuple[str, str, int, str]]
                   ) -> List[Optional[BaseException]]:
        """Move finished files (``(hex key, path, size, md5)``, on the same filesystem) into the
        store by rename and index them, all in one SQLite transaction; per item None or its
        error.  The MD5 (the listing's, checked) goes into the row's ``tag`` column ("" /
        NULL: none), so ``xnatfs cache verify`` can check a file without knowing its URI.

        Rows are written directly (what ``Cache.set`` would write for a raw str key with a
        file value: ``MODE_BINARY``, a relative ``filename``); diskcache's triggers keep its
        count and size.  One transaction for a batch instead of one ``set`` each: adopting the
        400 members of a zip cost ~0.5 ms a file with ``set``.  A key already indexed (only
        when another mount shares the directory) keeps its row and the new file is dropped,
        unless the indexed file is gone.
        """
        results: List[Optional[BaseException]] = [None] * len(items)
        moved: List[Tuple[int, str]] = []
        now = time.time()
        try:
            with self._transact(retry=True) as (sql, _cleanup):
                for i, (key, path, size, digest) in enumerate(items):
                    name = stored_name(key)
                    full = os.path.join(self.directory, name)
                    row = sql("SELECT rowid FROM Cache WHERE key = ? AND raw = 1",
                              (key,)).fetchone()
                    if row is not None:
                        if os.path.exists(full):
                            os.unlink(path)
                            continue
                        sql("DELETE FROM Cache WHERE rowid = ?", row)  # its file was lost
                    try:
                        self._make_parents(name)
                        try:
                            os.rename(path, full)
                        except FileNotFoundError:
                            # diskcache's removal of an evicted (or dropped) file also removes
                            # its folder once empty (``Disk.remove``: ``os.removedirs``)
                            self._folders.discard(os.path.dirname(name))   # type: ignore[union-attr]
                            self._make_parents(name)
                            os.rename(path, full)
                    except OSError as exc:
                        results[i] = exc
                        continue
                    moved.append((i, full))
                    sql("INSERT INTO Cache(key, raw, store_time, expire_time, access_time,"
                        " access_count, tag, size, mode, filename, value)"
                        " VALUES (?, 1, ?, NULL, ?, 0, ?, ?, ?, ?, NULL)",
                        (key, now, now, digest or None, size, MODE_BINARY, name))
        except BaseException as exc:
            # the rows are rolled back: do not leave unindexed files behind
            for i, full in moved:
                results[i] = exc
                try:
                    os.unlink(full)
                except OSError:
                    pass
            if not isinstance(exc, Exception):
                raise
        return results

    def entries(self) -> Dict[str, int]:
        """hex key -> size of every cached file (read once at start: ``ContentCache._present``).

        Rows in another layout (an older xnatfs, or not ours) are removed with their files:
        a cached file must be where ``stored_name`` says."""
        rows = self._sql("SELECT rowid, key, size, filename FROM Cache").fetchall()
        stray = [(rowid, filename) for rowid, key, _, filename in rows
                 if not isinstance(key, str) or filename != stored_name(key)]
        if stray:
            with self._transact(retry=True) as (sql, cleanup):
                for rowid, filename in stray:
                    sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                    if filename:
                        cleanup(filename)
        return {key: int(size or 0) for _, key, size, filename in rows
                if isinstance(key, str) and filename == stored_name(key)}

    def free_up(self, pinned: Set[str], need: int) -> List[str]:
        """The cache disk is full: delete the files of least-recently-used unpinned entries
        until ``need`` bytes are freed, *then* their rows.  Files first because SQLite needs
        disk space to delete a row (its WAL grows); a row whose file is gone is harmless (an
        open finds the file missing and fetches it again).  Returns the deleted keys."""
        rows = self._sql("SELECT key, size, filename FROM Cache WHERE raw = 1"
                         " ORDER BY access_time").fetchall()
        freed, victims = 0, []
        for key, size, filename in rows:
            if freed >= need:
                break
            if key in pinned or not filename:
                continue
            try:
                os.unlink(os.path.join(self.directory, filename))
            except FileNotFoundError:
                pass
            except OSError:
                continue
            victims.append(key)
            freed += int(size or 0)
        if victims:
            try:
                with self._transact(retry=True) as (sql, _cleanup):
                    for key in victims:
                        sql("DELETE FROM Cache WHERE key = ? AND raw = 1", (key,))
            except sqlite3.Error as exc:   # still no room: the rows go at their next open
                log.warning("content cache: cannot drop %d evicted rows: %s", len(victims), exc)
        return victims

    def size_of(self, key: str) -> Optional[int]:
        """The indexed size of ``key``, None when it is not indexed (one SQLite read)."""
        row = self._sql("SELECT size FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        return None if row is None else int(row[0] or 0)

    def drop(self, key: str) -> bool:
        """Delete ``key``'s row and file (a damaged entry); True if there was a row."""
        with self._transact(retry=True) as (sql, cleanup):
            row = sql("SELECT rowid, filename FROM Cache WHERE key = ? AND raw = 1",
                      (key,)).fetchone()
            if row is None:
                return False
            sql("DELETE FROM Cache WHERE rowid = ?", (row[0],))
            if row[1]:
                cleanup(row[1])
        return True

    def touch_many(self, touched: Dict[str, float]) -> None:
        """Write access times kept in memory (LRU order for ``cull_unpinned``), in one
        transaction instead of one per open."""
        if not touched:
            return
        with self._transact(retry=True) as (sql, _cleanup):
            for key, when in touched.items():
                sql("UPDATE Cache SET access_time = ?, access_count = access_count + 1 "
                    "WHERE key = ? AND raw = 1", (when, key))

    def cull_unpinned(self, pinned: Set[str], target: Optional[int] = None) -> List[str]:
        """Delete least-recently-used entries whose key is not in ``pinned`` until ``volume()`` is
        at most ``target`` (default ``size_limit``); returns the deleted keys.

        A pinned file is open, so deleting it would free no space until its last reader closes;
        when only pinned entries are left the cache stays over its limit until they are unpinned.
        """
        removed: List[str] = []
        limit = self.size_limit if target is None else target
        while self.volume() > limit:
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


class _Verification:
    """The MD5 check of one large cached file this daemon has not checked yet, run by a thread
    while its first readers are served (issue 18 §1: "verify while the first reader streams
    through it, holding back the final bytes until the digest matches").  Hashing a file of
    gigabytes in ``open`` could take longer than ``--timeout`` on a slow disk; this way only
    the read of the last bytes waits, with its deadline.  ``done(problem)`` is called once
    with None (right) or why not, before the readers wake."""

    def __init__(self, fd: int, size: int, digest: str,
                 done: Callable[[Optional[str]], None]) -> None:
        self._fd = os.dup(fd)
        self._size = size
        self._digest = digest
        self._done_cb = done
        self._cond = threading.Condition()
        self.problem: Optional[str] = None
        self.finished = False
        threading.Thread(target=self._run, name="xnatfs-verify", daemon=True).start()

    def _run(self) -> None:
        try:
            got = digest_file(self._fd, self._size)
            problem = None if got == self._digest else f"MD5 {got}, listed {self._digest}"
        except OSError as exc:
            problem = f"cannot hash it: {exc}"
        finally:
            os.close(self._fd)
        try:
            self._done_cb(problem)
        finally:
            with self._cond:
                self.problem = problem
                self.finished = True
                self._cond.notify_all()

    def wait(self, deadline: float) -> Optional[str]:
        """The verdict (None: right); TimeoutError (ETIMEDOUT) if not there by ``deadline``."""
        with self._cond:
            while not self.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(errno.ETIMEDOUT, "MD5 check of a cached file not done "
                                                        "in time")
                self._cond.wait(remaining)
            return self.problem


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
        verification: Optional[_Verification] = None,
    ) -> None:
        #: Read-only.
        self.key = key
        self._cache = cache
        self._fd = fd
        self._download = download
        #: a cached file still being hashed: reads of its last bytes wait for the verdict
        self._verification = verification
        self._closed = False
        self._close_lock = threading.Lock()
        #: attempts (``Download`` generations) this handle has served bytes of: a refetch
        #: rewrites the file, so a reader may hold bytes of a failed attempt (``_served``)
        self._served: Set[int] = set()
        self._served_lock = threading.Lock()

    @property
    def verified(self) -> bool:
        """Served from a complete cached copy whose check is done (no download, no MD5 check
        pending): what the kernel may keep of earlier opens depends on it
        (``fs.keepcache``)."""
        return self._download is None and self._verification is None

    def _served_span(self, span: Span) -> int:
        """Note the attempt ``span``'s bytes came from; at the final read (verdict in), EIO if
        this handle ever served bytes of another attempt than the verified one: a successful
        end of file then means every byte this handle gave out was verified."""
        with self._served_lock:
            if span.n > 0:
                self._served.add(span.generation)
            other = sorted(self._served - {span.generation})
            if span.final and other:
                raise IntegrityError(
                    f"{self.key.uri}: this open read bytes of download attempt "
                    f"{other[0] + 1}, which failed its size or MD5 check; only attempt "
                    f"{span.generation + 1} was verified (open the file again)")
        return span.n

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
            data, span = self._download.read_of(self._fd, offset, size, deadline)
            self._served_span(span)
            return data
        if size <= 0 or offset < 0:
            return b""
        self._hold_back(offset, size, deadline)
        return os.pread(self._fd, size, offset)

    def _hold_back(self, offset: int, size: int, deadline: float) -> None:
        """A read reaching the end of a cached file still being hashed waits for the verdict;
        EIO when it is bad (the entry is dropped by then: the next open fetches it again)."""
        check = self._verification
        if check is None or self.key.size is None or offset + size < self.key.size:
            return
        problem = check.wait(deadline)
        if problem is not None:
            raise IntegrityError(f"cached copy of {self.key.uri}: {problem}")
        self._verification = None

    def span(self, offset: int, size: int, deadline: float) -> "tuple[int, int]":
        """``(fd, n)``: the ``n`` bytes at ``offset`` (at most ``size``; fewer only at the end of
        the file) can be read from ``fd`` now.  For FUSE ``read_buf``, which lets libfuse copy
        (or splice) them from the fd without the bytes passing through Python.  Waits and
        raises like :meth:`read`; the fd stays valid until :meth:`close`."""
        if self._closed:
            raise OSError(errno.EBADF, f"content handle for {self.key.uri} is closed")
        if self._download is not None:
            return self._fd, self._served_span(self._download.span_of(offset, size, deadline))
        if size <= 0 or offset < 0:
            return self._fd, 0
        self._hold_back(offset, size, deadline)
        if self.key.size is not None and self.key.size >= 0:
            size = max(0, min(size, self.key.size - offset))
        return self._fd, size

    def wait(self, deadline: float) -> bool:
        """Block until the whole file is there (or failed) or ``deadline``; True if it ended."""
        return True if self._download is None else self._download.wait(deadline)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
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
        fetch_archive: Optional[Fetch] = None,
    ) -> None:
        #: Read-only after construction.
        self.directory = os.path.abspath(os.fspath(directory))
        self.size_limit = int(size_limit)
        self.max_downloads = max(1, int(max_downloads))
        #: Check MD5 digests from the listing (the size is always checked).
        self.verify = verify
        self._fetch = fetch
        #: fetches keys of kind ARCHIVE and the zips of ``bulk`` (tests give one fetch for all)
        self._fetch_archive = fetch_archive or fetch
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
        self._partial_tag = secrets.token_hex(4)
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
        #: bytes the index holds (``volume()``), kept up to date here and re-read from SQLite
        #: whenever it nears the limit, so an insertion costs no volume query
        self._volume = 0
        self._adopted_since_sync = 0
        #: bumps whenever readers may have been served bytes that failed a check (``taints``)
        self._taints = 0
        self._stats = {
            "hits": 0,             # opens served by a complete cached copy
            "misses": 0,           # opens that started or joined a download
            "downloads": 0,        # downloads started
            "download_errors": 0,  # downloads that ended in an error
            "bytes_downloaded": 0, # bytes received by finished downloads (running ones added live)
            "evictions": 0,        # entries culled by the size limit
            "bulk_fetches": 0,     # archives fetched to bring many files at once (``bulk``)
            "damaged": 0,          # cached entries dropped on open: wrong size, gone, bad MD5
            "verified": 0,         # cached files hashed on first open (written by others)
            "streamed": 0,         # opens served straight from the server (file > cache)
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
                cull_limit=0,  # nothing here calls set(); _adopt_many culls (see _Index)
            )
            evicted = self._index.cull_unpinned(set())   # the limit may have shrunk since last run
            self._stats["evictions"] += len(evicted)
            self._present = self._index.entries()
            self._touched = {}
            self._volume = self._index.volume()
            self._closing = False
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_downloads, thread_name_prefix="xnatfs-download"
            )
            self._read_ahead_stop = False
            self._read_ahead_thread = threading.Thread(
                target=self._read_ahead_worker, name="xnatfs-readahead", daemon=True)
            self._read_ahead_thread.start()

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
        with self._read_ahead_cond:
            self._read_ahead_stop = True
            self._read_ahead_cond.notify()
        if self._read_ahead_thread is not None:
            self._read_ahead_thread.join(max(0.0, deadline - time.monotonic()))
        pool.shutdown(wait=False, cancel_futures=True)
        stuck = [d.uri for d in running if not d.wait(deadline)]
        if stuck:
            log.warning("content cache: %d download(s) still running at close: %s",
                        len(stuck), ", ".join(stuck))
        with self._index_lock:
            index, self._index = self._index, None
            if index is not None:
                try:
                    self._flush_touches(index)
                finally:
                    index.close()

    def __enter__(self) -> "ContentCache":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------

    def open(self, key: ContentKey) -> "ContentHandle | StreamHandle":
        """A handle on ``key``'s bytes; never waits for the network.

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
                            return StreamHandle(key, self._fetcher(key), verify=self.verify)
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

    def _check_cached(self, fd: int, key: ContentKey, hexname: str,
                      expected: Optional[int]) -> "str | _Verification | None":
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
        if self._verified.get(hexname) == stamp:   # one dict read (atomic): the hit path
            return None
        if st.st_size > VERIFY_INLINE_MAX:
            return self._verify_behind(fd, key, hexname, stamp, st.st_size)
        with self._lock:
            gate = self._verifying.setdefault(hexname, threading.Lock())
        with gate:   # single flight: eight ``cp -r`` after a remount hash each file once
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

    def _verify_behind(self, fd: int, key: ContentKey, hexname: str, stamp: Tuple[int, int],
                       size: int) -> _Verification:
        """The running (or a new) background MD5 check of a large cached file (single flight)."""
        with self._lock:
            running = self._behind.get(hexname)
            if running is not None:
                return running

            def done(problem: Optional[str]) -> None:
                # drop first, then let new opens past the check: they fetch it again
                if problem is not None:
                    self._taint()
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
        log.warning("content cache: %s (%s): %s; dropped, fetched again", key.uri,
                    self._stored_path(hexname), problem)
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

    def _too_big(self, key: ContentKey) -> bool:
        """Is ``key`` larger than the cache could ever hold (its limit, or the free disk plus
        all it could evict)?  Such a file is streamed from the server and not kept (gcsfuse).
        Caller holds self._lock."""
        if key.size is None or key.size < 0:
            return False
        if key.size > self.size_limit:
            return True
        try:
            st = os.statvfs(self._partial_dir)
        except OSError:
            return False
        free = st.f_bavail * st.f_frsize
        return key.size > free + self._volume - self._reserved

    def _stored_path(self, hexname: str) -> str:
        """Where the cached file of ``hexname`` lives (``stored_name``)."""
        return os.path.join(self._index_dir, stored_name(hexname))

    def prefetch(self, keys: Iterable[ContentKey]) -> int:
        """Queue downloads of the keys that are neither cached nor downloading; returns how many.

        Keys already cached are read ahead from disk instead (``POSIX_FADV_WILLNEED``): a
        reader going through a folder of cached files then finds the next ones in the page
        cache rather than waiting for the disk file after file.
        """
        started = 0
        cached: List[str] = []
        for key in keys:
            hexname = key.hexname()
            with self._lock:
                self._require_started()
                if hexname in self._downloads:
                    continue
                if hexname in self._present:
                    cached.append(hexname)
                    continue
                if self._too_big(key):
                    continue          # streamed when opened, never kept
                self._start_locked(key, hexname)
                started += 1
        if cached:
            with self._read_ahead_cond:
                self._read_ahead_queue.extend(self._stored_path(h) for h in cached)
                self._read_ahead_cond.notify()
        return started

    def _read_ahead_worker(self) -> None:
        """Thread: pages in the files ``prefetch`` found cached, off the FUSE threads (after a
        page-cache drop even opening one waits for the disk)."""
        while True:
            with self._read_ahead_cond:
                while not self._read_ahead_queue and not self._read_ahead_stop:
                    self._read_ahead_cond.wait()
                if self._read_ahead_stop:
                    return
                path = self._read_ahead_queue.popleft()
            _read_ahead(path)

    def bulk(self, uri: str, keys: Iterable[ContentKey],
             key_of: Callable[[str], Optional[ContentKey]], min_files: int = 1,
             max_files: int = 4096) -> int:
        """Fetch many files with one request: ``uri`` answers a zip of them (a resource's
        ``files?format=zip``, ``xnat-rest-api.md`` §3.3); returns how many it will bring (0
        when fewer than ``min_files`` of ``keys`` are neither cached nor downloading).

        A download is registered at once for each of those (at most ``max_files``), so a
        reader who opens one of those files joins it and is served as soon as its member
        streams in — not after the whole zip.  ``key_of(member name)`` maps the zip's members
        to keys.  A member that is missing, damaged, or does not match its key's size and MD5
        is then fetched on its own, like any download.
        """
        with self._lock:
            self._require_started()
            todo: Dict[str, ContentKey] = {}
            for key in keys:
                hexname = key.hexname()
                if (hexname not in self._downloads and hexname not in self._present
                        and not self._too_big(key)):
                    todo.setdefault(hexname, key)
            if len(todo) < max(1, min_files):
                return 0
            wanted = {hexname: self._register_locked(key, hexname)
                      for hexname, key in itertools.islice(todo.items(), max_files)}
            self._stats["bulk_fetches"] += 1
            try:
                assert self._pool is not None
                future = self._pool.submit(self._run_bulk, uri, dict(wanted), key_of)
            except RuntimeError:
                for hexname, download in wanted.items():
                    del self._downloads[hexname]
                    download.fail(DownloadCancelled(download.uri), lambda error: None)
                raise RuntimeError("content cache is closing") from None
        future.add_done_callback(lambda f: self._on_bulk_cancelled(f, wanted))
        return len(wanted)

    def _on_bulk_cancelled(self, future: concurrent.futures.Future,
                           wanted: Dict[str, Download]) -> None:
        """Done-callback: a bulk fetch whose queued work was cancelled (``close``) never ran,
        so none of its downloads will end by itself."""
        if future.cancelled():
            for hexname, download in wanted.items():
                download.fail(DownloadCancelled(download.uri),
                              lambda error, d=download, h=hexname: self._unregister(d, h, error))

    def _run_bulk(self, uri: str, wanted: Dict[str, Download],
                  key_of: Callable[[str], Optional[ContentKey]]) -> None:
        """Pool task of ``bulk``: stream the zip, each member into its download, then check and
        adopt the members (``_settle``)."""
        current: List[Any] = []    # [hexname, download] of the member being fed
        fed: List[Tuple[Download, str]] = []

        def size_of(name: str) -> Optional[int]:
            key = key_of(name)
            return key.size if key is not None else None

        def on_start(name: str) -> Optional[Callable[[bytes], None]]:
            key = key_of(name)
            download = wanted.pop(key.hexname(), None) if key is not None else None
            if download is None:
                return None
            current[:] = [key.hexname(), download]
            return download.feed()

        def on_end(name: str, ok: bool) -> None:
            if not current:
                return
            hexname, download = current
            current.clear()
            download.feed_done()
            # the verdict before the next member: a reader of this one's last bytes waits for it
            problem = download.check_fed() if ok else "size or CRC-32 wrong in the zip"
            if problem is None:
                fed.append((download, hexname))
            else:
                log.info("content cache: %s from the zip: %s; fetched alone", download.uri,
                         problem)
                self._fetch_alone(download, hexname)

        # every member is checked against its MD5 as it ends (``on_end``): the zip's own
        # CRC-32 is needed only where the listing has no digest
        digests = self.verify and all(d.digest for d in wanted.values())
        splitter = ZipSplitter(size_of, on_start, on_end, check_crc=not digests)
        members = len(wanted)

        def sink(chunk: bytes) -> None:
            if self._closing:
                raise DownloadCancelled(uri)
            splitter.feed(chunk)

        problem: Optional[BaseException] = None
        need = sum(d.size or 0 for d in wanted.values())
        self._ensure_room(need)      # room first, as for a single download
        try:
            self._fetch_archive(uri, sink)
            splitter.close()
        except BaseException as exc:  # noqa: BLE001 - what is left is fetched file by file
            problem = exc
        finally:
            if current:
                hexname, download = current
                download.feed_done()
                wanted[hexname] = download
            for hexname, download in wanted.items():
                self._fetch_alone(download, hexname)
            with self._lock:
                self._reserved -= need
            for at in range(0, len(fed), _SETTLE_BATCH):
                self._settle(fed[at:at + _SETTLE_BATCH])
        if problem is not None or wanted:
            log.info("content cache: bulk fetch %s: %d of %d file(s) from the zip%s; the "
                     "others are fetched alone", uri, members - len(wanted), members,
                     f" ({problem})" if problem is not None else "")

    def _settle(self, batch: List[Tuple[Download, str]]) -> None:
        """Make fed downloads (checked as they ended: size and MD5) durable and adopt them in
        one transaction; one that cannot be adopted fails (its readers had their verdict).

        Done after the zip has arrived, not beside it: the fsyncs and the index rows cost
        time, and the readers of the members (who wait only for each member's own verdict)
        came first.  One ``syncfs`` for the batch where the system has it instead of one
        ``fdatasync`` per file (benchmarks/RESULTS.md).
        """
        good: List[Tuple[Download, str]] = []
        for download, hexname in batch:
            if self._closing:
                download.fail(DownloadCancelled(download.uri),
                              lambda error, d=download, h=hexname: self._unregister(d, h, error))
                continue
            good.append((download, hexname))
        if not good:
            return
        _sync_all([d for d, _ in good])
        errors = self._adopt_many([(h, d.partial_path, d.arrived, d.digest) for d, h in good])
        for (download, hexname), error in zip(good, errors):
            ended = lambda e, d=download, h=hexname: self._unregister(d, h, e)  # noqa: E731
            if error is None:
                download.adopted(ended)
            else:
                download.fail(error, ended)

    def state(self, key: ContentKey) -> str:
        """"cached", "downloading" or "absent" (for ``.xnatfs/`` status and ``xnatfs cache``)."""
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
        partial = os.path.join(self._partial_dir,
                               f"{hexname}.{self._partial_tag}{next(self._partial_seq)}.part")
        download = Download(
            key.uri, key.size, key.digest, partial, self._fetcher(key),
            verify=self.verify, cancelled=lambda: self._closing,
            max_bytes=self.size_limit, make_room=self._make_room, restarted=self._taint,
        )
        self._downloads[hexname] = download
        self._stats["downloads"] += 1
        return download

    def _submit_locked(self, download: Download, hexname: str) -> None:
        """Queue a registered download on the pool. Caller holds self._lock; raises
        RuntimeError when the pool is shut down."""
        if self._pool is None:
            raise RuntimeError("content cache is closing")
        try:
            future = self._pool.submit(self._run, download, hexname)
        except RuntimeError as exc:  # pool shut down under us
            raise RuntimeError("content cache is closing") from exc
        future.add_done_callback(lambda f: self._on_cancelled(f, download, hexname))

    def _fetch_alone(self, download: Download, hexname: str) -> None:
        """A registered download whose bytes a bulk fetch did not deliver: one GET of its own
        (or, when the cache is closing, the readers learn that)."""
        download.restart()
        with self._lock:
            try:
                self._submit_locked(download, hexname)
                return
            except RuntimeError:
                pass
        download.fail(DownloadCancelled(download.uri),
                      lambda error: self._unregister(download, hexname, error))

    def _on_cancelled(self, future: concurrent.futures.Future, download: Download,
                      hexname: str) -> None:
        """Done-callback: a download whose queued work was cancelled (``close``) never ran."""
        if future.cancelled():
            download.fail(DownloadCancelled(download.uri),
                          lambda error: self._unregister(download, hexname, error))

    def _run(self, download: Download, hexname: str) -> None:
        """Pool task. The download adopts its file, then unregisters, then wakes its readers, so
        ``open``/``state`` see the key downloading or cached, never absent in between."""
        need = download.size or 0
        if need:
            self._ensure_room(need)
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
            download.run(adopt=lambda path: self._adopt(hexname, path, download.digest),
                         ended=ended)
        finally:
            if need and not released:
                released = True
                with self._lock:
                    self._reserved -= need

    def _ensure_room(self, need: int) -> None:
        """Before a download of ``need`` bytes starts: evict least-recently-used unpinned
        entries so that the index plus running downloads stay under the limit and the cache
        disk has room for it (issue 18 §0: eviction ran only after an insertion, so a full
        cache disk gave ENOSPC with nothing evicted)."""
        with self._index_lock:
            with self._lock:
                index = self._index
                self._reserved += need
                reserved = self._reserved
                pinned = set(self._pins)
            if index is None:
                return
            target = self.size_limit - reserved
            try:
                st = os.statvfs(self._partial_dir)
                free = st.f_bavail * st.f_frsize
                if free < need:
                    target = min(target, self._volume - (need - free))
            except OSError:
                pass
            if self._volume <= target:
                return
            self._cull(index, pinned, max(0, target))

    def _make_room(self, need: int) -> bool:
        """A write into ``partial/`` failed with ENOSPC: evict at least ``need`` bytes of
        unpinned entries; True if anything was evicted (the write is then tried again)."""
        with self._index_lock:
            with self._lock:
                index = self._index
                pinned = set(self._pins)
            if index is None:
                return False
            evicted = index.free_up(pinned, need)
            self._volume = index.volume()
            with self._lock:
                for gone in evicted:
                    self._present.pop(gone, None)
                    self._touched.pop(gone, None)
                    self._verified.pop(gone, None)
                self._stats["evictions"] += len(evicted)
            evicted = len(evicted)
        log.info("content cache: cache disk full; evicted %d entr%s to make room",
                 evicted, "y" if evicted == 1 else "ies")
        return evicted > 0

    def _cull(self, index: "_Index", pinned: Set[str], target: int) -> int:
        """Evict down to ``target`` bytes; caller holds ``_index_lock``.  Returns how many."""
        self._flush_touches(index)
        evicted = index.cull_unpinned(pinned, target)
        self._volume = index.volume()
        with self._lock:
            for gone in evicted:
                self._present.pop(gone, None)
                self._touched.pop(gone, None)
                self._verified.pop(gone, None)
            self._stats["evictions"] += len(evicted)
        return len(evicted)

    @property
    def taints(self) -> int:
        """How many times readers may have been served bytes that then failed their check (a
        download attempt thrown away, a download failed, a cached file failing its MD5 while
        read).  ``fs.keepcache``: unchanged since the pages of a file were dropped means every
        page read since is of verified bytes."""
        return self._taints

    def _taint(self) -> None:
        with self._lock:
            self._taints += 1

    def _unregister(self, download: Download, hexname: str,
                    error: Optional[BaseException]) -> None:
        """After this returns nobody can join ``download`` (joins happen under self._lock)."""
        with self._lock:
            if self._downloads.get(hexname) is download:
                del self._downloads[hexname]
            self._stats["bytes_downloaded"] += download.bytes_received
            if error is not None:
                self._stats["download_errors"] += 1
                self._taints += 1

    def _flush_touches(self, index: "_Index") -> None:
        """Write the remembered access times (before a cull reads them, and at close)."""
        with self._lock:
            touched, self._touched = self._touched, {}
        index.touch_many(touched)

    def _adopt(self, hexname: str, partial_path: str, digest: str) -> None:
        """Move one verified partial file into the index (raises if the index refuses it)."""
        error = self._adopt_many([(hexname, partial_path, os.stat(partial_path).st_size,
                                   digest)])[0]
        if error is not None:
            raise error

    def _adopt_many(self, items: Sequence[Tuple[str, str, int, str]]
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
            sizes = [(hexname, size) for (hexname, _, size, _), error in zip(items, results)
                     if error is None]
            stamps = {}
            for hexname, _ in sizes:
                try:   # checked by this process as it arrived: no hashing on its first open
                    st = os.stat(self._stored_path(hexname))
                except OSError:
                    continue
                if st.st_ino == inodes.get(hexname):   # ours, not a copy another mount kept
                    stamps[hexname] = (st.st_ino, st.st_mtime_ns)
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
                evicted = index.cull_unpinned(pinned)
                self._volume = index.volume()
                self._adopted_since_sync = 0
                if evicted:
                    with self._lock:
                        for gone in evicted:
                            self._present.pop(gone, None)
                            self._touched.pop(gone, None)
                            self._verified.pop(gone, None)
        if evicted:
            log.debug("content cache: evicted %d entr%s", len(evicted),
                      "y" if len(evicted) == 1 else "ies")
            with self._lock:
                self._stats["evictions"] += len(evicted)
        return results


# -- offline check: ``xnatfs cache verify`` --------------------------------------------------------


@dataclass
class VerifyReport:
    """What ``verify_entries`` found: counts, and one line per bad entry."""

    checked: int = 0
    #: entries whose MD5 was compared (the others have no digest: size only)
    hashed: int = 0
    bad: int = 0
    dropped: int = 0
    problems: List[str] = dataclasses.field(default_factory=list)


def verify_entries(directory: Union[str, os.PathLike], repair: bool = False,
                   progress: Optional[Callable[[int], None]] = None,
                   on_total: Optional[Callable[[int, int], None]] = None) -> VerifyReport:
    """Check every entry of the content cache at ``directory`` (its ``content`` folder):
    the file exists, has the indexed size, and its MD5 is the one stored with it (the row's
    ``tag``; entries without one are checked by size only).  With ``repair``, bad entries are
    dropped (row and file) so the next read fetches them again.

    Safe beside a running mount: only the index is opened (no partial files are touched), each
    drop is one SQLite transaction that deletes the row only if it is still the one checked
    (same rowid and store time), and a mount that finds a dropped file gone fetches it again.
    ``on_total(entries, bytes)`` is called once, ``progress(bytes)`` after each file.
    """
    index_dir = os.path.join(os.fspath(directory), "index")
    report = VerifyReport()
    index = _Index(index_dir, eviction_policy="least-recently-used", cull_limit=0)
    try:
        rows = index._sql("SELECT rowid, key, size, tag, filename, store_time FROM Cache"
                          " WHERE raw = 1").fetchall()
        if on_total is not None:
            on_total(len(rows), sum(int(r[2] or 0) for r in rows))
        for rowid, key, size, tag, filename, stored in rows:
            size = int(size or 0)
            report.checked += 1
            problem = _entry_problem(os.path.join(index_dir, filename or ""), size, tag or "")
            if tag:
                report.hashed += 1
            if progress is not None:
                progress(size)
            if problem is None:
                continue
            report.bad += 1
            report.problems.append(f"{filename}: {problem}")
            if repair:
                with index._transact(retry=True) as (sql, cleanup):
                    gone = sql("DELETE FROM Cache WHERE rowid = ? AND key = ? AND"
                               " store_time = ?", (rowid, key, stored)).rowcount
                    if gone and filename:
                        cleanup(filename)
                report.dropped += int(bool(gone))
    finally:
        index.close()
    return report


def _entry_problem(path: str, size: int, digest: str) -> Optional[str]:
    """Why the cached file at ``path`` is bad, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            return f"size {actual}, indexed {size}"
        if digest:
            got = digest_file(fd, size)
            if got != digest.strip().lower():
                return f"MD5 {got}, expected {digest}"
    finally:
        os.close(fd)
    return None
