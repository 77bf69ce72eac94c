"""One whole-file download streaming into a partial file that readers follow as it grows.

XNAT ignores HTTP Range and sends no ETag (DESIGN.md §2), so a file is always fetched whole. A
``Download`` owns the partial file of one content key: the worker thread appends what ``fetch``
hands to the sink, computes the MD5 on the way and wakes readers; readers ``pread`` the bytes they
asked for as soon as those bytes have arrived (rclone ``downloaders``). At the end the size and the
MD5 are checked; a mismatch is fetched again once before the download fails.

This module knows nothing of diskcache, of the client or of the tree: it gets ``fetch(uri, sink)``
and an ``adopt(partial_path)`` callback that moves a verified file into the store.
"""
from __future__ import annotations

import errno
import hashlib
import queue
import logging
import os
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

#: ``fetch(uri, sink)`` streams the file's bytes into ``sink``; raises whatever the client raises.
Fetch = Callable[[str, Callable[[bytes], None]], None]
#: ``ended(error)``: called once when a download ends (error None on success), before readers wake.
Ended = Callable[[Optional[BaseException]], None]


class DownloadCancelled(OSError):
    """The cache is closing: the download was dropped before or while it ran."""

    def __init__(self, uri: str) -> None:
        super().__init__(errno.ECANCELED, f"download of {uri} cancelled: content cache closing")


class _BackgroundMD5:
    """MD5 on a second thread, so a download receives, writes and hashes at the same time
    (hashlib releases the GIL on large buffers; inline, the hash took ~3/4 of the download
    thread in the B1 profile).  The queue is bounded: at most 16 chunks (16 MiB) wait."""

    _END = b""

    #: bytes hashed inline before a thread is worth it (small files never get one)
    INLINE = 4 << 20

    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._queue: "queue.Queue[bytes]" = queue.Queue(maxsize=16)
        self._thread: Optional[threading.Thread] = None
        self._inline = 0

    def update(self, chunk: bytes) -> None:
        if self._thread is None and self._inline < self.INLINE:
            self._inline += len(chunk)
            self._md5.update(chunk)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xnatfs-md5", daemon=True)
            self._thread.start()
        self._queue.put(chunk)

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is self._END:
                return
            self._md5.update(chunk)

    def hexdigest(self) -> str:
        if self._thread is not None:
            self._queue.put(self._END)
            self._thread.join()
            self._thread = None
        return self._md5.hexdigest()


