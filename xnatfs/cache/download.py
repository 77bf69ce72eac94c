"""One whole-file download streaming into a partial file that readers follow as it grows.

XNAT ignores HTTP Range and sends no ETag (docs/XNAT-API.md §3.1), so a file is always fetched
whole. A
``Download`` owns the partial file of one content key: the worker thread appends what ``fetch``
hands to the sink and wakes readers; readers ``pread`` the bytes they asked for (or hand the fd
to libfuse) as soon as those bytes have arrived (rclone ``downloaders``). The MD5 is computed
beside the download, never in its way (``_FileMD5``). At the end the size and the MD5 are
checked; a mismatch is fetched again once before the download fails.

This module knows nothing of diskcache, of the client or of the tree: it gets ``fetch(uri, sink)``
and an ``adopt(partial_path)`` callback that moves a verified file into the store.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Set, Union

log = logging.getLogger(__name__)

#: what a sink takes: the client's bytes, or a memoryview of a zip member's (valid during the call)
Chunk = Union[bytes, memoryview]
#: where an attempt's bytes go: written to the partial file and hashed (any buffer will do)
Sink = Callable[[Chunk], None]
#: ``fetch(uri, sink)`` streams the file's bytes into ``sink``; raises whatever the client raises.
Fetch = Callable[[str, Sink], None]
#: ``ended(error)``: called once when a download ends (error None on success), before readers wake.
Ended = Callable[[Optional[BaseException]], None]


#: GETs a download may add to go on with a body cut mid-way (``Download._resume``)
RESUMES = 2

#: seconds a read waits for a download that made no progress since another read waited its
#: whole deadline for it (see ``Download._stalled_at``)
STALL_GRACE = 1.0


class DownloadCancelled(OSError):
    """The cache is closing: the download was dropped before or while it ran."""

    def __init__(self, uri: str) -> None:
        super().__init__(errno.ECANCELED, f"download of {uri} cancelled: content cache closing")


#: A file up to this size is hashed inline, chunk by chunk, as it arrives (cheap); a larger one
#: by a ``_FileMD5`` thread that follows the partial file.
INLINE_HASH_MAX = 4 << 20
#: the errno values of a full disk: no space, or the user's quota on it used up
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_HASH_READ = 1 << 20

#: Run the ``_FileMD5`` thread at idle priority while the fetch runs (True) or at normal
#: priority (False, the default).  Every byte must be hashed before the last read of the file
#: is answered (issue 17 §5), so whatever the hashing thread has not hashed when the fetch ends
#: is hashed then, in series, on the last reader's critical path.  At idle priority on a busy
#: machine it falls far behind: a cold 200 MiB read through a mount beside two nice-0 CPU
#: hogs (benchmarks/RESULTS.md, "MD5 thread priority") left it 60–174 MiB behind at the end,
#: and the last read waited 102 ms (median of 8; worst 452) against 16 ms (worst 179) at
#: normal priority, for a wall time of 1.18 s against 1.01 s.  The gaps between reads in mid
#: file were a little larger at normal priority (75 vs 43 ms), since the hashing thread then
#: takes its share of the GIL during the transfer.
MD5_IDLE_PRIORITY = False


class _Reader:
    """``pread`` into one reused buffer: a fresh 1 MiB ``bytes`` per read is an mmap, 256
    page faults and a munmap each time (glibc serves large allocations with mmap)."""

    def __init__(self, size: int = _HASH_READ) -> None:
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)

    def read(self, fd: int, n: int, offset: int) -> memoryview:
        """Up to ``n`` bytes at ``offset`` (a view valid until the next call)."""
        got = os.preadv(fd, [self._view[: min(n, len(self._buf))]], offset)
        return self._view[:got]


def idle_priority() -> None:
    """Lower the calling thread (a Linux task) to nice 19: it then runs on CPU time nobody else
    wants.  Best effort; other systems keep the normal priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class _FileMD5:
    """The MD5 of a large download, computed by a thread that reads the partial file behind
    the writer instead of taking chunks from it.

    Why not hash the chunks on the way in: MD5 runs at ~600 MiB/s here, slower than the local
    link, and a bounded hand-off queue throttled the download itself to MD5 speed (B1 profile:
    the download thread waited on the full queue). Following the file never holds the
    download back.  The thread runs at normal priority (idle priority is a switch,
    ``MD5_IDLE_PRIORITY``, measured worse under load: the hashing then lags and the last
    read waits for it); when the fetch is over, :meth:`hexdigest` hashes what is left in the
    calling thread.
    """

    def __init__(self, download: "Download", fd: int, generation: int) -> None:
        self._download = download
        self._fd = os.dup(fd)
        self._generation = generation
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._reader = _Reader()
        self._pos = 0
        self._stop = False  # hexdigest() or abandon() want the thread gone
        self._thread = threading.Thread(target=self._run, name="xnatfs-md5", daemon=True)
        self._thread.start()

    def _hash_to(self, end: int) -> bool:
        """Hash the file up to ``end``; False if it was shorter."""
        while self._pos < end:
            if self._stop and threading.current_thread() is self._thread:
                return True
            chunk = self._reader.read(self._fd, end - self._pos, self._pos)
            if not chunk:
                return False
            self._md5.update(chunk)
            self._pos += len(chunk)
        return True

    def _run(self) -> None:
        if MD5_IDLE_PRIORITY:
            idle_priority()
        while not self._stop:
            got = self._download._hash_wait(self._pos, self._generation, lambda: self._stop)
            if got is None:
                return
            end, fetch_over = got
            if not self._hash_to(end) or fetch_over:
                return

    def hexdigest(self, size: int) -> str:
        """The digest of the first ``size`` bytes (the fetch is over): stop the idle thread and
        hash what it has not reached yet in the calling thread."""
        self._stop = True
        self._download._wake()
        self._thread.join()
        try:
            self._hash_to(size)
        finally:
            os.close(self._fd)
        return self._md5.hexdigest()

    def abandon(self) -> None:
        self._stop = True
        self._download._wake()
        self._thread.join()
        os.close(self._fd)


