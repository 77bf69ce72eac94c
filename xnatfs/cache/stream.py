"""A file larger than the cache, streamed from the server to one reader and never kept.

gcsfuse serves a file that exceeds its cache straight from the bucket; so does xnatfs
(issue 18 §2): ``ContentCache.open`` hands out a ``StreamHandle`` when a file is larger than
the cache limit or than the free cache disk plus everything the cache could evict.  XNAT
ignores HTTP Range (docs/XNAT-API.md §3.1), so the handle runs one whole-file GET and keeps a window
of the body in memory: ``AHEAD`` bytes past the furthest read (the fetch waits when it is that
far ahead: flow control, memory bounded) and ``BEHIND`` bytes before it (the kernel's
read-ahead sends a file's reads slightly out of order, from several FUSE threads).  A read
before the window (a seek back) starts the GET again from the first byte and skips to it:
sequential reads run at network speed, random ones cost a re-fetch each.

The same promises as a cached file: the body is cut at its listed size (one byte more is
EIO), and a read that reaches the last byte waits for the size and MD5 verdict and gets EIO
when it is bad (issue 17 §5).  Knows nothing of the index or the client: it gets ``fetch``.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Deque, Optional, Tuple

from xnatfs.cache.download import DownloadCancelled, Fetch, IntegrityError, TooLong

if TYPE_CHECKING:  # content.py imports this module
    from xnatfs.cache.content import ContentKey

log = logging.getLogger(__name__)

#: bytes buffered past the furthest read before the fetch waits
AHEAD = 8 << 20
#: bytes kept before the furthest read (out-of-order read-ahead is served from them)
BEHIND = 4 << 20


class _Superseded(Exception):
    """Raised into an old fetch's sink: a seek back started another one, or the handle closed."""


