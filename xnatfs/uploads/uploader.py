"""Uploader: turns journal entries into uploads, with retries, backoff and resume.

The uploader schedules; it does not know how to upload (rclone ``writeback`` ``PutFn``). It is
given two callables:

- ``put(entry)`` sends ``entry.data_path`` to ``entry.target`` and raises on failure. Whether a
  failure is worth retrying is decided by the one table in ``uploads/retry.py``
  (:func:`~xnatfs.uploads.retry.classify`: only 400/401/403/404/409/413-like refusals and a
  bad local target are permanent; 5xx, timeouts, drops, login pages are retried until XNAT
  has the bytes), and ``retry_after`` (seconds the server asked for) is honoured, capped at
  ``max_delay``. A ``verify`` that fails after a ``put`` that returned is always re-checked
  later, never ``failed``.
- ``verify(entry, sent) -> bool`` says whether the server now shows ``entry.path`` with
  ``entry.size`` bytes and digest ``entry.md5`` (an entry added without its MD5 gets it from a
  thread that hashes the data file while ``put`` sends it, ``_Digest``). An entry is removed
  from the journal *only* after verify said yes. Verify is also asked *before* sending again
  when an earlier attempt was started (``entry.tries > 0``): that attempt may have reached the
  server (a timeout after the body was sent, a crash before the entry was removed), and
  sending again without overwrite would get a 409; and after a refusal of such an attempt
  (``_landed_before``).  ``sent`` says which: True right after a ``put`` of these bytes
  returned, False when a yes means "an earlier attempt landed" and drops the entry unsent, so
  the size alone must not say yes (a listing without MD5s: it may be the file they replace).

Scheduling: a bounded pool of ``workers`` named threads (``xnatfs-upload-N``) started by
``start()`` (never by the constructor: threads must start after FUSE forks). Each waits on one
``Condition`` with a timeout computed from the earliest ``next_attempt``; ``submit``,
finished attempts and ``wake()`` notify it. Due entries run oldest first. Entries of the same
mount path are versions of one file: never two attempts for one path at a time, and once a
version is confirmed, older versions still waiting are dropped as superseded (they would
overwrite newer bytes).

Backoff: attempt N failing with a transient error waits ``base_delay * 2**(N-1)``, capped at
``max_delay``, with jitter (uniform in [d/2, d]). A permanent error marks the entry
``failed``: it stays on disk, listed, and can be retried by ``submit``. On ``start`` a
``failed`` entry whose recorded error the table now calls transient (written by an older
version, which gave up on 500s) is queued again. Each failure is one log
line, subject first: ``upload <path>: <error>; try N, retry in Ds``, at DEBUG for tries 1-2, INFO
for 3-5, WARNING after (S3QL ``retry``); a give-up is a WARNING.

Durability (what a crash may find, and why fewer sidecar writes lose nothing): the journal
makes an entry durable before the first attempt (``Journal.add``: data fsynced, sidecar
written and fsynced, directory fsynced), and removes it only after ``verify`` said yes.
Between those, an attempt writes the sidecar only when it fails (``_failed``: state,
``tries``, ``last_error``, the MD5), before ``upload_now`` raises to close().  It used to
write it twice more on every attempt -- ``uploading`` with ``tries + 1`` before the PUT, and
the MD5 once hashed -- four fsyncs on the path of every close() (``PERSIST_ATTEMPT_START``,
``PERSIST_DIGEST``).  What those writes recorded, and why nothing needs it on disk:

- ``uploading``: ``reload`` turns it back into ``pending`` anyway; while this process runs,
  ``_running`` says it (``status``).
- ``tries + 1`` (so that an attempt after a crash asks XNAT first, and a PUT that had landed
  is not sent again and refused as a duplicate): every entry ``start`` finds is checked first
  (``_check_first``), whatever its ``tries``; a crash can only leave entries for a later
  ``start``.  The cost is one listing per entry left by a crash, never a request more on
  the normal path.
- the MD5: an entry found without one is hashed by ``reload`` from its fsynced data; a
  failed attempt's write stores it; a confirmed entry is removed.

So a crash at any point of an attempt finds the entry as ``add`` (or the last failure) left
it, which is one of the states ``reload`` and ``start`` handle; close() has returned 0 only
after ``verify`` (and the entry's removal), so no acknowledged write depends on any of it.

Shutdown (unmount) is such a crash for an attempt that outlasts it: ``close()`` waits for
running attempts at most ``SHUTDOWN_WAIT`` seconds (they are background retries: every file's
close() waited for its own upload), then abandons them (daemon threads, ended with the
process).  An abandoned attempt writes nothing more to the journal (``_writes``: neither its
failure nor its success, nor the removal of a confirmed entry), so the entry stays as ``add``
or its last failure left it, the state a crash leaves, and the next start checks it on XNAT
first (``_check_first``) and sends it again only if it is not there.

Clocks: ``clock`` (default ``time.monotonic``) gives ``next_attempt`` and the ``deadline``
arguments; the waits themselves are real (``Condition.wait(deadline - clock())``), so tests use
a fake clock plus ``wake()`` instead of sleeping.

This module imports nothing from ``xnatfs.tree`` or ``xnatfs.xnat`` (``retry`` matches the
client's error classes by name).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import random
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

from xnatfs.uploads.journal import DONE, FAILED, PENDING, UPLOADING, Entry, Journal
from xnatfs.uploads.retry import Verdict, classify, classify_text

log = logging.getLogger(__name__)

__all__ = ["Uploader", "UploadNotVerified", "PutFn", "VerifyFn"]

PutFn = Callable[[Entry], Any]
VerifyFn = Callable[[Entry, bool], bool]
ChangeFn = Callable[[Entry], None]
#: ``make_room(need)``: free ``need`` bytes on the journal's disk; True if anything was freed
RoomFn = Callable[[int], bool]

#: the errnos of a full disk: no space (ENOSPC), or the user's quota (EDQUOT)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: room a sidecar write asks for on a full disk (a sidecar is a few KiB)
_SIDECAR_ROOM = 1 << 20

#: How long ``close()`` / ``upload_now()`` wait when no deadline is given (seconds).
_DEFAULT_WAIT = 10.0
#: Longest ``close()`` (unmount) waits for upload attempts still running, whatever deadline it
#: is given (seconds).  One that a hung server holds held the unmount until close()'s 10 s;
#: abandoned, it loses nothing (module docstring, "Durability": it is as if the process had
#: crashed there) and the next mount checks the entry on XNAT first.
SHUTDOWN_WAIT = 2.0
#: At most this many pending entries are named one by one in the shutdown log.
_SHUTDOWN_LOG_LIMIT = 20
#: Entries up to this size are hashed by the attempt's own thread when their MD5 is needed
#: (``_Digest``), not by a hashing thread beside the PUT: 1 MiB hashes in ~2 ms, little to
#: overlap, and a thread per small file cost the daemon ~0.7 ms of CPU per file in B7
#: (RESULTS.md, "Small files").  0: every entry gets the thread (the old way).
INLINE_DIGEST_MAX = 1 << 20
#: Write the entry's sidecar (two fsyncs) before each attempt, to record ``uploading`` and
#: the attempt's number, and again once the MD5 is known.  Off: neither is needed for the
#: crash ordering (module docstring, "Durability"); a failed attempt writes the entry, with
#: its MD5 and tries, before the caller hears of the failure.  True: the old way.
PERSIST_ATTEMPT_START = False
PERSIST_DIGEST = False


class UploadNotVerified(OSError):
    """``put`` returned but the server does not show the bytes (size or digest differ, or the
    file is missing). Retryable: listings may lag, and sending again is safe. An ``OSError``
    (EIO) so that close() answers EIO through the one error path (fs/errmap.py)."""

    retryable = True

    def __init__(self, entry: Entry) -> None:
        self.path = entry.path
        super().__init__(
            errno.EIO,
            f"server does not show the uploaded file ({entry.size} bytes, md5 {entry.md5})",
        )


class _Digest:
    """The MD5 of an entry's data file, computed while the upload runs (both read the same
    bytes; hashing them first would add the hash's time to every close).

    The thread has idle priority while the upload runs, so on a small machine it takes no CPU
    from the transfer (or from an XNAT on the same host); :meth:`result` then takes over
    whatever is left at the caller's priority, so a loaded node does not starve it.  A file
    of at most ``INLINE_DIGEST_MAX`` bytes gets no thread: :meth:`result` hashes it all.

    Ownership of the descriptor (issue 18, the fd closed twice): this object is the only owner
    of ``_fd``. It is closed once, by :meth:`close` (idempotent, under ``_lock``), only after
    the hashing thread has ended; :meth:`result` computes the digest once and remembers it (or
    the error), so calling it again -- after a ``verify`` that raised -- never touches the
    descriptor again. A descriptor number is reused by the kernel at once for the next
    ``open``/``socket`` of any thread: reading or closing it a second time read or closed
    another thread's file or connection (wrong bytes in uploads, the journal and the cache).
    """

    _CHUNK = 1 << 20

    def __init__(self, journal: Journal, entry: Entry) -> None:
        self._journal = journal
        self._entry = entry
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._lock = threading.Lock()  # guards _fd, _done, _value, _failure
        self._fd: Optional[int] = os.open(entry.data_path, os.O_RDONLY | os.O_CLOEXEC)
        self._pos = 0
        self._stop = False
        self._error: Optional[BaseException] = None
        self._done = False
        self._value: Optional[Entry] = None
        self._failure: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        if entry.size > INLINE_DIGEST_MAX:
            self._thread = threading.Thread(target=self._run, name="xnatfs-digest", daemon=True)
            self._thread.start()

    def _join(self) -> None:
        """Stop the hashing thread (if one was started) and wait for it."""
        self._stop = True
        if self._thread is not None:
            self._thread.join()

    def _hash(self, fd: int, in_thread: bool) -> None:
        while not (in_thread and self._stop):
            chunk = os.pread(fd, self._CHUNK, self._pos)
            if not chunk:
                return
            self._md5.update(chunk)
            self._pos += len(chunk)

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        fd = self._fd  # set before the thread started; closed only after it is joined
        try:
            if fd is not None:
                self._hash(fd, in_thread=True)
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._error = exc

    def close(self) -> None:
        """Stop the thread and close the descriptor. Idempotent: the fd is closed once."""
        self._join()
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def result(self) -> Entry:
        """The entry with its digest (raises what hashing raised; KeyError: the entry left the
        journal). Computed once: later calls return (or raise) the same.  Stored in the
        journal only with ``PERSIST_DIGEST``: else the entry carries it, and the journal gets
        it with the entry's next version (a failed attempt's, ``Uploader._failed``) or never
        (confirmed: removed; a crash: ``Journal.reload`` hashes the fsynced data again)."""
        with self._lock:
            if self._done:
                if self._failure is not None:
                    raise self._failure
                assert self._value is not None
                return self._value
            self._done = True
            self._join()
            fd, self._fd = self._fd, None
            try:
                if self._error is not None:
                    raise self._error
                assert fd is not None
                self._hash(fd, in_thread=False)
                hashed = dataclasses.replace(self._entry, md5=self._md5.hexdigest())
                if PERSIST_DIGEST:
                    self._value = self._journal.update(hashed)
                elif self._journal.get(hashed.id) is None:
                    raise KeyError(hashed.id)
                else:
                    self._value = hashed
                return self._value
            except BaseException as exc:
                self._failure = exc
                raise
            finally:
                if fd is not None:
                    os.close(fd)

    def result_or(self, entry: Entry) -> Entry:
        """The entry with its digest, or ``entry`` as it was if hashing failed."""
        try:
            return self.result()
        except Exception:  # noqa: BLE001 - the upload's own error is the one to report
            return entry


class Uploader:
    """Uploads journal entries in the background and on demand.

    Thread-safety: all public methods may be called from any thread. ``_cv`` (a Condition on
    ``_lock``) protects ``_queued``, ``_running``, ``_threads``, ``_started`` and ``_stopping``;
    it is never held while calling ``put``, ``verify``, ``on_change`` or a journal method that
    writes. ``_writes`` is held around an attempt's journal writes (and by ``close()`` to stop
    them). Lock order: ``_writes`` before ``Uploader._lock`` before ``Journal._lock`` (brief
    index reads such as ``get``/``versions_for`` under ``_cv``); the journal never calls the
    uploader.
    """

    def __init__(
        self,
        journal: Journal,
        put: PutFn,
        verify: VerifyFn,
        *,
        workers: int = 2,
        max_delay: float = 300.0,
        base_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Optional[ChangeFn] = None,
        rng: Optional[random.Random] = None,
        make_room: Optional[RoomFn] = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._journal = journal
        self._put = put
        self._verify = verify
        #: size of the background pool
        self.workers = workers
        #: longest wait between attempts (seconds)
        self.max_delay = float(max_delay)
        #: wait after the first failure (seconds); doubles per try
        self.base_delay = float(base_delay)
        self._clock = clock
        self._on_change = on_change
        #: asked once when a sidecar write meets a full disk (``_save``), as a user's write is
        self._make_room = make_room
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._queued: Dict[str, Entry] = {}  # id -> entry waiting for next_attempt
        self._running: Dict[str, Entry] = {}  # id -> entry whose attempt runs now
        self._threads: List[threading.Thread] = []
        self._started = False
        self._stopping = False
        #: held around every journal write of an attempt; ``_abandoned`` (set under it by
        #: ``close()`` when attempts outlast ``SHUTDOWN_WAIT``) stops those writes for good
        self._writes = threading.Lock()
        self._abandoned = False
        #: ids whose next attempt asks the server first although their ``tries`` say none
        #: ran: entries an earlier process left (its attempt's start was not written down,
        #: ``PERSIST_ATTEMPT_START``), and an attempt that ended in an unexpected error
        self._check_first: Set[str] = set()

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Queue every pending entry of the journal (reloading it first if nobody did) and
        start the worker threads. Call once, after FUSE forked."""
        with self._cv:
            if self._started:
                raise RuntimeError("uploader already started")
            self._started = True
        if not self._journal.loaded:
            self._journal.reload()
        now = self._clock()
        resumed = 0
        requeued: List[Entry] = []
        with self._cv:
            for entry in self._journal.entries():
                if (
                    entry.state == FAILED
                    and entry.target is not None
                    and classify_text(entry.last_error).retry
                ):
                    # failed by an older version for a reason the table now calls transient
                    requeued.append(entry)
                    continue
                if (
                    entry.state in (PENDING, UPLOADING)
                    and entry.id not in self._queued
                    and entry.id not in self._running
                ):
                    # next_attempt of an earlier run is on another clock: due now
                    self._queued[entry.id] = dataclasses.replace(
                        entry, state=PENDING, next_attempt=now
                    )
                    # an attempt of it may have reached XNAT before that run ended
                    self._check_first.add(entry.id)
                    resumed += 1
            for i in range(self.workers):
                thread = threading.Thread(
                    target=self._worker, name=f"xnatfs-upload-{i}", daemon=True
                )
                self._threads.append(thread)
            threads = list(self._threads)
            self._cv.notify_all()
        for entry in requeued:
            log.info(
                "upload %s: was failed (%s); transient, queued again",
                entry.path or entry.id,
                entry.last_error,
            )
            self.submit(entry)
        for thread in threads:
            thread.start()
        if resumed:
            log.info("uploader: resuming %d pending upload(s)", resumed)

    def close(self, deadline: Optional[float] = None) -> List[Dict[str, Any]]:
        """Stop the workers: no new attempt starts; running ones may finish until ``deadline``
        (on ``clock``; default now + 10 s) but no longer than ``SHUTDOWN_WAIT``, then are
        abandoned (daemon threads that write nothing more to the journal; their entries stay
        in it and resume at the next start, module docstring "Durability"). Logs every upload
        still pending (rclone ``WaitForWriters``) and returns ``status()`` of them."""
        now = self._clock()
        deadline = min(now + _DEFAULT_WAIT if deadline is None else deadline, now + SHUTDOWN_WAIT)
        with self._cv:
            self._stopping = True
            threads = list(self._threads)
            self._cv.notify_all()
        for thread in threads:
            thread.join(max(0.0, deadline - self._clock()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            with self._writes:  # waits for a journal write under way, never for the server
                self._abandoned = True
        if not self._abandoned:
            # records a full disk kept in memory (``_save``): written now if there is room
            self._journal.save_unsaved()
        left = [s for s in self.status() if s["state"] != DONE]
        if stuck:
            log.warning(
                "uploader: %d upload(s) still running at shutdown (%s); abandoned, "
                "they stay in the journal",
                len(stuck),
                ", ".join(stuck),
            )
        for item in left[:_SHUTDOWN_LOG_LIMIT]:
            log.warning(
                "upload %s: still %s at shutdown (%d bytes, %d tries%s); kept in the "
                "journal for the next mount",
                item["path"] or item["id"],
                item["state"],
                item["size"],
                item["tries"],
                f", last error: {item['last_error']}" if item["last_error"] else "",
            )
        if len(left) > _SHUTDOWN_LOG_LIMIT:
            log.warning(
                "uploader: ... and %d more upload(s) kept in the journal",
                len(left) - _SHUTDOWN_LOG_LIMIT,
            )
        return left

    def __enter__(self) -> "Uploader":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ requests
    def submit(self, entry: Entry, delay: float = 0.0) -> None:
        """Queue ``entry`` for an attempt as soon as a worker is free (or ``delay`` seconds from
        now: a write-back delay for temporary files that are usually renamed right after they
        are closed): a new entry, or a retry now of one that waits out a backoff or has
        failed. No-op while its attempt runs."""
        current = self._journal.get(entry.id)
        if current is None:
            return  # confirmed or removed meanwhile
        with self._cv:
            if entry.id in self._running:
                return
        entry = current
        if entry.state == FAILED:
            saved = self._save(dataclasses.replace(entry, state=PENDING))
            if saved is None:
                return
            entry = saved
            self._notify(entry)  # listings show it pending again, not failed
        with self._cv:
            if entry.id in self._running:
                return
            self._queued[entry.id] = dataclasses.replace(
                entry, state=PENDING, next_attempt=self._clock() + delay
            )
            self._cv.notify()

    def retry_soon(self) -> None:
        """XNAT answers again after an outage (``xnat/breaker.py``): every queued entry is
        tried now, not at the end of the backoff its fast failures grew (up to
        ``max_delay``, 300 s by default, after the server was back)."""
        with self._cv:
            now = self._clock()
            for key, entry in list(self._queued.items()):
                if entry.next_attempt > now:
                    self._queued[key] = dataclasses.replace(entry, next_attempt=now)
            self._cv.notify_all()

    def wake(self) -> None:
        """Re-read the schedule now (the clock moved, connectivity came back...)."""
        with self._cv:
            self._cv.notify_all()

    def upload_now(self, entry: Entry, deadline: Optional[float] = None) -> None:
        """One attempt in the caller's thread; returns once the server confirmed the bytes
        (used by close()/fsync(), which must not return earlier).

        If an attempt for this entry or another version of its path is running, waits for it
        first, until ``deadline`` (on ``clock``; default now + 10 s), then raises
        ``TimeoutError(ETIMEDOUT)``; if that attempt confirmed this entry, returns. The
        attempt itself is bounded by ``put``'s own timeouts, not by ``deadline``.

        On failure the entry stays in the journal (pending with a backoff scheduled if the
        error is retryable, failed otherwise) and the error is re-raised unchanged, so the
        caller can answer its errno.
        """
        if deadline is None:
            deadline = self._clock() + _DEFAULT_WAIT
        with self._cv:
            while self._locked_blocked(entry):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    # queued for a worker, due as soon as the running attempt ends: nothing
                    # else starts it before a restart (close() answered ETIMEDOUT and said
                    # "retried in the background"), and the older version then stayed on XNAT
                    current = self._journal.get(entry.id)
                    if current is not None and entry.id not in self._running:
                        self._queued[entry.id] = dataclasses.replace(
                            current, state=PENDING, next_attempt=self._clock()
                        )
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"upload {entry.path}: an earlier upload of this file is still running",
                    )
                self._cv.wait(remaining)
            current = self._journal.get(entry.id)
            if current is None:
                return  # confirmed (or superseded) meanwhile
            self._queued.pop(entry.id, None)
            self._running[entry.id] = current
        self._attempt(current, reraise=True)

    @contextmanager
    def held(self, entry: Entry, deadline: float) -> Iterator[Optional[Entry]]:
        """No attempt of ``entry`` runs while the block runs, so the block may change it in
        the journal (a rename: target and path), nor one of another version of its path (a
        rename drops those: left behind, they uploaded under the old name).  Waits for a
        running attempt of either first, until ``deadline`` (on ``clock``; then
        ``TimeoutError(ETIMEDOUT)``), and yields the journal's record, or None when that
        attempt confirmed it (the bytes are on XNAT as it was).  A retry that was queued is
        queued again afterwards with the journal's record then, so no attempt sends an older
        version of the entry."""
        with self._cv:
            while self._locked_blocked(entry):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise TimeoutError(
                        errno.ETIMEDOUT, f"upload {entry.path}: its upload is still running"
                    )
                self._cv.wait(remaining)
            current = self._journal.get(entry.id)
            if current is not None:
                self._running[entry.id] = current
            queued = self._queued.pop(entry.id, None)
        try:
            yield current
        finally:
            if current is not None:
                now = self._journal.get(entry.id)
                with self._cv:
                    self._running.pop(entry.id, None)
                    if queued is not None and now is not None:
                        self._queued[entry.id] = dataclasses.replace(
                            now, state=PENDING, next_attempt=queued.next_attempt
                        )
                    self._cv.notify_all()

    # ------------------------------------------------------------------------ status
    def status(self) -> List[Dict[str, Any]]:
        """One dict per journal entry, oldest first: ``id``, ``path``, ``size``, ``state``,
        ``tries``, ``last_error``, ``next_attempt_in`` (seconds until the next attempt, 0 if
        due, None if none is scheduled: running, failed, or not queued)."""
        now = self._clock()
        entries = self._journal.entries()
        with self._cv:
            queued = dict(self._queued)
            running = dict(self._running)
        out = []
        for entry in entries:
            entry = running.get(entry.id) or queued.get(entry.id) or entry
            next_in: Optional[float] = None
            if entry.id in queued:
                next_in = max(0.0, entry.next_attempt - now)
            out.append(
                {
                    "id": entry.id,
                    "path": entry.path,
                    "size": entry.size,
                    "state": entry.state,
                    "tries": entry.tries,
                    "last_error": entry.last_error,
                    "next_attempt_in": next_in,
                }
            )
        return out

    # ------------------------------------------------------------------------ scheduling
    def _locked_blocked(self, entry: Entry) -> bool:
        """True if an attempt runs for ``entry`` or another version of its path.
        Caller holds self._lock."""
        if entry.id in self._running:
            return True
        return bool(entry.path) and any(e.path == entry.path for e in self._running.values())

    def _locked_next(self) -> "tuple[Optional[Entry], Optional[float]]":
        """(entry to run now, None) or (None, seconds to wait; None = until notified).
        Caller holds self._lock. O(queued): the journal holds hundreds, not millions."""
        now = self._clock()
        busy = {e.path for e in self._running.values() if e.path}
        best: Optional[Entry] = None
        wait: Optional[float] = None
        for entry in self._queued.values():
            if entry.path and entry.path in busy:
                continue  # woken when that attempt ends
            if entry.next_attempt <= now:
                if best is None or (entry.next_attempt, entry.seq) < (best.next_attempt, best.seq):
                    best = entry
            else:
                delay = entry.next_attempt - now
                wait = delay if wait is None else min(wait, delay)
        if best is not None:
            return best, None
        return None, wait

    def _worker(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stopping:
                        return
                    entry, wait = self._locked_next()
                    if entry is not None:
                        break
                    self._cv.wait(None if wait is None else min(wait, self.max_delay))
                del self._queued[entry.id]
                self._running[entry.id] = entry
            try:
                self._attempt(entry, reraise=False)
            except Exception:  # a worker must survive anything
                log.exception("upload %s: unexpected error in the uploader", entry.path)
                with self._cv:
                    self._running.pop(entry.id, None)
                    self._check_first.add(entry.id)  # its PUT may have been sent
                    self._cv.notify_all()

    # ------------------------------------------------------------------------ one attempt
    def _attempt(self, entry: Entry, *, reraise: bool) -> None:
        """Run one attempt of an entry the caller has put in ``_running``."""
        with self._cv:
            check_first = entry.tries > 0 or entry.id in self._check_first
        started = dataclasses.replace(entry, state=UPLOADING, tries=entry.tries + 1)
        if PERSIST_ATTEMPT_START:
            saved = self._save(started)
        else:  # module docstring, "Durability": kept in memory (``_running``, ``status``)
            saved = started if self._journal.get(entry.id) is not None else None
        if saved is None:  # removed from the journal meanwhile: nothing to upload
            with self._cv:
                self._running.pop(entry.id, None)
                self._cv.notify_all()
            return
        entry = saved
        with self._cv:
            self._running[entry.id] = entry
        digest: Optional[_Digest] = None
        sent = False  # the PUT returned: the bytes are (very likely) on the server
        try:
            if not entry.md5:
                # hashed beside the upload, not before it: both read the same bytes once
                digest = _Digest(self._journal, entry)
                if check_first:
                    entry = digest.result()
            if not (check_first and self._verify(entry, False)):
                self._put(entry)
                sent = True
                if digest is not None:
                    entry = digest.result()
                if not self._verify(entry, True):
                    raise UploadNotVerified(entry)
        except Exception as exc:  # put/verify raise whatever the client raises
            if digest is not None:
                entry = digest.result_or(entry)
            if not (check_first and self._landed_before(entry, exc)):
                self._failed(entry, exc, after_put=sent, caller_logs=reraise)
                if reraise:
                    raise
                return
            self._succeeded(entry)
        else:
            self._succeeded(entry)
        finally:
            if digest is not None:
                digest.close()

    def _landed_before(self, entry: Entry, exc: Exception) -> bool:
        """Did an earlier attempt of ``entry`` land after all, though this one was refused
        for good?  XNAT storing a file slowly: the PUT timed out, the check before sending
        again did not find it yet, and by the second PUT it was there ("duplicates", 409).
        Kept as failed, the file was shown in place of XNAT's at the next mount and close()
        answered EEXIST, although XNAT had exactly its bytes."""
        if classify(exc).retry:
            return False
        try:
            landed = self._verify(entry, False)
        except Exception:  # noqa: BLE001 - the refusal is the error to report
            return False
        if landed:
            log.info(
                "upload %s: %s; an earlier attempt landed: XNAT has its bytes",
                entry.path or entry.id,
                exc,
            )
        return landed

    def _backoff(self, tries: int, retry_after: Optional[float]) -> float:
        delay = min(self.max_delay, self.base_delay * (2.0 ** max(0, tries - 1)))
        delay = self._rng.uniform(delay / 2.0, delay)
        if retry_after:
            delay = max(delay, float(retry_after))
        return min(delay, self.max_delay)

    def _failed(
        self, entry: Entry, exc: Exception, after_put: bool = False, caller_logs: bool = False
    ) -> None:
        """Schedule a retry, or mark the entry ``failed`` when :func:`retry.classify` says no
        attempt can succeed. After a PUT that returned, a failing check is always re-checked
        later (the bytes are probably on XNAT; the next attempt verifies before sending, so
        nothing is uploaded twice).  ``caller_logs``: the failure is re-raised to a ``close()``
        whose ``_op`` wrapper logs the one ERROR line, so this one is INFO (issue 16 §5)."""
        message = str(exc) or exc.__class__.__name__
        verdict = classify(exc)
        if after_put and not verdict.retry:
            verdict = Verdict(True, f"check after a successful PUT ({verdict.rule})")
        if verdict.retry:
            delay = self._backoff(entry.tries, getattr(exc, "retry_after", None))
            new = dataclasses.replace(
                entry, state=PENDING, last_error=message, next_attempt=self._clock() + delay
            )
            level = (
                logging.DEBUG
                if entry.tries <= 2
                else logging.INFO
                if entry.tries <= 5
                else logging.WARNING
            )
            log.log(
                level,
                "upload %s: %s; try %d, retry in %.1fs",
                entry.path or entry.id,
                message,
                entry.tries,
                delay,
            )
        else:
            new = dataclasses.replace(entry, state=FAILED, last_error=message, next_attempt=0.0)
            log.log(
                logging.INFO if caller_logs else logging.WARNING,
                "upload %s: %s; try %d, not retryable (%s): kept as failed in %s",
                entry.path or entry.id,
                message,
                entry.tries,
                verdict.rule,
                entry.data_path,
            )
        saved = self._save(new)
        with self._cv:
            self._running.pop(entry.id, None)
            if saved is not None and new.state == PENDING:
                self._queued[entry.id] = new
            self._cv.notify_all()
        self._notify(new)

    def _succeeded(self, entry: Entry) -> None:
        """Remove the confirmed entry and the older versions of its path that still wait.

        The entry stays in ``_running`` (its path blocked) until the older versions are gone
        from the journal, so neither a worker nor ``upload_now`` can send them in between.
        """
        done = dataclasses.replace(entry, state=DONE, last_error="", next_attempt=0.0)
        try:
            self._drop_confirmed(entry)
        finally:
            # whatever went wrong above, the path is not left blocked for the mount's life
            with self._cv:
                self._running.pop(entry.id, None)
                self._check_first.discard(entry.id)
                self._cv.notify_all()
        log.log(
            logging.DEBUG if entry.tries <= 1 else logging.INFO,
            "upload %s: done (%d bytes, try %d)",
            entry.path,
            entry.size,
            entry.tries,
        )
        self._notify(done)

    def _drop_confirmed(self, entry: Entry) -> None:
        """The older versions of the confirmed entry's path that still wait, then the entry
        itself, leave the journal (``_succeeded``; the caller keeps the path blocked
        meanwhile).  In that order: a crash between the two left an older version alone in
        the journal, and the next mount uploaded it over the confirmed one (a half-written
        log over the whole one); left the other way, the confirmed entry is checked on XNAT
        at the next start (``tries`` > 0) and dropped without a byte sent."""
        with self._writes:
            if not self._abandoned:  # else as a crash here: the next start checks it first
                self._locked_drop_confirmed(entry)

    def _locked_drop_confirmed(self, entry: Entry) -> None:
        """``_drop_confirmed``'s removals; caller holds self._writes."""
        superseded: List[Entry] = []
        if entry.path:
            with self._cv:
                superseded = [
                    e
                    for e in self._journal.versions_for(entry.path)
                    if e.seq < entry.seq and e.id not in self._running
                ]
                for old in superseded:
                    self._queued.pop(old.id, None)
        for old in superseded:
            log.info("upload %s: dropping older unsent version %s (superseded)", old.path, old.id)
            try:
                self._journal.remove(old)
            except OSError as exc:
                log.warning(
                    "upload %s: could not drop superseded version %s: %s", old.path, old.id, exc
                )
        try:
            self._journal.remove(entry)
        except OSError as exc:
            # the bytes are on the server; tries > 0, so the next start verifies first
            log.warning(
                "upload %s: uploaded, but removing its journal entry failed: %s", entry.path, exc
            )

    def _save(self, entry: Entry) -> Optional[Entry]:
        """Persist a new version; None if the entry left the journal.

        A full disk (ENOSPC, EDQUOT) asks ``make_room`` once and writes again, as a user's
        write does.  A write that still fails is one line, and the journal holds the version
        in memory (``Journal.remember``; written at unmount if there is room then): the
        bytes are safe, the sidecar lags behind, and uploading is what frees the disk.
        Before, only the line: the journal's index kept the older version, so ``status``
        showed a refused upload as ``pending``, 0 tries, no error, and the next mount sent
        it to XNAT again."""
        with self._writes:
            if self._abandoned:
                return entry  # abandoned at shutdown: nothing written, as after a crash
            try:
                try:
                    return self._journal.update(entry)
                except OSError as exc:
                    if exc.errno not in DISK_FULL or not self._room():
                        raise
                return self._journal.update(entry)
            except KeyError:
                return None
            except OSError as exc:
                log.warning(
                    "upload %s: its journal record %s stays at an older version on disk "
                    "(this mount shows %s, %d tries): %s",
                    entry.path or entry.id,
                    self._journal.directory,
                    entry.state,
                    entry.tries,
                    exc,
                )
                return self._journal.remember(entry)

    def _room(self) -> bool:
        """``make_room`` for a sidecar; False when there is none, or it failed."""
        if self._make_room is None:
            return False
        try:
            return bool(self._make_room(_SIDECAR_ROOM))
        except Exception:  # the write's own error is the one to report
            log.debug("upload: making room for a journal record failed", exc_info=True)
            return False

    def _notify(self, entry: Entry) -> None:
        if self._on_change is None or self._abandoned:
            return
        try:
            self._on_change(entry)
        except Exception:  # a callback must not break the uploader
            log.exception("upload %s: on_change callback failed", entry.path)