def digest_file(fd: int, size: int) -> str:
    """MD5 of the first ``size`` bytes of ``fd`` (read back from the page cache)."""
    md5 = hashlib.md5(usedforsecurity=False)
    reader = _Reader()
    pos = 0
    while pos < size:
        chunk = reader.read(fd, size - pos, pos)
        if not chunk:
            break
        md5.update(chunk)
        pos += len(chunk)
    return md5.hexdigest()


class AttemptSink:
    """The sink a download or a stream hands ``fetch`` for one GET: called with each chunk,
    and what the fetch needs to know of a shared cache between the mount and XNAT (``xnatfs
    cache-proxy``, docs/SCALING.md), whose entry may hold another version's bytes under the
    file's digest (stored by a reader with a stale listing, or on purpose):

    * ``fresh``: an earlier GET of this file came through that cache and failed its check: ask
      the cache to fetch the file from XNAT again and replace its entry;
    * ``uncached``: a file streamed past the mount's cache, whose bytes are served before their
      verdict: fetch it past the shared cache, from XNAT;
    * ``answered(stored)``: the fetch calls it before the first chunk of an answer that came
      through the shared cache; ``stored``: from the cache's disk, not from XNAT for this GET.
      A download then serves no byte before its verdict (``_CacheAnswers.held``)."""

    def __init__(
        self,
        write: Sink,
        answered: Callable[[bool], None],
        fresh: bool = False,
        uncached: bool = False,
    ) -> None:
        self._write = write
        self.answered = answered
        self.fresh = fresh
        self.uncached = uncached

    def __call__(self, chunk: Chunk) -> None:
        self._write(chunk)


