"""Fetching ahead: page cached files in (``prefetch``) and bring many files in one zip (``bulk``).

``BulkFetches`` builds on :class:`~xnatfs.cache.store.ContentStore`: a bulk fetch registers a
download per wanted member, streams the archive through ``ZipSplitter`` into them, adopts the
good ones in batches (one ``syncfs`` for many files) and leaves the rest to single downloads.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from xnatfs.cache.download import Chunk, Download, DownloadCancelled, Sink
from xnatfs.cache.key import ContentKey
from xnatfs.cache.store import ContentStore
from xnatfs.cache.zipstream import ZipSplitter

#: one logger for the whole content cache, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.cache.content")
#: members of a bulk fetch adopted in one index transaction
_SETTLE_BATCH = 64
#: Create the members' partial files in a helper thread ahead of the zip (True), or each when
#: its member begins, in the feeding thread (False).  Creating a file is a system call that
#: releases the GIL: ahead, it overlaps the download instead of stalling it.  Measured worth
#: in benchmarks/RESULTS.md ("B2: the bulk zip path's CPU").
CREATE_AHEAD = True


class _CreateAhead:
    """A thread creating the partial files of a bulk fetch's downloads in order, ahead of the
    zip's members; the feeder creates any it reaches first (``Download`` creates under its own
    lock, so never twice).  ``stop()`` returns once the thread has ended: afterwards no file is
    created behind the owner's back (a download failed after that keeps no stray partial)."""

    def __init__(self, downloads: Sequence[Download]) -> None:
        self._downloads = downloads
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="xnatfs-bulk-create", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for download in self._downloads:
            if self._stop:
                return
            try:
                download.prepare()
            except OSError as exc:  # EMFILE, ENOSPC: the feeder meets it again, in its way
                log.debug("content cache: partial files not created ahead: %s", exc)
                return

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


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

#: folders whose read-ahead waits for a READ (``prefetch(..., after=)``) at most
READ_AHEAD_PENDING_MAX = 64


