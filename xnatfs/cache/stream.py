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

Its bytes are served before their verdict, so they come from XNAT, never from a cache proxy's
stored copy (``xnatfs cache-proxy``, whose entry may hold another version's bytes under the
file's digest): its GETs ask for the file past any shared cache (``AttemptSink.uncached``),
and an answer from a cache's disk is EIO (docs/SCALING.md).

Idle readers hold nothing.  Every GET holds one of the client's ``--max-requests`` slots
while it runs, so a handle that held a GET while its reader did nothing could stall the whole
mount (16 idle opens of large files did: every other request waited for a slot):

- the GET starts at the first read, not at ``open``;
- a GET that stays paused (flow control: nobody read for ``idle_limit`` seconds, the
  default being ``--read-timeout``, 30 s) is dropped: its response is closed, which gives
  its slot back, and its buffer is freed.  Why ``--read-timeout``: it is the longest
  silence we allow the server, and servers give a client that stops reading a similar
  time before they drop the connection themselves (Tomcat's stock server.xml: 20 s;
  nginx's send_timeout: 60 s; one that drops first is handled below).  A reader idle
  that long pays one re-fetch of the bytes it already read when it comes back; a shorter
  limit would make slow but steady readers pay it again and again;
- the next read *resumes*: the GET starts again from the first byte and skips to the reader,
  as after a seek back.  A GET the server dropped while it was paused (a retryable
  error after a pause), or cut mid-body further than any cut before, resumes in the same
  way instead of ending in EIO.

Integrity across a resume (``_Checkpoint``): the dropped GET's running MD5 covered every byte
it received, the served ones included; a copy of that state is kept with its byte count.
The resumed GET hashes its first bytes into a fresh MD5 and, at that count, must reach the
same state; until then none of its bytes is served.  Different bytes (the file changed on
the server, or the server sent others) make every read of the handle EIO from then on, so
the reader never gets a byte of another version; equal ones let the GET continue from the
saved state, so the verdict at the end covers every byte the handle served.  A reader that
comes back before the window the dropped GET had (more than ``AHEAD`` + 2 × ``BEHIND``
before where it stopped) cannot be held until the check without buffering all between:
that is a seek back, with its rule (below).

A seek back (a restart not covered by a checkpoint) leaves the bytes served by the cut GET
unverified: ``_tainted``, and the read of the last bytes is EIO (``_final_check_locked``).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Deque, Optional, Tuple

from xnatfs.cache.download import (
    AttemptSink,
    Chunk,
    DownloadCancelled,
    Fetch,
    IntegrityError,
    TooLong,
)

if TYPE_CHECKING:  # content.py imports this module
    from xnatfs.cache.content import ContentKey

log = logging.getLogger(__name__)

#: bytes buffered past the furthest read before the fetch waits
AHEAD = 8 << 20
#: bytes kept before the furthest read (out-of-order read-ahead is served from them)
BEHIND = 4 << 20
#: seconds a GET may wait for an idle reader before it is dropped (the default of
#: ``--read-timeout``, which the mount passes instead; see the module docstring)
IDLE_LIMIT = 30.0


class _Superseded(Exception):
    """Raised into an old fetch's sink: a seek back started another one, the handle closed,
    or the reader was idle too long (the GET was dropped)."""


class _Changed(IntegrityError):
    """A resumed GET's first bytes differ from those the dropped GET had received."""


@dataclass(frozen=True)
class _Checkpoint:
    """The running MD5 of a dropped GET over its first ``at`` bytes, some of them served."""

    #: bytes hashed into ``md5``
    at: int
    #: a hashlib md5 object, never updated itself (a resumed GET continues from a copy)
    md5: Any


class _Pass:
    """One GET's own state, touched only by its thread."""

    def __init__(self, generation: int, checkpoint: Optional[_Checkpoint]) -> None:
        self.generation = generation
        #: the bytes up to ``checkpoint.at`` must hash to ``checkpoint.md5``
        self.checkpoint = checkpoint
        #: MD5 of every byte received (from ``checkpoint.md5`` on, once it is passed)
        self.md5: Any = hashlib.md5(usedforsecurity=False)
        self.received = 0
        #: waited for a reader at least once (a later connection error may be the server's
        #: answer to that wait)
        self.paused = False


class StreamHandle:
    """An open file served from a live GET (see the module docstring); the interface of
    ``ContentHandle``.  Thread-safe; one GET (thread) at a time per handle, none until the
    first read and none while the reader is idle."""

    def __init__(
        self,
        key: "ContentKey",
        fetch: Fetch,
        verify: bool = True,
        idle_limit: float = IDLE_LIMIT,
    ) -> None:
        """Starts nothing: the first read starts the GET."""
        if key.size is None or key.size < 0:
            raise ValueError(f"{key.uri}: only a file of listed size can be streamed")
        self.key = key
        self._uri = key.uri
        self._size: int = key.size
        self._digest = (key.digest or "").strip().lower() if verify else ""
        self._fetch = fetch
        self._idle_limit = idle_limit
        self._cond = threading.Condition(threading.Lock())
        # _cond protects the fields below
        self._chunks: Deque[Tuple[int, bytes]] = collections.deque()  # (offset, bytes)
        self._start = 0  # offset of the first buffered byte
        self._end = 0  # bytes of the current GET received so far
        self._want = 0  # furthest offset a reader asked for
        #: offsets readers wait for now: nothing at or after the lowest is dropped (else two
        #: readers a little apart would make each other re-fetch, and again, and again)
        self._waiting: "collections.Counter[int]" = collections.Counter()
        self._generation = 0  # bumps when a GET starts (0: none yet)
        self._error: Optional[BaseException] = None
        self._verdict = False  # the current GET ended with the right size and MD5
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        #: the current GET was dropped (idle reader, or the server dropped it while it
        #: waited): the next read resumes it
        self._stopped = False
        #: what the current (or next) GET must match before its bytes are served
        self._checkpoint: Optional[_Checkpoint] = None
        #: bytes of the current GET are served only once this many arrived (and matched)
        self._check_at = 0
        #: a resumed GET did not match: every read is EIO from then on
        self._broken: Optional[IntegrityError] = None
        #: when a reader last called; the GET's pause counts from the later of this and
        #: ``_paused_since``
        self._active_at = time.monotonic()
        self._paused_since: Optional[float] = None
        #: readers got bytes of the current GET (or of dropped ones its checkpoint covers)
        self._served_now = False
        #: readers got bytes of a GET that ended without a good verdict (superseded by a seek
        #: back, or failed): the read of the last bytes is then EIO (``_final_check_locked``)
        self._tainted = False
        #: the furthest byte a GET cut mid-body reached: a cut GET resumes only past it
        self._cut_at = 0
        self.fetches = 0  # GETs started (tests, stats)
        self.idle_stops = 0  # GETs dropped for an idle reader (tests, stats)

    #: every read of this open must reach this handle (FUSE ``direct_io``): the kernel keeps
    #: one page cache per path, and each open of a streamed file has its own GET, so pages
    #: another open's GET filled (bytes that may then fail their MD5) would reach this one's
    #: reads and its verdict at the end would not cover them (``_final_check_locked``)
    direct_io = True

    @property
    def verified(self) -> bool:
        """Never: its bytes come from the server as they are read (``fs.keepcache``)."""
        return False

    @property
    def fetching(self) -> bool:
        """A GET of this handle is running (and holds, or waits for, a request slot)."""
        with self._cond:
            thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def paused(self) -> bool:
        """The GET waits for the reader (buffer full); dropped after ``idle_limit``."""
        with self._cond:
            return self._paused_since is not None

    # -- the fetching thread ---------------------------------------------------------------------

    def _restart_locked(self, want: int) -> None:
        """Start a GET from the first byte, the reader at ``want``; resumed (checked against
        ``_checkpoint``) when one is pending and ``want`` is near enough to hold the reader
        until the check, else as a seek back.  Caller holds ``_cond``."""
        checkpoint = self._checkpoint
        if checkpoint is not None and want + AHEAD + 2 * BEHIND < checkpoint.at:
            # before the window the dropped GET had (its BEHIND, one more for the chunk that
            # waited): holding this reader until the check would buffer all between
            checkpoint = None
        if checkpoint is None:
            if self._served_now and not self._verdict:
                self._tainted = True
            self._served_now = False
        self._checkpoint = checkpoint
        self._check_at = checkpoint.at if checkpoint is not None else 0
        self._stopped = False
        self._paused_since = None
        self._generation += 1
        self._chunks.clear()
        self._start = self._end = 0
        self._want = want
        self._error = None
        self._verdict = False
        self.fetches += 1
        self._thread = threading.Thread(
            target=self._run,
            args=(_Pass(self._generation, checkpoint),),
            daemon=True,
            name="xnatfs-stream",
        )
        self._thread.start()
        self._cond.notify_all()

    def _stop_locked(self, p: _Pass) -> None:
        """Drop the current GET's state; the next read resumes it.  Its running MD5 becomes
        the checkpoint if readers got its bytes (a GET stopped before passing its own check
        keeps the checkpoint it was checked against).  Caller holds ``_cond``; the GET's
        thread then leaves ``fetch``, which closes the response (its slot is given back)."""
        if self._checkpoint is None or p.received >= self._check_at:
            self._checkpoint = _Checkpoint(p.received, p.md5.copy()) if self._served_now else None
        self._stopped = True
        self._paused_since = None
        self._chunks.clear()
        self._start = self._end = 0
        self._cond.notify_all()

    def _hash(self, p: _Pass, data: bytes) -> None:
        """Add ``data`` (bytes from ``p.received`` on) to ``p.md5``; at the checkpoint, the
        prefix must match (else ``_Changed``) and hashing goes on from the saved state."""
        cp = p.checkpoint
        if cp is None or not p.received < cp.at <= p.received + len(data):
            p.md5.update(data)
            return
        cut = cp.at - p.received
        p.md5.update(data[:cut])
        if p.md5.digest() != cp.md5.digest():
            raise _Changed(
                f"stream {self._uri}: the first {cp.at} bytes differ from those of the GET "
                f"this open read before its reader paused (the file changed on the server?); "
                f"open the file again"
            )
        p.md5 = cp.md5.copy()  # equal states: the verdict then covers what was served
        p.md5.update(data[cut:])

    def _sink(self, p: _Pass, chunk: Chunk) -> None:
        if not chunk:
            return
        if p.received + len(chunk) > self._size:
            raise TooLong(f"long download: more than the listed size of {self._size} bytes")
        data = bytes(chunk)
        self._hash(p, data)
        p.received += len(data)
        with self._cond:
            self._wait_for_room_locked(p)
            if self._checkpoint is not None and p.received >= self._check_at:
                self._checkpoint = None  # passed: the served bytes are this GET's now
            self._chunks.append((self._end, data))
            self._end += len(data)
            floor = self._want - BEHIND
            if self._waiting:
                floor = min(floor, min(self._waiting))
            while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= floor:
                off, old = self._chunks.popleft()
                self._start = off + len(old)
            self._cond.notify_all()

    def _wait_for_room_locked(self, p: _Pass) -> None:
        """Flow control: wait while ``AHEAD`` bytes are buffered past the furthest read (never
        before the checkpoint: readers wait for it); drop the GET (``_Superseded``) once
        nobody read for ``idle_limit``.  Caller holds ``_cond``."""
        while True:
            if self._closed or self._generation != p.generation:
                raise _Superseded()
            if self._end < self._want + AHEAD or self._end < self._check_at:
                self._paused_since = None
                return
            now = time.monotonic()
            if self._paused_since is None:
                self._paused_since = now
            p.paused = True
            idle = now - max(self._paused_since, self._active_at)
            if idle >= self._idle_limit:
                log.debug(
                    "stream %s: reader idle for %.1f s, GET dropped at byte %d (its request "
                    "slot freed); the next read resumes it",
                    self._uri,
                    idle,
                    p.received,
                )
                self.idle_stops += 1
                self._stop_locked(p)
                raise _Superseded()
            self._cond.wait(self._idle_limit - idle)

    def _run(self, p: _Pass) -> None:
        error: Optional[BaseException] = None
        try:
            sink = AttemptSink(lambda chunk: self._sink(p, chunk), self._answered, uncached=True)
            self._fetch(self._uri, sink)
            if p.received != self._size:
                error = IntegrityError(
                    f"short download: expected {self._size} bytes, got {p.received} "
                    f"(uri {self._uri})"
                )
            elif self._digest and p.md5.hexdigest() != self._digest:
                error = IntegrityError(
                    f"digest mismatch: expected {self._digest}, got "
                    f"{p.md5.hexdigest()} (uri {self._uri})"
                )
        except _Superseded:
            return
        except _Changed as exc:
            error = exc
        except IntegrityError as exc:
            error = IntegrityError(f"{exc.strerror} (uri {self._uri})")
        except BaseException as exc:  # noqa: BLE001 - handed to the readers
            error = exc
        with self._cond:
            if self._generation != p.generation:
                return
            if error is None:
                self._verdict = True
            elif getattr(error, "retryable", False) and (p.paused or p.received > self._cut_at):
                # the server dropped a GET we kept waiting, or cut one mid-body (a reset, a
                # proxy's timeout): resume it as an idle-dropped one.  No loop: a GET pauses
                # only past its checkpoint, and a cut one resumes only when it got further
                # than any cut before (a server that always cuts at one byte fails the next
                # GET there, and that failure is the reader's)
                self._cut_at = max(self._cut_at, p.received)
                log.info("stream %s: %s; resumed from a new GET", self._uri, error)
                self._stop_locked(p)
                return
            else:
                self._error = error
                if isinstance(error, _Changed):
                    self._broken = error
            self._cond.notify_all()
        if isinstance(error, IntegrityError):
            log.error("stream %s: %s", self._uri, error.strerror)

    def _answered(self, stored: bool) -> None:
        """``AttemptSink.answered``: a stream serves bytes before their verdict, so they must
        be XNAT's for this GET, never a shared cache's stored copy (which may be another
        version's: ``uncached`` asked for XNAT's)."""
        if stored:
            raise IntegrityError(
                f"stream {self._uri}: a shared cache answered from its disk although asked "
                "for XNAT's bytes (a file streamed past the mount's cache is never served "
                "from a cache proxy's copy)"
            )

    # -- readers ---------------------------------------------------------------------------------

    def read(self, offset: int, size: int, deadline: float) -> bytes:
        """Bytes [offset, offset+size); b"" at the end.  A read reaching the end waits for the
        verdict (EIO when it is bad); TimeoutError (ETIMEDOUT) when ``deadline`` passes.  The
        first read, and the first after the GET was dropped, starts one."""
        if self._closed:
            raise OSError(errno.EBADF, f"stream handle for {self._uri} is closed")
        if size <= 0 or offset < 0:
            return b""
        end = min(offset + size, self._size)
        last = offset + size >= self._size
        with self._cond:
            self._active_at = time.monotonic()
            while True:
                if self._closed:
                    raise DownloadCancelled(self._uri)
                if self._broken is not None:
                    raise self._broken
                if self._generation == 0 or self._stopped or offset < self._start:
                    # first read, resume, or a seek back: XNAT cannot resume mid-file
                    self._restart_locked(offset)
                if self._error is not None:
                    raise self._error
                if offset >= end:
                    if self._verdict:
                        self._final_check_locked()
                        return b""
                elif self._end >= max(end, self._check_at) and (not last or self._verdict):
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
        """Block until the running GET ended (or failed) or ``deadline``; True if it ended or
        none runs (none yet, or dropped for an idle reader: nothing is in flight)."""
        with self._cond:
            while self._error is None and not self._verdict and not self._closed:
                if self._generation == 0 or self._stopped:
                    return True
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