class _CacheAnswers:
    """What the GETs of one download learnt of a shared cache (``AttemptSink.answered``).  The
    flags are only ever set, by the fetch, before the first byte of the answer that sets them
    is counted as arrived: a reader that sees that byte (under ``Download._cond``) sees them."""

    def __init__(self) -> None:
        #: an answer came through the shared cache: the next attempt asks it afresh
        self.via_cache = False
        #: one came from the cache's disk: every read waits for the verdict (``Download._span``)
        self.held = False

    def answered(self, stored: bool) -> None:
        self.via_cache = True
        self.held = self.held or stored


@dataclass(frozen=True)
class Span:
    """What a read of a download got: ``n`` bytes, written by attempt ``generation`` (-1: no
    bytes), and ``final``: the read reached the end of the file with the size and MD5 verdict
    in, so ``generation`` is the verified attempt."""

    n: int
    generation: int
    final: bool


class IntegrityError(OSError):
    """The downloaded bytes do not match the listing's size or MD5 (EIO)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class Changed(IntegrityError):
    """A GET that goes on with a cut one (``Download._resume``) differs in the bytes the cut
    one had sent: the attempt is thrown away and the file fetched again."""


class TooLong(IntegrityError):
    """The body goes on past the listed size (or, size unknown, past the cache limit): the
    attempt stops there, nothing more is written (issue 17 §4)."""


class Download:
    """The single in-flight download of one content key.

    Life cycle: created (partial file opened, nothing running) → ``run()`` in a pool thread →
    done (``error`` is None: the file was adopted into the store; else the partial is unlinked).
    ``fail()`` ends a download that never ran (its queued work was cancelled).

    Readers hold their own ``dup()`` of the partial fd (``dup_fd``), so they keep reading after
    the partial is renamed into the store or unlinked: it is the same inode.  ``span()`` says how
    many bytes at an offset are there, so a reader can ``preadv`` them straight into libfuse's
    buffer (``fs.ops.XnatFUSE``) instead of through a Python ``bytes``.

    Its bytes come from ``fetch`` (``run``) or are pushed by the owner (``feed``: a member of a
    resource's zip, ``ContentCache.bulk``).

    A second attempt (after a size or MD5 mismatch) rewrites the partial file in place from
    offset 0 rather than truncating it: a reader whose ``pread`` is in flight then sees bytes of
    one attempt or the other, never a hole, and readers that ask for bytes not yet rewritten
    wait for them again (``_arrived`` restarts at 0).

    Thread-safety: ``_cond`` protects ``_arrived``, ``_generation``, ``_fetching``, ``_done``,
    ``error``, ``bytes_received`` and the validity of ``_fd``. Lock order: the content cache's
    lock may be held when ``_cond`` is taken (``dup_fd``), never the reverse. The fd offset is
    used only by the writer; readers use ``pread``, which leaves it alone.
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
        max_bytes: Optional[int] = None,
        make_room: Callable[[int], bool] = lambda needed: False,
        restarted: Callable[[], None] = lambda: None,
    ) -> None:
        #: Read-only after construction.
        self.uri = uri
        self.size = size if size is not None and size >= 0 else None
        self.digest = (digest or "").strip().lower() if verify else ""
        self.partial_path = partial_path
        self._fetch = fetch
        self._cancelled = cancelled
        #: no attempt may write more than this into the partial file: the listed size, else
        #: the cache limit (a download never outgrows the cache, issue 17 §4)
        self._max_bytes = self.size if self.size is not None else max_bytes
        #: ``make_room(n)``: the cache disk is full (ENOSPC); evict to free ``n`` bytes, True
        #: if anything was freed (then the write is tried once more)
        self._make_room = make_room
        #: called when an attempt is thrown away for another (its bytes may have been read)
        self._restarted = restarted
        #: the partial file, created when the first byte is due, the first reader joins or a
        #: bulk fetch's helper thread gets to it (``prepare``: it registers hundreds of
        #: downloads at once and creates their files ahead of the zip, one by one)
        self._fd: Optional[int] = None
        self._cond = threading.Condition(threading.Lock())
        # _cond protects the fields below.
        self._arrived = 0  # bytes of the current attempt written to the partial file
        #: ``_arrived`` when a reader last gave up at its deadline; while nothing more has
        #: arrived, a new wait is cut to ``STALL_GRACE`` (the kernel retries a failed
        #: readahead with a second read: it must not wait another --timeout for the same stall)
        self._stalled_at: Optional[int] = None
        self._generation = 0  # attempt number; bumps when a refetch starts
        #: attempts thrown away after bytes of theirs arrived (``thrown_since``)
        self._thrown: List[int] = []
        #: attempts some reader was served bytes of (``note_read``; a set add, no lock)
        self._read: Set[int] = set()
        self._fetching = False  # the current attempt's fetch is still running
        self._done = False
        #: the attempt (generation) whose size and MD5 checked out; readers of the last bytes
        #: wait for it (issue 17 §5: nothing is read to EOF before the verdict)
        self._verified = -1
        self._answers = _CacheAnswers()  # what GETs learnt of a shared cache (AttemptSink)
        self._fed_hasher: Any = None  # the MD5 of the current fed attempt (``feed``)
        #: (sink, hasher) of the current fed attempt, for a fetch that goes on with it
        self._fed: "Optional[tuple[Any, Any]]" = None
        #: None until done; then None (success) or the exception readers get.
        self.error: Optional[BaseException] = None
        #: Bytes received over all attempts (for the cache's bytes_downloaded counter).
        self.bytes_received = 0

    # -- worker side -----------------------------------------------------------------------------

    def run(self, adopt: Callable[[str], None], ended: Ended, go_on: bool = False) -> None:
        """Fetch, verify (refetching once on a mismatch) and ``adopt`` the partial; never raises.

        ``go_on``: the first attempt goes on with the fed one that broke off (a bulk zip cut
        inside this member, ``fed_broke_off``) instead of starting over: its reader has been
        served the fed bytes, and a new attempt would end that reader in EIO.

        Runs in a download pool thread. Then calls ``ended(error)`` (the owner unregisters the
        download, so that nobody can join it any more) *before* waking the readers with the result:
        a reader that sees the error and opens again starts a new download instead of joining
        this one, and a reader that sees success finds the key cached.
        """
        error: Optional[BaseException] = None
        try:
            for attempt in (1, 2):
                fed = self._fed if go_on and attempt == 1 else None
                problem = self._attempt(self._fetch, fed)
                if problem is None:
                    self.sync()  # durable before the index row names it (issue 18 §0)
                    try:
                        adopt(self.partial_path)
                    except DownloadCancelled:
                        raise
                    except Exception as exc:  # noqa: BLE001 - the bytes are good: see not_kept
                        self.not_kept(exc)
                    break
                if attempt == 1:
                    log.info("download %s: %s; fetching again", self.uri, problem)
                    self.restart()
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

    def _attempt(self, fetch: Fetch, fed: "Optional[tuple[Any, Any]]" = None) -> Optional[str]:
        """One fetch into the partial file; returns None if size and MD5 check out, else why not.

        A body cut mid-way (a retryable error after bytes arrived) goes on from another GET
        (``_resume``), at most ``RESUMES`` times: XNAT ignores Range, so the new GET starts at
        byte 0 and its first bytes are compared with those already written.  ``fed``: the
        (sink, hasher) of a fed attempt that broke off, which this fetch goes on with."""
        if fed is None:
            sink, hasher = self._begin()
        else:
            sink, hasher = fed
            with self._cond:
                self._fetching = True
        try:
            resumes = 0
            while True:
                try:
                    # once all here, it is kept even if the cache is closing
                    cut = resumes > 0 or fed is not None
                    fetch(self.uri, self._resume(sink) if cut else sink)
                    break
                except IntegrityError:
                    raise
                except Exception as exc:  # re-raised unless it may go on
                    if not self._may_resume(exc, resumes):
                        raise
                    resumes += 1
        except (TooLong, Changed) as exc:
            self._fetch_over()
            if isinstance(hasher, _FileMD5):
                hasher.abandon()
            return str(exc)
        except BaseException:
            self._fetch_over()
            if isinstance(hasher, _FileMD5):
                hasher.abandon()
            raise
        self._fetch_over()
        return self._check(hasher)

    def _may_resume(self, error: BaseException, resumes: int) -> bool:
        """Go on from another GET after ``error``?  Only for a retryable failure (a reset, a
        timeout: ``retryable`` on the client's errors) after bytes arrived (before that the
        client has retried already), a bounded number of times."""
        with self._cond:
            arrived = self._arrived
        if resumes >= RESUMES or arrived == 0 or not getattr(error, "retryable", False):
            return False
        if self._cancelled():
            return False
        log.info(
            "download %s: %s after %d bytes; fetching again to go on from there",
            self.uri,
            error,
            arrived,
        )
        return True

    def _resume(self, sink: Sink) -> Sink:
        """The sink of a GET that goes on with a cut attempt: its first bytes (those the cut
        GET wrote) must be the same as on disk, then the rest goes to ``sink`` (same attempt,
        same hasher: readers of the bytes already served are not disturbed).  A difference
        is ``Changed``: the file changed on XNAT, and the attempt is thrown away."""
        fd = self._fd
        assert fd is not None
        with self._cond:
            have = self._arrived
        os.lseek(fd, have, os.SEEK_SET)  # the sink appends where the cut GET stopped
        pos = 0

        def resumed(chunk: Chunk) -> None:
            nonlocal pos
            if self._cancelled():
                raise DownloadCancelled(self.uri)
            if pos >= have:
                sink(chunk)
                return
            view = memoryview(chunk)
            n = min(len(view), have - pos)
            if os.pread(fd, n, pos) != view[:n]:
                raise Changed(
                    f"changed on the server: a new GET differs within the first {have} "
                    "bytes, which the cut one had sent"
                )
            pos += n
            if len(view) > n:
                sink(view[n:])

        return AttemptSink(resumed, self._answers.answered, fresh=getattr(sink, "fresh", False))

    def _begin(self, inline_only: bool = False) -> "tuple[Sink, Any]":
        """Start an attempt: (sink for its bytes, hasher or None).  The MD5 is computed as the
        bytes come: inline for small files and for fed members (``inline_only``: a zip's
        feeder thread hashes each member as it passes, so its verdict is there when the
        member ends), by a ``_FileMD5`` thread for large fetched files.

        The sink writes at most ``_max_bytes`` (the listed size): one byte more ends the
        attempt with ``TooLong`` and nothing beyond it reaches the disk (issue 17 §4)."""
        hasher: Any = None
        with self._cond:
            fd = self._partial_fd_locked()
            self._fetching = True
            generation = self._generation
        fresh = self._answers.via_cache  # an earlier attempt's answer came through one
        if self.digest:
            if inline_only or (self.size is not None and self.size <= INLINE_HASH_MAX):
                hasher = hashlib.md5(usedforsecurity=False)
            else:
                hasher = _FileMD5(self, fd, generation)
        inline = hasher if not isinstance(hasher, _FileMD5) else None
        limit = self._max_bytes

        def sink(chunk: Chunk) -> None:
            if self._cancelled():
                raise DownloadCancelled(self.uri)
            if not chunk:
                return
            if limit is not None and self._arrived + len(chunk) > limit:
                what = "listed size" if self.size is not None else "cache limit"
                raise TooLong(f"long download: more than the {what} of {limit} bytes")
            view = memoryview(chunk)
            while view:
                view = view[self._write(fd, view) :]
            with self._cond:
                self._arrived += len(chunk)
                self.bytes_received += len(chunk)
                self._cond.notify_all()
            if inline is not None:
                inline.update(chunk)  # after the readers were woken: they never wait for it

        return AttemptSink(sink, self._answers.answered, fresh=fresh), hasher

    def _write(self, fd: int, view: memoryview) -> int:
        """One ``write``; on ENOSPC or EDQUOT (a quota on the cache disk: ``statvfs`` does not
        show it, so room made before the download cannot have seen it) the cache is asked to
        evict and the write tried once more (a full cache disk with evictable entries is not
        an error, issue 18 §0).  Still full: that errno, naming the download's URI (the op's
        one log line names the path; this names the URL)."""
        try:
            return os.write(fd, view)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            if not self._make_room(max(len(view), 1 << 20)):
                raise self._disk_full(exc) from exc
        try:
            return os.write(fd, view)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            raise self._disk_full(exc) from exc

    def _disk_full(self, exc: OSError) -> OSError:
        with self._cond:
            arrived = self._arrived
        return OSError(
            exc.errno,
            f"{exc.strerror} on the cache disk, nothing more to evict: the download of "
            f"{self.uri} stopped after {arrived} bytes",
            self.partial_path,
        )

    def dup_partial(self) -> Optional[int]:
        """A dup of the partial file's fd (caller closes it), None when there is none."""
        with self._cond:
            return None if self._fd is None else os.dup(self._fd)

    def sync(self) -> None:
        """Make the partial file's bytes durable (``fdatasync``), before it is indexed: after a
        power loss an index row never names a file whose bytes were never written."""
        with self._cond:
            fd = self._fd
            if fd is None:
                return
            fd = os.dup(fd)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _fetch_over(self) -> None:
        with self._cond:
            self._fetching = False
            self._cond.notify_all()

    def _check(self, hasher: Any) -> Optional[str]:
        """Size and MD5 of the attempt that just ended; None if both are right, else why not."""
        assert self._fd is not None
        fd = self._fd
        with self._cond:
            got_size = self._arrived
        try:
            if os.fstat(fd).st_size > got_size:  # a longer first attempt rewritten in place
                os.ftruncate(fd, got_size)
        except BaseException:
            if isinstance(hasher, _FileMD5):
                hasher.abandon()  # its thread and its dup'd fd end with the attempt
            raise
        if self.size is not None and got_size != self.size:
            if isinstance(hasher, _FileMD5):
                hasher.abandon()
            kind = "short download" if got_size < self.size else "long download"
            return f"{kind}: expected {self.size} bytes, got {got_size}"
        if self.digest:
            if isinstance(hasher, _FileMD5):
                got = hasher.hexdigest(got_size)
            elif hasher is not None:
                got = hasher.hexdigest()
            else:
                got = digest_file(fd, got_size)
            if got != self.digest:
                return f"digest mismatch: expected {self.digest}, got {got}"
        with self._cond:
            self._verified = self._generation
            self._cond.notify_all()
        return None

    # -- fed attempts: the bytes come from elsewhere (a member of a resource's zip) -------------

    def feed(self) -> Sink:
        """Begin an attempt whose bytes the caller pushes into the returned sink; end it with
        :meth:`feed_done`.  Readers are served as the bytes arrive, as with ``fetch``."""
        sink, hasher = self._begin(inline_only=True)
        self._fed_hasher = hasher
        self._fed = (sink, hasher)
        return sink

    def feed_done(self) -> None:
        """The pushed bytes are complete (or the push broke off)."""
        self._fetch_over()

    def check_fed(self) -> Optional[str]:
        """Size and MD5 (read back from the file) of a fed attempt: None if right, else why
        not.  When right, the owner adopts the file and calls :meth:`adopted`; when not, it
        fetches the file on its own (:meth:`restart`, then :meth:`run`)."""
        try:
            return self._check(self._fed_hasher)
        except OSError as exc:
            return f"cannot check the fed bytes: {exc}"

    def adopted(self, ended: Ended) -> None:
        """The owner adopted a fed download's file: end the download with success (a failed
        one ends with :meth:`fail`)."""
        self._end(None, ended)

    # the hashing thread's view of the download (``_FileMD5``)
    def _hash_wait(
        self, pos: int, generation: int, abandoned: Callable[[], bool]
    ) -> "Optional[tuple[int, bool]]":
        """Block until more than ``pos`` bytes arrived or the fetch ended; (arrived count, fetch
        over), or None when this attempt is over for the hasher (abandoned, refetched, closed)."""
        with self._cond:
            while True:
                if abandoned() or self._generation != generation or self._done:
                    return None
                if self._arrived > pos or not self._fetching:
                    return self._arrived, not self._fetching
                self._cond.wait()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def restart(self) -> None:
        """Start another attempt over the last one's bytes (see the class docstring)."""
        self._restarted()  # first: nobody may trust pages of this file from here on
        with self._cond:
            if self._arrived > 0:
                self._thrown.append(self._generation)
            self._generation += 1
            self._arrived = 0
            self._stalled_at = None
            if self._fd is not None:
                os.lseek(self._fd, 0, os.SEEK_SET)
            self._cond.notify_all()

    @property
    def generation(self) -> int:
        """The attempt running now (0 first; a refetch bumps it)."""
        with self._cond:
            return self._generation

    def note_read(self, generation: int) -> None:
        """A reader was served bytes of attempt ``generation``: through FUSE they are now in
        the kernel's page cache too, where every open of the file may read them."""
        self._read.add(generation)

    def thrown_since(self, generation: int) -> Optional[int]:
        """The first attempt at or after ``generation`` that was thrown away after a reader
        was served bytes of it, or None: an open since then may hold such bytes without
        having read them itself (the kernel's pages are shared by every open)."""
        with self._cond:
            return next((g for g in self._thrown if g >= generation and g in self._read), None)

    def prepare(self) -> bool:
        """Create the partial file now, ahead of its bytes (a bulk fetch's helper thread, so
        that the zip's feeder does not wait for the file system); False once the download has
        ended.  Raises what ``open`` raises."""
        with self._cond:
            if self._done:
                return False
            self._partial_fd_locked()
            return True

    def _partial_fd_locked(self) -> int:
        """The partial file's fd, created on first use.  Caller holds ``_cond``."""
        if self._fd is None:
            if self._done:
                raise RuntimeError(f"download {self.uri}: already ended")
            # O_EXCL: a partial is never shared with a leftover; 0600: the cache is private.
            self._fd = os.open(
                self.partial_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        return self._fd

    def not_kept(self, error: BaseException) -> None:
        """The verified bytes could not be adopted into the store (its index refused them, or
        another process removed the partial file): its readers still read them through their
        own fds, so the download ends well, served but not kept (the next open fetches the
        file again).  Failing it made a reader of a right file get ENOENT or EIO mid-file."""
        log.warning("download %s: verified but not kept in the cache: %s", self.uri, error)
        self._discard()

    def _discard(self) -> None:
        try:
            os.unlink(self.partial_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning(
                "download %s: cannot remove partial %s: %s", self.uri, self.partial_path, exc
            )

    def _end(self, error: Optional[BaseException], ended: Ended) -> None:
        try:
            ended(error)
        finally:
            with self._cond:
                self.error = error
                self._done = True
                fd, self._fd = self._fd, None  # readers hold their own dups
                self._cond.notify_all()
            if fd is not None:
                os.close(fd)

    def fail(self, error: BaseException, ended: Ended) -> None:
        """End a download that never ran (cancelled before a worker picked it up)."""
        self._discard()
        self._end(error, ended)

    # -- reader side -----------------------------------------------------------------------------

    @property
    def arrived(self) -> int:
        """Bytes of the current attempt in the partial file."""
        with self._cond:
            return self._arrived

    @property
    def done(self) -> bool:
        with self._cond:
            return self._done

    @property
    def verified(self) -> bool:
        """The current attempt's size and MD5 checked out: the partial file's bytes are final
        (no attempt follows a verified one; what is left is its fsync and adoption)."""
        with self._cond:
            return self._verified >= 0 and self._verified == self._generation

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
            if self._done:
                raise RuntimeError(f"download {self.uri}: joined after release")
            return os.dup(self._partial_fd_locked())

    def span(self, offset: int, size: int, deadline: float) -> int:
        """How many bytes of [offset, offset+size) are in the partial file, once they all have
        arrived (fewer only at the end of the file, 0 past it).

        Raises the download's error if it failed (whatever ``fetch`` raised, IntegrityError,
        DownloadCancelled), or TimeoutError (ETIMEDOUT) when ``deadline`` (a time.monotonic()
        value) passes first.
        """
        return self._span(offset, size, deadline).n

    def span_of(self, offset: int, size: int, deadline: float) -> "Span":
        """:meth:`span` with the attempt the bytes belong to and whether the read is final: a
        handle checks at its final read that it served no other attempt's bytes
        (``ContentHandle``)."""
        return self._span(offset, size, deadline)

    def _span(self, offset: int, size: int, deadline: float) -> "Span":
        if size <= 0 or offset < 0:
            return Span(0, -1, False)
        end = offset + size
        # a read that reaches the listed end also waits for the verdict on size and MD5, so
        # nobody reads a whole file whose bytes are wrong with success (issue 17 §5); every
        # read does when bytes came from a shared cache's disk (``_CacheAnswers``)
        last = False
        if self.size is not None:
            last = end >= self.size
            end = min(end, self.size)
        with self._cond:
            stalled = self._stalled_at is not None and self._stalled_at == self._arrived
            if stalled:
                deadline = min(deadline, time.monotonic() + STALL_GRACE)
            while True:
                if self.error is not None:
                    raise self.error
                if self._done or (
                    self._arrived >= end
                    and (not (last or self._answers.held) or self._verified == self._generation)
                ):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._stalled_at = self._arrived
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"download {self.uri}: bytes {offset}..{end} not there in time"
                        f" ({self._arrived} arrived"
                        f"{'; none since a reader waited its whole deadline' if stalled else ''})",
                    )
                self._cond.wait(remaining)
            # final: the verdict is in and this read reaches the end; the generation is then
            # the verified one (a size-less download is final once done, at its end)
            final = last or (self._done and end >= self._arrived)
            n = max(0, min(end, self._arrived) - offset)
            return Span(n, self._generation, final)

    def read(self, fd: int, offset: int, size: int, deadline: float) -> bytes:
        """Bytes [offset, offset+size) read with ``pread(fd)`` as soon as they have arrived;
        short or empty at the end of the file.  Raises like :meth:`span`."""
        return self.read_of(fd, offset, size, deadline)[0]

    def read_of(self, fd: int, offset: int, size: int, deadline: float) -> "tuple[bytes, Span]":
        """:meth:`read` with the :class:`Span` the bytes came from (one attempt's bytes)."""
        while True:
            span = self._span(offset, size, deadline)
            data = os.pread(fd, span.n, offset) if span.n > 0 else b""
            with self._cond:
                # a refetch rewrote the file while we read: those bytes may be from either try
                # (and a shorter try may have cut the file: read again, then it is no fault)
                if span.n > 0 and self._generation != span.generation:
                    continue
            if len(data) < span.n:
                # the file shrank behind us (after its adoption: a disk fault, a hand in the
                # cache directory); a short read would reach the reader as the end of the file
                raise IntegrityError(
                    f"download {self.uri}: {len(data)} of {span.n} bytes at offset {offset} "
                    "in the cache file (it shrank)"
                )
            return data, span