class IntegrityError(OSError):
    """The downloaded bytes do not match the listing's size or MD5 (EIO)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class Download:
    """The single in-flight download of one content key.

    Life cycle: created (partial file opened, nothing running) → ``run()`` in a pool thread →
    done (``error`` is None: the file was adopted into the store; else the partial is unlinked).
    ``fail()`` ends a download that never ran (its queued work was cancelled).

    Readers hold their own ``dup()`` of the partial fd (``dup_fd``), so they keep reading after
    the partial is renamed into the store or unlinked: it is the same inode.

    Thread-safety: ``_cond`` protects ``_arrived``, ``_generation``, ``_done``, ``error``,
    ``bytes_received`` and the validity of ``_fd``. Lock order: the content cache's lock may be
    held when ``_cond`` is taken (``dup_fd``), never the reverse. The fd offset is used only by the
    writer; readers use ``os.pread``, which leaves it alone.
    """

    def __init__(
        self,
        uri: str,
        size: Optional[int],
        digest: str,
        partial_path: str,
        fetch: Fetch,
        verify: bool = True,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        #: Read-only after construction.
        self.uri = uri
        self.size = size if size is not None and size >= 0 else None
        self.digest = (digest or "").strip().lower() if verify else ""
        self.partial_path = partial_path
        self._fetch = fetch
        self._cancelled = cancelled
        # O_EXCL: a partial is never shared with a leftover; 0600: the cache is private.
        self._fd: Optional[int] = os.open(
            partial_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        self._cond = threading.Condition(threading.Lock())
        # _cond protects the fields below.
        self._arrived = 0          # bytes of the current attempt written to the partial file
        self._generation = 0       # attempt number; bumps when the partial is truncated to refetch
        self._done = False
        #: None until done; then None (success) or the exception readers get.
        self.error: Optional[BaseException] = None
        #: Bytes received over all attempts (for the cache's bytes_downloaded counter).
        self.bytes_received = 0

    # -- worker side -----------------------------------------------------------------------------

    def run(self, adopt: Callable[[str], None], ended: Ended) -> None:
        """Fetch, verify (refetching once on a mismatch) and ``adopt`` the partial; never raises.

        Runs in a download pool thread. Then calls ``ended(error)`` (the owner unregisters the
        download, so that nobody can join it any more) *before* waking the readers with the result:
        a reader that sees the error and opens again starts a new download instead of joining
        this one, and a reader that sees success finds the key cached.
        """
        error: Optional[BaseException] = None
        try:
            for attempt in (1, 2):
                problem = self._attempt()
                if problem is None:
                    adopt(self.partial_path)
                    break
                if attempt == 1:
                    log.info("download %s: %s; fetching again", self.uri, problem)
                    self._restart()
                else:
                    log.error("download %s: %s", self.uri, problem)
                    error = IntegrityError(f"{problem} (uri {self.uri})")
        except BaseException as exc:  # noqa: BLE001 - handed to the readers, who re-raise it
            error = exc
            if self._cancelled() and not isinstance(exc, DownloadCancelled):
                error = DownloadCancelled(self.uri)
                error.__cause__ = exc
            else:
                log.debug("download %s failed: %r", self.uri, exc)
        if error is not None:
            self._discard()
        self._end(error, ended)

    def _attempt(self) -> Optional[str]:
        """One fetch into the partial file; returns None if size and MD5 check out, else why not."""
        md5 = _BackgroundMD5()

        def sink(chunk: bytes) -> None:
            if self._cancelled():
                raise DownloadCancelled(self.uri)
            if not chunk:
                return
            view = memoryview(chunk)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            with self._cond:
                self._arrived += len(chunk)
                self.bytes_received += len(chunk)
                self._cond.notify_all()
            md5.update(chunk)  # after the readers were woken: they never wait for the hash

        try:
            self._fetch(self.uri, sink)  # once all here, it is kept even if the cache is closing
        finally:
            got = md5.hexdigest()
        with self._cond:
            got_size = self._arrived
        if self.size is not None and got_size != self.size:
            kind = "short download" if got_size < self.size else "long download"
            return f"{kind}: expected {self.size} bytes, got {got_size}"
        if self.digest and got != self.digest:
            return f"digest mismatch: expected {self.digest}, got {got}"
        return None

    def _restart(self) -> None:
        """Truncate the partial for a second attempt; readers waiting past 0 keep waiting."""
        with self._cond:
            self._generation += 1
            self._arrived = 0
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)

    def _discard(self) -> None:
        try:
            os.unlink(self.partial_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("download %s: cannot remove partial %s: %s", self.uri, self.partial_path, exc)

    def _end(self, error: Optional[BaseException], ended: Ended) -> None:
        try:
            ended(error)
        finally:
            with self._cond:
                self.error = error
                self._done = True
                fd, self._fd = self._fd, None   # readers hold their own dups
                self._cond.notify_all()
            if fd is not None:
                os.close(fd)

    def fail(self, error: BaseException, ended: Ended) -> None:
        """End a download that never ran (cancelled before a worker picked it up)."""
        self._discard()
        self._end(error, ended)

    # -- reader side -----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        with self._cond:
            return self._done

    def wait(self, deadline: float) -> bool:
        """Block until the download ended or ``deadline`` (time.monotonic) passed; True if ended."""
        with self._cond:
            while not self._done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def dup_fd(self) -> int:
        """A new fd on the partial file for one reader (caller closes it).

        Caller holds the content cache's lock and found the download registered, so ``ended``
        has not returned yet and the download's own fd is still open.
        """
        with self._cond:
            if self._fd is None:
                raise RuntimeError(f"download {self.uri}: joined after release")
            return os.dup(self._fd)

    def read(self, fd: int, offset: int, size: int, deadline: float) -> bytes:
        """Bytes [offset, offset+size) read with ``pread(fd)`` as soon as they have arrived.

        Short or empty at the end of the file. Raises the download's error if it failed (whatever
        ``fetch`` raised, IntegrityError, DownloadCancelled), or TimeoutError (ETIMEDOUT) when
        ``deadline`` (a time.monotonic() value) passes first.
        """
        if size <= 0 or offset < 0:
            return b""
        end = offset + size
        if self.size is not None:
            end = min(end, self.size)
            if offset >= end:
                return b""
        while True:
            with self._cond:
                while True:
                    if self.error is not None:
                        raise self.error
                    if self._arrived >= end or self._done:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            errno.ETIMEDOUT,
                            f"download {self.uri}: bytes {offset}..{end} not there in time"
                            f" ({self._arrived} arrived)",
                        )
                    self._cond.wait(remaining)
                generation = self._generation
                available = self._arrived
            data = os.pread(fd, min(end, available) - offset, offset) if available > offset else b""
            with self._cond:
                # A refetch truncated the file while we read: those bytes may be from either try.
                if self._generation == generation:
                    return data
