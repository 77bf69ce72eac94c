"""Zero-message opens (``--zero-message-opens``): on a read-only mount the kernel opens files
without asking xnatfs and keeps their pages across opens.

Why: a page-cache-warm read of many small files paid one OPEN round trip per file (93-206 µs on
the benchmark VM, where reading the page-cached file itself costs ~5 µs): 400 files of 256 KiB
read at 0.23 of the speed of the cache files with OPENs, 0.93 without (benchmarks/RESULTS.md,
"B3: zero-message opens").

How (libfuse ``FUSE_CAP_NO_OPEN_SUPPORT``; kernel ``fs/fuse/file.c`` ``fuse_file_open``): xnatfs
answers the first OPEN with ENOSYS; the kernel takes that as success for that open and every
later one on the connection (``fc->no_open``), sends no RELEASE, keeps a file's pages across
opens (``FOPEN_KEEP_CACHE`` is its default then) and sends READs with file handle 0.  A FLUSH
answered with ENOSYS stops FLUSHes the same way (``fc->no_flush``).  Only on a read-only mount:
a write needs its open (the upload at close, the journal), and the choice is per connection.

Two things an OPEN did move here:

- **The handle.**  A READ with handle 0 finds its file's handle by path: ``ImplicitHandles``
  opens one at the path's first read (the same ``Tree.open`` an OPEN made) and keeps it,
  bounded (LRU, ``LIMIT``) and closed when idle (``IDLE``).  Whatever retires a handle, it is
  closed only once no read is using it (``ImplicitHandles.reading``): with an OPEN, the kernel
  sends RELEASE only after the file's last READ, and nothing else closed a handle.
- **Which pages may stay** (what ``fs.keepcache`` decides at each OPEN otherwise; never a wrong
  byte).  The kernel keeps every page it read, so xnatfs drops them (``fuse_invalidate_path``,
  from one thread of its own, ``Invalidator``: libfuse must not be asked from inside a request
  for the same file) when they may hold bytes that are not XNAT's, or not its current ones:

  - a handle not served from a verified cache entry when it opened (it followed a download,
    its MD5 check was pending, or it streamed a file larger than the cache) puts its path on
    *probation*; the probation ends when its key is a verified cache entry
    (``ContentCache.trusted``), and the pages are dropped when the key is neither that nor
    still on its way (a stream, a failed download);
  - a taint of a key (a download attempt thrown away or failed, a cached file failing its MD5;
    ``ContentCache.on_taint``) *poisons* every path holding that key, and so does a read that
    fails: its reads answer EIO until its pages are dropped and at least ``POISON_MIN`` has
    passed.  The reader that met the failure gets it however the kernel retries (it reads a
    page whose read-ahead failed once more, at once), and a reader of the whole file needs
    its last page, which is never in the kernel before the verdict (the read of a file's last
    bytes waits for it).  Left open (with opens the handle knows; here no reader has its own):
    a program that took pages of the failed attempt from the kernel's cache while it was
    being read, and asks for the last page only after the poisoning ended, is not told
    (docs/FUSE.md §2.6);
  - a file whose content key changed (seen by ``getattr``, which the kernel sends when its
    attribute timeout has passed) has its pages dropped and its handle retired;
  - a generated file (a document: ``.xnat.json``, ``.xnatfs/stats``, BIDS sidecars) is read
    from the very bytes the kernel's last LOOKUP or GETATTR sized (``ToldDocuments``): without
    an open there is no direct I/O, and the kernel reads no further than the size it was
    told.  Generated files are sized at lookup in this mode (``Engine.size_all_generated``)
    and made anew when the kernel asks for their attributes after the listing TTL, with a new
    mtime, so the kernel drops the pages of the old bytes even at the same size
    (``auto_inval_data``); ``.xnatfs/stats`` and ``metrics``, made anew at each open
    otherwise, are refreshed about every second while they are read.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterator, List, Optional, Set, Tuple

log = logging.getLogger(__name__)

#: handles kept open for reads without an open; each pins its cache entry (not evicted)
LIMIT = 256
#: seconds a kept handle may go unread before it is closed (its pages stay if trusted)
IDLE = 30.0
#: seconds a poisoned path answers EIO at least, even once its pages are dropped: the kernel
#: reads a page whose read-ahead failed once more, at once, for the same reader, which must get
#: the EIO too (a new read of the file after that finds no page of the failed bytes)
POISON_MIN = 1.0
#: seconds between the refreshes of ``.xnatfs/stats`` (``ToldDocuments.refresh``) and the
#: sweeps of idle handles
REFRESH_EVERY = 1.0
#: generated documents whose told bytes are kept (``ToldDocuments``)
TOLD_MAX = 4096
#: paths whose last content key is remembered (a change seen by ``getattr`` drops the pages);
#: one forgotten falls back to the kernel's own check of size and mtime
KEYS_MAX = 65536


@dataclass
class _Kept:
    """One handle opened for reads that came without an open."""

    handle: Any
    key: Optional[Hashable]  # the content version it reads (None: no content key)
    tag: Optional[str]  # that key's ``hexname()`` (what ``ContentCache.on_taint`` names)
    cacheable: bool  # may its pages serve later opens (``Tree.cacheable``)
    used: float  # clock of its last read
    #: reads using the handle now (``ImplicitHandles.reading``); the fields below are guarded
    #: by ``ImplicitHandles._lock``
    readers: int = 0
    #: taken out of ``_live``: closed by its last reader, or at once when it has none
    retired: bool = False


class ImplicitHandles:
    """path -> the handle its READs use, and what the kernel's pages of it may hold.

    ``opener(path)`` returns ``(handle, cacheable)``; ``cache`` answers ``trusted(key)`` and
    ``state(key)``; ``drop(path)`` asks for the kernel's pages of ``path`` to be dropped and
    must lead to ``dropped(path)`` once they are.  Thread-safe; ``_lock`` is never held while
    a handle opens or closes, or while ``drop`` runs."""

    def __init__(
        self,
        opener: Callable[[str], Tuple[Any, bool]],
        cache: Any,
        drop: Callable[[str], None],
        *,
        limit: int = LIMIT,
        idle: float = IDLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self._cache = cache
        self._drop = drop
        self._limit = max(1, limit)
        self._idle = idle
        self._clock = clock
        self._lock = threading.Lock()
        # _lock protects the fields below
        self._live: "collections.OrderedDict[str, _Kept]" = collections.OrderedDict()
        #: path -> (key, its hexname) whose pages may hold bytes not yet verified
        self._probation: Dict[str, Tuple[Hashable, Optional[str]]] = {}
        #: path -> (clock when poisoned, pages dropped since): its reads answer EIO until its
        #: pages are dropped and ``POISON_MIN`` has passed (``_refuse_poisoned``)
        self._poisoned: Dict[str, Tuple[float, bool]] = {}
        #: path -> the content key its pages were read from (``changed``)
        self._keys: "collections.OrderedDict[str, Hashable]" = collections.OrderedDict()
        self._closed = False
        self.stats = {"opens": 0, "drops": 0, "poisoned": 0}

    # -- reads -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self, path: str) -> Iterator[Any]:
        """The handle for a READ of ``path`` without an open (opened now if none is kept),
        held for the ``with`` block: a handle retired meanwhile (by another path's open past
        ``limit``, a taint, a changed key, idleness, unmount) is closed only when its last
        read is done.  Closed under a read, its fd number could be given to a file opened
        meanwhile, and the read's ``preadv`` would serve that file's bytes."""
        kept = self._acquire(path)
        try:
            yield kept.handle
        finally:
            self._give_back(kept)

    def _give_back(self, kept: _Kept) -> None:
        """A read of ``kept`` is done: close it if it was retired and this was its last."""
        with self._lock:
            kept.readers -= 1
            close = kept.retired and kept.readers == 0
        if close:
            kept.handle.close()

    def _acquire(self, path: str) -> _Kept:
        """``reading``: the kept handle of ``path`` with one more reader."""
        with self._lock:
            self._refuse_poisoned(path)
            kept = self._live.get(path)
            if kept is not None:
                kept.used = self._clock()
                self._live.move_to_end(path)
                kept.readers += 1
                return kept
        handle, cacheable = self._opener(path)
        key, verified = getattr(handle, "content_version", (None, False))
        hexname = getattr(key, "hexname", None)
        tag = hexname() if callable(hexname) else None
        retired: List[Tuple[str, _Kept]] = []
        with self._lock:
            result = self._live.get(path)
            if result is None and not self._still_poisoned(path) and not self._closed:
                result = _Kept(handle, key, tag, cacheable, self._clock())
                self._live[path] = result
                self.stats["opens"] += 1
                if cacheable and key is not None:
                    self._remember_key(path, key)
                    if not verified:
                        self._probation[path] = (key, tag)
                while len(self._live) > self._limit:  # never the newest: limit >= 1
                    retired.append(self._live.popitem(last=False))
                handle = None
            if result is not None:
                result.readers += 1
        try:
            if handle is not None:  # another read opened it first, or it was poisoned meanwhile
                handle.close()
            for old_path, old in retired:
                self._retire(old_path, old)
        except BaseException:
            if result is not None:
                self._give_back(result)  # this read fails: it holds nothing open
            raise
        if result is None:
            with self._lock:
                self._refuse_poisoned(path)
            raise OSError(errno.EBADF, "the mount is closing", path)
        return result

    def _refuse_poisoned(self, path: str) -> None:
        """Caller holds _lock."""
        if self._still_poisoned(path):
            raise OSError(
                errno.EIO,
                "bytes of this file failed their check; its cached pages are being dropped "
                "(read it again)",
                path,
            )

    def read_failed(self, path: str) -> None:
        """A read of ``path`` raised: its pages may hold bytes of the failed attempt."""
        self._poison([path])

    # -- what the pages hold ---------------------------------------------------------------------

    def tainted(self, tag: str) -> None:
        """``ContentCache.on_taint``: readers may have had bytes of the key whose ``hexname()``
        is ``tag`` that failed a check."""
        with self._lock:
            paths = [p for p, (_, t) in self._probation.items() if t == tag]
            paths += [p for p, kept in self._live.items() if kept.tag == tag and p not in paths]
        if paths:
            self._poison(paths)

    def knows(self, path: str) -> bool:
        """Does the kernel hold pages of ``path`` read through here (``changed`` has work)?
        One dict lookup without the lock: ``getattr`` asks it at every call."""
        return path in self._keys

    def changed(self, path: str, key: Optional[Hashable]) -> None:
        """``getattr`` of ``path`` shows content ``key``: pages of another key are dropped."""
        with self._lock:
            known = self._keys.get(path)
            if known is None or known == key:
                return
            del self._keys[path]
            self._probation.pop(path, None)
            kept = self._live.get(path)
            if kept is not None and kept.key != key:
                del self._live[path]
            else:
                kept = None
        if kept is not None:
            self._close(kept)
        log.debug("no-open: %s changed on the server; its pages are dropped", path)
        self._request_drop(path)

    def dropped(self, path: str) -> None:
        """The kernel holds no page of ``path`` any more (``Invalidator``)."""
        with self._lock:
            poisoned = self._poisoned.get(path)
            if poisoned is not None:
                self._poisoned[path] = (poisoned[0], True)

    def sweep(self) -> None:
        """Close handles idle for ``idle`` seconds; end probations that are settled."""
        now = self._clock()
        with self._lock:
            idle = [(p, k) for p, k in self._live.items() if now - k.used >= self._idle]
            for path, _ in idle:
                del self._live[path]
            waiting = [(p, k) for p, (k, _) in self._probation.items() if p not in self._live]
            for path in list(self._poisoned):
                self._still_poisoned(path)  # forgets the ended ones
        for path, kept in idle:
            self._retire(path, kept)
        for path, key in waiting:
            self._settle(path, key)

    def close(self) -> None:
        """Close every kept handle (at unmount; the kernel's pages go with the mount)."""
        with self._lock:
            self._closed = True
            kept, self._live = list(self._live.values()), collections.OrderedDict()
        for one in kept:
            self._close(one)

    def snapshot(self) -> Dict[str, int]:
        """For ``.xnatfs/stats``: handles opened for reads without an open, page drops asked
        for, paths poisoned (ever, and now: their reads answer EIO), handles kept, probations."""
        with self._lock:
            return {
                **self.stats,
                "poisoned_now": sum(map(self._still_poisoned, list(self._poisoned))),
                "kept": len(self._live),
                "probation": len(self._probation),
            }

    # -- internals -------------------------------------------------------------------------------

    def _retire(self, path: str, kept: _Kept) -> None:
        """Close a handle taken out of ``_live``; drop its pages unless they may stay."""
        self._close(kept)
        if not kept.cacheable:
            self._request_drop(path)
            return
        with self._lock:
            waiting = self._probation.get(path)
        if waiting is not None:
            self._settle(path, waiting[0])

    def _settle(self, path: str, key: Hashable) -> None:
        """End ``path``'s probation if its key is verified now; drop its pages if the key will
        never be (a stream, a failed download); else leave it for the next sweep."""
        if self._cache.trusted(key):
            verdict = "trusted"
        elif self._cache.state(key) in ("downloading", "cached"):  # cached: MD5 check pending
            return
        else:
            verdict = "drop"
        with self._lock:
            waiting = self._probation.get(path)
            if waiting is None or waiting[0] != key:
                return
            del self._probation[path]
        if verdict == "drop":
            self._request_drop(path)

    def _poison(self, paths: List[str]) -> None:
        closing: List[_Kept] = []
        with self._lock:
            for path in paths:
                self._poisoned[path] = (self._clock(), False)
                self._probation.pop(path, None)
                kept = self._live.pop(path, None)
                if kept is not None:
                    closing.append(kept)
            self.stats["poisoned"] += len(paths)
        for kept in closing:
            self._close(kept)
        for path in paths:
            log.info("no-open: dropping the kernel's pages of %s (a check failed)", path)
            self._request_drop(path)

    def _close(self, kept: _Kept) -> None:
        """Close a handle taken out of ``_live`` now, or when its last read is done."""
        with self._lock:
            kept.retired = True
            close = kept.readers == 0
        if close:
            kept.handle.close()

    def _request_drop(self, path: str) -> None:
        with self._lock:
            self.stats["drops"] += 1
        self._drop(path)

    def _still_poisoned(self, path: str) -> bool:
        """Caller holds _lock; forgets a poisoning that has ended."""
        poisoned = self._poisoned.get(path)
        if poisoned is None:
            return False
        since, dropped = poisoned
        if dropped and self._clock() - since >= POISON_MIN:
            del self._poisoned[path]
            return False
        return True

    def _remember_key(self, path: str, key: Hashable) -> None:
        """Caller holds _lock."""
        self._keys[path] = key
        self._keys.move_to_end(path)
        if len(self._keys) > KEYS_MAX:
            self._keys.popitem(last=False)


@dataclass(frozen=True)
class Told:
    """A generated document's bytes as a read handle (``ToldDocuments.reader``)."""

    data: bytes

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    span = read


class ToldDocuments:
    """path -> the bytes of the generated document whose size the kernel's last LOOKUP or
    GETATTR of it was told, the mtime shown with them, and whether it is made anew at each
    open otherwise (``.xnatfs/stats``).  Its READs serve exactly those bytes: a document made
    anew since may be of another size, and the kernel would read it cut or padded.

    ``forget(path)`` makes the document anew at its next lookup (``Engine.forget_generated``);
    ``drop(path)`` asks for the kernel's pages and attributes of it to be dropped.  Bounded
    (``limit``; one forgotten is read as its next lookup makes it).  Thread-safe."""

    def __init__(
        self,
        forget: Callable[[str], None],
        drop: Callable[[str], None],
        *,
        limit: int = TOLD_MAX,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._forget = forget
        self._drop = drop
        self._limit = limit
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        # _lock protects the fields below
        self._told: "collections.OrderedDict[str, Tuple[bytes, int, bool]]" = (
            collections.OrderedDict()
        )
        #: documents made anew at each open otherwise, read since the last ``refresh``
        self._read_since: Set[str] = set()

    def tell(self, path: str, data: bytes, fresh: bool) -> int:
        """The kernel is now told ``len(data)`` as the size of ``path``; returns the mtime to
        show: when these bytes were first told.  A document made anew gets a new mtime even at
        the same size, and the kernel drops its pages of the old bytes when it sees the mtime
        change (``auto_inval_data``, on by default in libfuse 3)."""
        with self._lock:
            told = self._told.get(path)
            if told is None or told[0] is not data:
                told = (data, self._clock_ns(), fresh)
            self._told[path] = told
            self._told.move_to_end(path)
            if len(self._told) > self._limit:
                self._told.popitem(last=False)
        return told[1]

    def reader(self, path: str) -> Optional[Told]:
        """The read handle of ``path`` if it is a told document, else None."""
        with self._lock:
            told = self._told.get(path)
            if told is None:
                return None
            if told[2]:
                self._read_since.add(path)
        return Told(told[0])

    def refresh(self) -> None:
        """A document that is made anew at each open otherwise and was read since the last
        call is forgotten and its pages and attributes dropped, so the kernel's next GETATTR
        makes it anew (the invalidation thread calls this about every second).  Safe at any
        moment: a READ serves the told bytes, and those change only with a GETATTR's answer,
        which tells the kernel their size."""
        with self._lock:
            stale, self._read_since = self._read_since, set()
        for path in stale:
            self._forget(path)
            self._drop(path)


class Invalidator:
    """Drops the kernel's pages and attributes of paths, from one thread of its own.

    ``notify(path)`` is libfuse's ``fuse_invalidate_path`` (0, or -ENOENT when the kernel holds
    no node for the path: nothing to drop either); ``dropped(path)`` is called after it;
    ``sweep()`` every ``every`` seconds.  The pending set holds each path once."""

    def __init__(
        self,
        notify: Callable[[str], int],
        dropped: Callable[[str], None],
        sweep: Callable[[], None],
        every: float = REFRESH_EVERY,
    ) -> None:
        self._notify = notify
        self._dropped = dropped
        self._sweep = sweep
        self._every = every
        self._cond = threading.Condition()
        # _cond protects the fields below
        self._pending: Set[str] = set()
        #: paths whose drop failed: asked again at the next sweep (still poisoned till then)
        self._retry: Set[str] = set()
        self._stop = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xnatfs-invalidate", daemon=True)
        self._thread.start()

    def request(self, path: str) -> None:
        with self._cond:
            self._pending.add(path)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_sweep = time.monotonic() + self._every
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._pending or self._stop, max(0.0, next_sweep - time.monotonic())
                )
                if self._stop:
                    return
                batch, self._pending = self._pending, set()
            for path in sorted(batch):
                try:
                    code = self._notify(path)
                except Exception as exc:  # noqa: BLE001 - the thread must go on
                    log.warning("no-open: dropping the pages of %s: %s", path, exc)
                    code = -errno.EIO
                if code in (0, -errno.ENOENT):
                    self._dropped(path)
                else:
                    log.warning("no-open: dropping the pages of %s: errno %d", path, -code)
                    with self._cond:
                        self._retry.add(path)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self._every
                with self._cond:
                    self._pending |= self._retry
                    self._retry = set()
                try:
                    self._sweep()
                except Exception as exc:  # noqa: BLE001 - the thread must go on
                    log.warning("no-open: sweep: %s", exc)
