"""``ContentHandle``: an open file of the content cache, served as its bytes arrive.

A handle reads a complete cached copy or joins the running download; a large cached copy whose
MD5 is being checked (``_Verification``) holds back its last bytes until the verdict.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional, Set

from xnatfs.cache.download import Download, IntegrityError, Span, digest_file
from xnatfs.cache.key import ContentKey

if TYPE_CHECKING:  # the cache makes handles; a handle only calls back into it
    from xnatfs.cache.content import ContentCache

#: one logger for the whole content cache, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.cache.content")


# -- handles ---------------------------------------------------------------------------------------


class _Verification:
    """The MD5 check of one large cached file this daemon has not checked yet, run by a thread
    while its first readers are served (issue 18 §1: "verify while the first reader streams
    through it, holding back the final bytes until the digest matches").  Hashing a file of
    gigabytes in ``open`` could take longer than ``--timeout`` on a slow disk; this way only
    the read of the last bytes waits, with its deadline.  ``done(problem)`` is called once
    with None (right) or why not, before the readers wake."""

    def __init__(
        self, fd: int, size: int, digest: str, done: Callable[[Optional[str]], None]
    ) -> None:
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
                    raise TimeoutError(
                        errno.ETIMEDOUT, "MD5 check of a cached file not done in time"
                    )
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
        #: the attempt running when this handle opened (``_served_span``)
        self._opened_at = download.generation if download is not None else 0
        #: opened on a download whose verdict was in (its fsync and adoption still running):
        #: every byte it can serve is of the verified attempt, as from a cached copy
        self._opened_verified = download is not None and download.verified
        #: the first read tells the cache the kernel wants pages of this folder
        #: (``BulkFetches.read_ahead_due``); a page-cache-warm open sends no read
        self._read_ahead_due = True

    @property
    def verified(self) -> bool:
        """Served from a complete copy whose check is done (a cached file with no MD5 check
        pending, or a download opened after its verdict): what the kernel may keep of earlier
        opens depends on it (``fs.keepcache``).  A download's fsync and adoption follow its
        verdict (0.3-0.6 s for 256 MiB here): opens in that window counted as unverified and
        dropped the pages the first read had just filled, so the next two or three reads of a
        large file went through the daemon again (0.7-1.2 against 2.8-5.5 GB/s with pages
        kept; ``benchmarks/reread.py``, RESULTS.md)."""
        if self._verification is not None:
            return False
        return self._download is None or self._opened_verified

    def _served_span(self, span: Span) -> int:
        """Note the attempt ``span``'s bytes came from; at the final read (verdict in), EIO if
        this handle ever served bytes of another attempt than the verified one: a successful
        end of file then means every byte this handle gave out was verified."""
        with self._served_lock:
            if span.n > 0:
                self._served.add(span.generation)
                if self._download is not None:
                    self._download.note_read(span.generation)
            other = sorted(self._served - {span.generation})
            if span.final and other:
                raise IntegrityError(
                    f"{self.key.uri}: this open read bytes of download attempt "
                    f"{other[0] + 1}, which failed its size or MD5 check; only attempt "
                    f"{span.generation + 1} was verified (open the file again)"
                )
        if span.final and self._download is not None:
            # the kernel's page cache is shared by every open of the file: bytes of an attempt
            # thrown away may have reached this open from pages another open's reads filled,
            # without passing through this handle (``_served`` cannot see them)
            thrown = self._download.thrown_since(self._opened_at)
            if thrown is not None:
                raise IntegrityError(
                    f"{self.key.uri}: this file was open while download attempt {thrown + 1} "
                    "failed its check; pages of it may have been read (open the file again)"
                )
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
        if self._read_ahead_due:
            self._first_read()
        if self._download is not None:
            data, span = self._download.read_of(self._fd, offset, size, deadline)
            self._served_span(span)
            return data
        if size <= 0 or offset < 0:
            return b""
        self._hold_back(offset, size, deadline)
        data = os.pread(self._fd, size, offset)
        if self.key.size is not None and len(data) < min(size, self.key.size - offset):
            # the cache file shrank after its size check at open (a disk fault, a hand in the
            # cache directory): a short read would reach the reader as the end of the file
            raise IntegrityError(
                f"cached copy of {self.key.uri}: {len(data)} bytes at offset {offset} where "
                f"the listed size {self.key.size} promises more (the cache file shrank)"
            )
        return data

    def _first_read(self) -> None:
        self._read_ahead_due = False
        self._cache.read_ahead_due(self.key.hexname())

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
        if self._read_ahead_due:
            self._first_read()
        if self._download is not None:
            return self._fd, self._served_span(self._download.span_of(offset, size, deadline))
        if size <= 0 or offset < 0:
            return self._fd, 0
        self._hold_back(offset, size, deadline)
        if self.key.size is not None and self.key.size >= 0:
            size = max(0, min(size, self.key.size - offset))
        else:  # an archive, sized when made: the cached file's size (a short preadv is EIO)
            size = max(0, min(size, os.fstat(self._fd).st_size - offset))
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