class StreamHandle:
    """An open file served from a live GET (see the module docstring); the interface of
    ``ContentHandle``.  Thread-safe; one GET (thread) at a time per handle."""

    def __init__(self, key: "ContentKey", fetch: Fetch, verify: bool = True) -> None:
        if key.size is None or key.size < 0:
            raise ValueError(f"{key.uri}: only a file of listed size can be streamed")
        self.key = key
        self._uri = key.uri
        self._size: int = key.size
        self._digest = (key.digest or "").strip().lower() if verify else ""
        self._fetch = fetch
        self._cond = threading.Condition(threading.Lock())
        # _cond protects the fields below
        self._chunks: Deque[Tuple[int, bytes]] = collections.deque()  # (offset, bytes)
        self._start = 0  # offset of the first buffered byte
        self._end = 0  # bytes of the current GET received so far
        self._want = 0  # furthest offset a reader asked for
        #: offsets readers wait for now: nothing at or after the lowest is dropped (else two
        #: readers a little apart would make each other re-fetch, and again, and again)
        self._waiting: "collections.Counter[int]" = collections.Counter()
        self._generation = 0  # bumps when a seek back restarts the GET
        self._error: Optional[BaseException] = None
        self._verdict = False  # the current GET ended with the right size and MD5
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        #: readers got bytes of the current GET
        self._served_now = False
        #: readers got bytes of a GET that ended without a good verdict (superseded by a seek
        #: back, or failed): the read of the last bytes is then EIO (``_final_check_locked``)
        self._tainted = False
        self.fetches = 0  # GETs started (tests, stats)
        with self._cond:
            self._restart_locked(0)

    @property
    def verified(self) -> bool:
        """Never: its bytes come from the server as they are read (``fs.keepcache``)."""
        return False

    # -- the fetching thread ---------------------------------------------------------------------

    def _restart_locked(self, want: int) -> None:
        if self._served_now and not self._verdict:
            self._tainted = True
        self._served_now = False
        self._generation += 1
        self._chunks.clear()
        self._start = self._end = 0
        self._want = want
        self._error = None
        self._verdict = False
        self.fetches += 1
        generation = self._generation
        self._thread = threading.Thread(
            target=self._run, args=(generation,), daemon=True, name="xnatfs-stream"
        )
        self._thread.start()
        self._cond.notify_all()

    def _run(self, generation: int) -> None:
        md5 = hashlib.md5(usedforsecurity=False) if self._digest else None
        received = 0

        def sink(chunk: bytes) -> None:
            nonlocal received
            if not chunk:
                return
            if received + len(chunk) > self._size:
                raise TooLong(f"long download: more than the listed size of {self._size} bytes")
            data = bytes(chunk)
            if md5 is not None:
                md5.update(data)
            received += len(data)
            with self._cond:
                while True:
                    if self._closed or self._generation != generation:
                        raise _Superseded()
                    if self._end < self._want + AHEAD:
                        break
                    self._cond.wait()
                self._chunks.append((self._end, data))
                self._end += len(data)
                floor = self._want - BEHIND
                if self._waiting:
                    floor = min(floor, min(self._waiting))
                while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= floor:
                    off, old = self._chunks.popleft()
                    self._start = off + len(old)
                self._cond.notify_all()

        error: Optional[BaseException] = None
        try:
            self._fetch(self._uri, sink)
            if received != self._size:
                error = IntegrityError(
                    f"short download: expected {self._size} bytes, got {received} (uri {self._uri})"
                )
            elif md5 is not None and md5.hexdigest() != self._digest:
                error = IntegrityError(
                    f"digest mismatch: expected {self._digest}, got "
                    f"{md5.hexdigest()} (uri {self._uri})"
                )
        except _Superseded:
            return
        except IntegrityError as exc:
            error = IntegrityError(f"{exc.strerror} (uri {self._uri})")
        except BaseException as exc:  # noqa: BLE001 - handed to the readers
            error = exc
        with self._cond:
            if self._generation != generation:
                return
            if error is None:
                self._verdict = True
            else:
                self._error = error
            self._cond.notify_all()
        if isinstance(error, IntegrityError):
            log.error("stream %s: %s", self._uri, error.strerror)

    # -- readers ---------------------------------------------------------------------------------

    def read(self, offset: int, size: int, deadline: float) -> bytes:
        """Bytes [offset, offset+size); b"" at the end.  A read reaching the end waits for the
        verdict (EIO when it is bad); TimeoutError (ETIMEDOUT) when ``deadline`` passes."""
        if self._closed:
            raise OSError(errno.EBADF, f"stream handle for {self._uri} is closed")
        if size <= 0 or offset < 0:
            return b""
        end = min(offset + size, self._size)
        last = offset + size >= self._size
        with self._cond:
            while True:
                if self._closed:
                    raise DownloadCancelled(self._uri)
                if offset < self._start:
                    self._restart_locked(offset)  # a seek back: XNAT cannot resume
                if self._error is not None:
                    raise self._error
                if offset >= end:
                    if self._verdict:
                        self._final_check_locked()
                        return b""
                elif self._end >= end and (not last or self._verdict):
                    if last:
                        self._final_check_locked()
                    self._served_now = True
                    return self._slice_locked(offset, end)
                if offset > self._want:
                    self._want = offset
                    self._cond.notify_all()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"stream {self._uri}: bytes {offset}..{end} not there "
                        f"in time ({self._end} arrived)",
                    )
                self._waiting[offset] += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting[offset] -= 1
                    if not self._waiting[offset]:
                        del self._waiting[offset]

    def _final_check_locked(self) -> None:
        """The read of the last bytes, the current GET verified: EIO if this handle served
        bytes of an earlier GET that was never verified (a pass cut short by a seek back), so
        that a successful end of file means every byte this handle gave out was verified."""
        if self._tainted:
            raise IntegrityError(
                f"stream {self._uri}: this open read bytes of an earlier GET that was cut short "
                f"before its size and MD5 check (a seek back); open the file again"
            )

    def _slice_locked(self, offset: int, end: int) -> bytes:
        parts = []
        for off, data in self._chunks:
            if off + len(data) <= offset:
                continue
            if off >= end:
                break
            parts.append(data[max(0, offset - off) : end - off])
        if end > self._want:
            self._want = end
            self._cond.notify_all()
        return b"".join(parts)

    def span(self, offset: int, size: int, deadline: float) -> bytes:
        """The bytes themselves (no file holds them): ``XnatOperations.read_into`` copies
        them into libfuse's buffer."""
        return self.read(offset, size, deadline)

    def wait(self, deadline: float) -> bool:
        with self._cond:
            while self._error is None and not self._verdict and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._cond.notify_all()

    def __enter__(self) -> "StreamHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