class BulkFetches(ContentStore):
    """``prefetch`` and ``bulk`` of :class:`~xnatfs.cache.content.ContentCache`."""

    def prefetch(self, keys: Iterable[ContentKey], after: Optional[ContentKey] = None) -> int:
        """Queue downloads of the keys that are neither cached nor downloading; returns how many.

        Keys already cached are read ahead from disk instead (``POSIX_FADV_WILLNEED``): a
        reader going through a folder of cached files then finds the next ones in the page
        cache rather than waiting for the disk file after file.  With ``after`` (the file whose
        open asks), only once the kernel asks that open for bytes (:meth:`read_ahead_due`): a
        reader whose pages are all in the kernel's cache sends no READ, and paging in the
        next files for it cost a thread hand-off and three system calls per file for nothing
        (a page-cache-warm pass over 2,000 cached files: 1.3x the daemon's CPU;
        benchmarks/RESULTS.md, "Prefetch in half windows").
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
                    continue  # streamed when opened, never kept
                self._start_locked(key, hexname)
                started += 1
        if cached and after is not None:
            with self._read_ahead_cond:
                pending = self._read_ahead_after
                # newest last: the bound below drops the oldest, never the entry just made
                pending.pop(after.hexname(), None)
                pending[after.hexname()] = cached
                while len(pending) > READ_AHEAD_PENDING_MAX:
                    pending.popitem(last=False)
        elif cached:
            self._queue_read_ahead(cached)
        return started

    def read_ahead_due(self, hexname: str) -> None:
        """The kernel asked an open of ``hexname`` for bytes: page in the files ``prefetch``
        put off until then (``after=``)."""
        with self._read_ahead_cond:
            cached = self._read_ahead_after.pop(hexname, None)
        if cached:
            self._queue_read_ahead(cached)

    def _queue_read_ahead(self, hexnames: List[str]) -> None:
        with self._read_ahead_cond:
            self._read_ahead_queue.extend(self._stored_path(h) for h in hexnames)
            self._read_ahead_cond.notify()

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

    def bulk(
        self,
        uri: str,
        keys: Iterable[ContentKey],
        key_of: Callable[[str], Optional[ContentKey]],
        min_files: int = 1,
        max_files: int = 4096,
    ) -> int:
        """Fetch many files with one request: ``uri`` answers a zip of them (a resource's
        ``files?format=zip``, ``docs/XNAT-API.md`` §3.3); returns how many it will bring (0
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
            room = self._room_locked()
            for key in keys:
                hexname = key.hexname()
                if (
                    hexname not in self._downloads
                    and hexname not in self._present
                    and not self._too_big(key, room)
                ):
                    todo.setdefault(hexname, key)
            if len(todo) < max(1, min_files):
                return 0
            wanted = {
                hexname: self._register_locked(key, hexname)
                for hexname, key in itertools.islice(todo.items(), max_files)
            }
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

    def _on_bulk_cancelled(
        self, future: concurrent.futures.Future, wanted: Dict[str, Download]
    ) -> None:
        """Done-callback: a bulk fetch whose queued work was cancelled (``close``) never ran,
        so none of its downloads will end by itself."""
        if future.cancelled():
            for hexname, download in wanted.items():
                download.fail(DownloadCancelled(download.uri), self._ender(download, hexname))

    def _run_bulk(
        self, uri: str, wanted: Dict[str, Download], key_of: Callable[[str], Optional[ContentKey]]
    ) -> None:
        """Pool task of ``bulk``: stream the zip, each member into its download, then check and
        adopt the members (``_settle``).

        Long because: the splitter's three callbacks share the member being fed with the
        streaming loop and the clean-up after it; as closures they stay next to it."""
        current: List[Any] = []  # [hexname, download] of the member being fed
        fed: List[Tuple[Download, str]] = []

        def size_of(name: str) -> Optional[int]:
            key = key_of(name)
            return key.size if key is not None else None

        def on_start(name: str) -> Optional[Sink]:
            key = key_of(name)
            if key is None:
                return None
            download = wanted.pop(key.hexname(), None)
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
                log.info("content cache: %s from the zip: %s; fetched alone", download.uri, problem)
                self._fetch_alone(download, hexname)

        # every member is checked against its MD5 as it ends (``on_end``): the zip's own
        # CRC-32 is needed only where the listing has no digest
        digests = self.verify and all(d.digest for d in wanted.values())
        splitter = ZipSplitter(size_of, on_start, on_end, check_crc=not digests)
        members = len(wanted)

        def sink(chunk: Chunk) -> None:
            if self._closing:
                raise DownloadCancelled(uri)
            splitter.feed(chunk)

        problem: Optional[BaseException] = None
        need = sum(d.size or 0 for d in wanted.values())
        with self._lock:
            self._reserved += need
        self._ensure_room(need)  # room first, as for a single download (never raises)
        ahead = _CreateAhead(list(wanted.values())) if CREATE_AHEAD else None
        try:
            self._fetch_archive(uri, sink)
            splitter.close()
        except BaseException as exc:  # noqa: BLE001 - what is left is fetched file by file
            problem = exc
        finally:
            if ahead is not None:
                ahead.stop()  # before any download is failed or refetched below
            broke_off = None
            if current:
                hexname, download = current
                download.feed_done()
                broke_off = hexname
                wanted[hexname] = download
            for hexname, download in wanted.items():
                # the member cut off goes on from its own GET: its reader has read the
                # zip's bytes of it (compared with the GET's before it goes on)
                self._fetch_alone(download, hexname, go_on=hexname == broke_off)
            with self._lock:
                self._reserved -= need
            if fed and not self._closing:
                # durable before any index row names them (issue 18 §0): one ``syncfs`` for
                # the whole zip, not one per batch (the batches only bound a transaction)
                _sync_all([d for d, _ in fed])
            for at in range(0, len(fed), _SETTLE_BATCH):
                self._settle(fed[at : at + _SETTLE_BATCH])
        if problem is not None or wanted:
            log.info(
                "content cache: bulk fetch %s: %d of %d file(s) from the zip%s; the "
                "others are fetched alone",
                uri,
                members - len(wanted),
                members,
                f" ({problem})" if problem is not None else "",
            )

    def _settle(self, batch: List[Tuple[Download, str]]) -> None:
        """Adopt fed downloads (checked as they ended: size and MD5; made durable by the
        caller) in one transaction; one that cannot be adopted is served but not kept
        (``Download.not_kept``: its readers had their verdict, and keep reading its bytes).

        Done after the zip has arrived, not beside it: the fsyncs and the index rows cost
        time, and the readers of the members (who wait only for each member's own verdict)
        came first.  The caller syncs all of them first with one ``syncfs`` where the system
        has it instead of one ``fdatasync`` per file (benchmarks/RESULTS.md).
        """
        good: List[Tuple[Download, str]] = []
        for download, hexname in batch:
            if self._closing:
                download.fail(DownloadCancelled(download.uri), self._ender(download, hexname))
                continue
            good.append((download, hexname))
        if not good:
            return
        errors = self._adopt_many([(h, d.partial_path, d.arrived, d.digest) for d, h in good])
        for (download, hexname), error in zip(good, errors):
            ended = self._ender(download, hexname)
            if isinstance(error, DownloadCancelled):
                download.fail(error, ended)
                continue
            if error is not None:
                download.not_kept(error)  # checked bytes: its readers still get them
            download.adopted(ended)
