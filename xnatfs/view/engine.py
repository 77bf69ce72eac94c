"""The view engine: mount paths -> nodes of a layout, over the listing and content caches.

``Engine`` turns a mount path into a ``NodeInfo`` by walking from the root through cached
listings, lists directories, and opens files through the content cache.  It knows neither XNAT
nor FUSE: the hierarchy is a ``Layout`` (``view.layout``), the local files not yet uploaded are
an ``Overlay``, read-ahead is a list of ``Policy`` objects.  It raises ``OSError`` (with an errno)
or lets the source's errors pass through, and ``xnatfs.fs.errmap`` turns both into errno values.

Costs: every listed directory is one listing request (cached for ``listing_ttl``); directories
with ``Fixed`` children cost nothing; ``getattr`` of any path below a fresh listing costs nothing
(the node itself is cached under the path), and a name missing from a fresh listing is ENOENT
without a request (fsspec ``_ls_from_cache``).

Locks, in the order they may be taken (never the other way round): ``_last_good_lock`` (last-good
listings, invalidation generation, slow-source state, refresh pool) and ``_generated_lock``
(generated documents) are leaves: no call into a layout, a cache or a policy is made while one is
held.  ``MetaCache`` has its own lock (single flight); policies have their own and never hold it
while calling the engine.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import cachetools

from xnatfs import deadline
from xnatfs.cache.content import ContentKey
from xnatfs.cache.meta import MetaCache
from xnatfs.view import held
from xnatfs.view.layout import Children, Fixed, Layout, Listing, Loaded, Overlay, Policy
from xnatfs.view.node import Generated, Local, NodeInfo
from xnatfs.view.paths import PathParts, canonical_name, join_path, split_path

log = logging.getLogger(__name__)

#: last part of the metadata-cache key of a resolved node (a file name cannot hold NUL)
_NODE_KEY = "\0node"
#: threads refreshing expired listings in the background (stale-while-slow)
_REFRESH_THREADS = 4
#: longest wait for a refresh of an expired listing before the one seen before is shown
_STALE_GRACE_MAX = 2.0


class Engine:
    """Path ⇄ node of a layout.  Thread-safe: shared state lives in the caches and behind the
    two leaf locks named in the module docstring."""

    def __init__(
        self,
        layout: Layout,
        meta: MetaCache,
        content: Any,
        *,
        fs_timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
        mounts: Optional[Mapping[str, Layout]] = None,
        policies: Sequence[Policy] = (),
    ) -> None:
        self.layout = layout
        self.meta = meta
        self.content = content
        self.fs_timeout = fs_timeout
        #: mtime shown when a source gives none: the mount's start time, so it is stable
        self.epoch = clock()
        #: top-level hidden name -> the layout mounted there (``mount``)
        self._mounts: Dict[str, Layout] = {}
        for name, mounted in (mounts or {}).items():
            self.mount(name, mounted)
        #: what the user wrote that the source does not show yet (``attach_overlay``), or None
        self.overlay: Optional[Overlay] = None
        self.policies: List[Policy] = list(policies)
        #: size every generated file at lookup, not only ``Generated(sized=True)`` ones: set
        #: on a mount whose opens the kernel answers alone (``fs/noopen.py``), where no open can
        #: ask for direct I/O and the kernel reads no further than the size it was told
        self.size_all_generated = False
        #: generated documents made at lookup (path -> bytes), so that the size stat shows is
        #: the size read gives, for as long as the kernel trusts that stat; bounded
        self._generated: cachetools.TTLCache = cachetools.TTLCache(
            maxsize=1024, ttl=meta.ttl or 1.0
        )
        self._generated_lock = threading.Lock()
        #: the last listing that loaded for each key, kept past its TTL so that a source that
        #: is down still shows what was seen (CVMFS-style offline metadata); bounded LRU
        self._last_good: cachetools.LRUCache = cachetools.LRUCache(maxsize=50_000)
        #: guards _last_good, _invalidations, _slow_since and _refresh_pool
        self._last_good_lock = threading.Lock()
        #: bumped by every invalidate(): a load that began before it does not become last-good
        self._invalidations = 0
        #: monotonic time since when refreshes fail or take longer than the grace (None: the
        #: source answers); while set, expired listings are shown at once, refreshed behind
        self._slow_since: Optional[float] = None
        self._refresh_pool: Optional[ThreadPoolExecutor] = None
        #: how long a call waits for the refresh of an expired listing before showing the old
        #: one: most calls on cached paths return at once, none costs more than one deadline
        self.stale_grace = min(_STALE_GRACE_MAX, fs_timeout / 4.0)

    # ------------------------------------------------------------------ registration
    def mount(self, name: str, layout: Layout) -> None:
        """Show ``layout`` at ``MNT/<name>`` (a hidden name such as ``.bids``), read-only.
        Call before the first lookup."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a top-level name: {name!r}")
        self._mounts[name] = layout

    def attach_overlay(self, overlay: Overlay) -> None:
        """Register the write side (``tree.writes.Writer``): its local files are shown over the
        main layout's listings, and opened, stat'ed and timed by it."""
        self.overlay = overlay

    def add_policy(self, policy: Policy) -> None:
        """Add a read-ahead policy; asked after those added before."""
        self.policies.append(policy)

    def layout_of(self, parts: PathParts) -> Tuple[Layout, PathParts]:
        """The layout serving ``parts`` and the mount prefix (``()`` for the main layout)."""
        if parts and parts[0] in self._mounts:
            return self._mounts[parts[0]], parts[:1]
        return self.layout, ()

    def _layout_for(self, node: NodeInfo) -> Layout:
        return self._mounts.get(node.mount, self.layout) if node.mount else self.layout

    def read_only(self, path: str) -> bool:
        """True below a mounted layout: writes there are EROFS (``fs.ops``)."""
        parts = split_path(path)
        return bool(parts) and parts[0] in self._mounts

    # ------------------------------------------------------------------ lookup and listing
    def lookup(self, path: str) -> NodeInfo:
        """The node at ``path``; ``OSError(ENOENT)`` if the layout has no such node."""
        with deadline.scope(self.fs_timeout):
            return self._checked(self.node(split_path(path)))

    def _checked(self, node: NodeInfo) -> NodeInfo:
        """A node whose listing row was refused (``Layout.refusal``) is EIO, with the reason;
        ``fs/ops`` logs it once."""
        if node.is_dir or node.is_local:
            return node
        problem = self._layout_for(node).refusal(node)
        if problem:
            raise OSError(errno.EIO, f"refused listing row ({problem}), uri={node.uri!r}")
        return node

    def listdir(self, path: str) -> List[NodeInfo]:
        with deadline.scope(self.fs_timeout):
            return self._listdir(split_path(path))

    def _listdir(self, parts: PathParts) -> List[NodeInfo]:
        node = self.node(parts)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", join_path(parts))
        children = self.listing(parts, node).children
        overlay = None if self.layout_of(parts)[1] else self.overlay
        if overlay is None and (parts or not self._mounts):
            return list(children.values())
        merged = dict(children)
        if overlay is not None:
            for local in overlay.children(parts):
                if not (local.is_dir and local.name in merged):
                    merged[local.name] = local
        if not parts:
            for name in self._mounts:
                merged[name] = self._mount_root(name)
        return list(merged.values())

    def readdir(self, path: str) -> List[NodeInfo]:
        """``listdir`` for FUSE readdir; then each policy's ``on_readdir`` (walk-ahead)."""
        children = self.listdir(path)
        if self.policies:
            parts = split_path(path)
            for policy in self.policies:
                policy.on_readdir(self, parts, children)
        return children

    def as_looked_up(self, path: str, children: Sequence[NodeInfo]) -> List[Optional[NodeInfo]]:
        """For each of ``children`` (what ``readdir(path)`` gave) the node ``lookup`` of its
        path returns, attributes and all, when that is certain without a lookup; else None.
        Readdirplus hands the kernel the attributes of the first kind, and the kernel then
        sends no LOOKUP for them (``fs.ops``, docs/FUSE.md §2.5).

        None for: a name the layout resolves on its own (the control folder, ``.zip``,
        ``.xnat.json``), a generated file (sized at lookup), a file being written (the
        overlay's: its size moves with every write), a mounted view's root, and a refused
        listing row (EIO at lookup, with its one log line).  No request is made here."""
        parts = split_path(path)
        layout, prefix = self.layout_of(parts)
        parent = self.node(parts)
        rel = parts[len(prefix) :]
        nodes: List[Optional[NodeInfo]] = []
        for child in children:
            if (
                child.is_local
                or (not parts and child.name in self._mounts)
                or isinstance(child.ref, (Generated, Local))
                or (self.overlay is not None and self.overlay.owns(child))
                or layout.lookup(rel, parent, child.name) is not None
                or (not child.is_dir and layout.refusal(child))
            ):
                nodes.append(None)
            else:
                # as ``_resolve`` marks a node below a mounted view
                nodes.append(replace(child, mount=prefix[0]) if prefix else child)
        return nodes

    def node(self, parts: PathParts) -> NodeInfo:
        """The node at ``parts`` (no deadline scope of its own: the caller's applies)."""
        if not parts:
            return self.layout.root()
        layout, prefix = self.layout_of(parts)
        if self.overlay is not None and not prefix:
            local = self.overlay.node(parts)
            if local is not None:
                return local
        # the node itself is kept as long as listings are: getattr of a deep path then costs one
        # cache lookup instead of a walk from the root (the key sorts under the path, so
        # invalidate(path) of the path or of any folder above it drops it too)
        node_key = parts + (_NODE_KEY,)
        cached = self.meta.peek(node_key)
        if cached is not None:
            return cached
        node = self._resolve(parts, layout, prefix)
        # generated files learn their size when made; local folders come and go with writes
        if not isinstance(node.ref, (Generated, Local)):
            self.meta.put(node_key, node)
        return node

    def _mount_root(self, name: str) -> NodeInfo:
        return replace(self._mounts[name].root(), name=name, mount=name)

    def _resolve(self, parts: PathParts, layout: Layout, prefix: PathParts) -> NodeInfo:
        if prefix and len(parts) == 1:
            return self._mount_root(parts[0])
        parent_parts, name = parts[:-1], parts[-1]
        parent = self.node(parent_parts)
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", join_path(parent_parts))
        child = layout.lookup(parent_parts[len(prefix) :], parent, name)
        if child is None:
            listing = self.listing(parent_parts, parent)
            child = listing.children.get(name)
            if child is None and name in listing.aliases:
                child = listing.children.get(listing.aliases[name])
            if child is None and "%" in name:
                # another spelling of a listed name: ``50%25.txt`` (how versions before the
                # minimal escape listed XNAT's ``50%.txt``; paths in scripts keep working) or a
                # lower-case ``%2f`` (view/paths.py)
                canonical = canonical_name(name)
                if canonical != name:
                    child = listing.children.get(canonical)
            if child is None and self.overlay is not None and not prefix:
                child = self.overlay.dir_node(parts)
            if child is None:
                raise OSError(errno.ENOENT, "no such object", join_path(parts))
        if prefix:
            child = replace(child, mount=prefix[0])
        if self._is_sized(child):
            child = self._sized(parts, child, layout)
        return child

    def descriptor(self, parts: PathParts, node: NodeInfo) -> Optional[Children]:
        """How directory ``node`` at ``parts`` is listed, its ``Loaded`` key made absolute;
        None for a local folder (made by mkdir: only the overlay's children)."""
        if node.is_local:
            return None
        layout, prefix = self.layout_of(parts)
        children = layout.children(parts[len(prefix) :], node)
        if prefix and isinstance(children, Loaded):
            children = replace(children, key=prefix + children.key)
        return children

    def listing(self, parts: PathParts, node: NodeInfo) -> Listing:
        """Children of directory ``node`` at ``parts``: fixed, or from one cached listing."""
        children = self.descriptor(parts, node)
        if children is None:
            return Listing()
        if isinstance(children, Fixed):
            return children.listing
        return children.select(self.cached(children.key, children.load))

    # ------------------------------------------------------------------ listing cache
    def cached(self, key: PathParts, loader: Callable[[], Any]) -> Any:
        """The fresh listing, else one request; stale-while-slow when one was seen before.

        Without a listing seen before, the caller loads it (or joins the load running), waiting
        no longer than its call's deadline.  With one (it expired, issue 18 §0.3), the refresh
        runs on a background thread (single flight) and the caller waits for it only
        ``stale_grace`` seconds, and not at all while the source is known to be slow: then the
        listing seen before is shown at once.  A refresh that fails with a transient error
        (down, timeout, 503) keeps the old listing for another TTL; one that fails for good
        (404, 403) forgets it, so the next call reports the error.
        """
        fresh = self.meta.get_fresh(key)
        if fresh is not None:
            return fresh
        with self._last_good_lock:
            stale = self._last_good.get(key)
            generation = self._invalidations
        source = self.layout_of(key)[0].source

        def load() -> Any:
            try:
                value = loader()
            except Exception as exc:
                self._note_failure(key, exc)
                raise
            with self._last_good_lock:
                if self._invalidations == generation:
                    self._last_good[key] = value
                was_slow, self._slow_since = self._slow_since, None
            if was_slow is not None:
                log.warning("%s answers again", source)
            return value

        if stale is None:
            return self.meta.get_or_load(key, load, timeout=deadline.left(self.fs_timeout))
        flight = self.meta.load_async(key, load, self._refresh_submit)
        with self._last_good_lock:
            slow = self._slow_since is not None
        if not slow:
            flight.done.wait(min(self.stale_grace, deadline.left(self.fs_timeout)))
        if flight.done.is_set():
            err = flight.error
            if err is None:
                return flight.value
            if not getattr(err, "retryable", False) and not isinstance(err, TimeoutError):
                raise err
            return stale
        with self._last_good_lock:
            became_slow = self._slow_since is None
            if became_slow:
                self._slow_since = time.monotonic()
        if became_slow:
            log.warning(
                "/%s: no answer within %.1fs; showing listings seen before while %s is slow",
                "/".join(key),
                self.stale_grace,
                source,
            )
        return stale

    # the old private name, for callers written against ``Tree``
    _cached = cached

    def _note_failure(self, key: PathParts, exc: BaseException) -> None:
        """A listing load failed: remember a slow source, forget a listing that is gone."""
        transient = getattr(exc, "retryable", False) or isinstance(exc, TimeoutError)
        with self._last_good_lock:
            stale = self._last_good.get(key)
            if not transient:
                self._last_good.pop(key, None)
                return
            if self._slow_since is None:
                self._slow_since = time.monotonic()
        if stale is not None:
            # once per outage, not per listing: the breaker logged it (``reported``)
            level = logging.DEBUG if getattr(exc, "reported", False) else logging.WARNING
            log.log(level, "/%s: %s; showing the listing seen before", "/".join(key), exc)
            # trusted for another TTL, so a down source is not asked again on every stat
            self.meta.put(key, stale)

    def _refresh_submit(self, job: Callable[[], Any]) -> Any:
        """Run a listing refresh on the small background pool (made on first use)."""
        with self._last_good_lock:
            if self._refresh_pool is None:
                self._refresh_pool = ThreadPoolExecutor(
                    _REFRESH_THREADS, thread_name_prefix="xnatfs-refresh"
                )
            pool = self._refresh_pool
        return pool.submit(job)

    def invalidate(self, path: str) -> None:
        """Forget cached listings at and below ``path`` and of its parent (after a change)."""
        parts = split_path(path)
        self._forget_around(parts)
        self.meta.invalidate_prefix(parts)
        if parts:
            self.meta.invalidate(parts[:-1])

    def following(self, path: str) -> List[str]:
        """Folders of mounted views made from what ``path`` shows: a refresh of ``path``
        reaches them too (``fs/ops.py``).  None here; ``tree.Tree`` names them."""
        return []

    def expire(self, path: str) -> None:
        """The listing of ``path`` may be out of date: a change there whose outcome XNAT did
        not tell (timed out, connection broken).  The next look asks again; the listing seen
        before is kept, and shown only while that cannot be answered (``cached``), unlike
        ``invalidate``, which forgets it (an ``ls`` while XNAT is down would then fail)."""
        self.meta.invalidate(split_path(path))

    def _forget_around(self, parts: PathParts) -> None:
        """What ``invalidate`` forgets besides the listing cache: the last-good listings and
        a layout's own loads at and below ``parts`` and of its parent."""
        n = len(parts)
        with self._last_good_lock:
            # a listing from before a local change is never shown in place of a fresh one
            self._invalidations += 1
            for key in [
                k for k in self._last_good.keys() if k[:n] == parts or (n and k == parts[:-1])
            ]:
                self._last_good.pop(key, None)
        # the documents made from those listings (a BIDS participants.tsv): kept by path for
        # a listing TTL, one made before the change was served after ``xnatfs refresh`` listed
        # the change (a new subject in the folder, not in its participants.tsv)
        with self._generated_lock:
            for path in [
                p
                for p in self._generated.keys()
                if split_path(p)[:n] == parts or (n and split_path(p)[:-1] == parts[:-1])
            ]:
                self._generated.pop(path, None)
        # a layout that keeps loads of its own (one request for many directories) forgets
        # the ones the change touches
        layout, prefix = self.layout_of(parts)
        forget = getattr(layout, "invalidated", None)
        if forget is not None:
            forget(parts[len(prefix) :])

    def known_below(self, path: str, limit: int = 50_000) -> List[str]:
        """Paths below ``path`` that a listing the engine still holds names (fresh, or the last
        one seen), at most ``limit``: every name the kernel can hold for that folder came from
        one of them (``fs/ops.py`` makes the kernel forget them at a refresh).  No request
        (``view/held.py``)."""
        return held.known_below(self, path, limit)

    def last_seen(self, key: PathParts) -> Any:
        """The listing cached under ``key``, fresh or the last one seen; None.  No request."""
        value = self.meta.peek(key)
        if value is None:
            with self._last_good_lock:
                value = self._last_good.get(key)
        return value

    def peek_node(self, parts: PathParts) -> Optional[NodeInfo]:
        """The node at ``parts`` if it is cached (``node`` keeps it as long as listings)."""
        return self.meta.peek(parts + (_NODE_KEY,)) if parts else None

    def refresh(self, path: str, make: Callable[[NodeInfo], Any], since: int) -> bool:
        """``invalidate(path)`` after a change the caller has a listing of: ``make(node)``
        builds, from the node of folder ``path`` (as cached: no request), the value of the
        listing that folder is loaded from, and it is stored in the same step as the
        invalidation (``MetaCache.refresh``), unless an invalidation after mark ``since``
        (``meta.mark()``, taken before the caller's request) touched it: a local change the
        listing may predate wins.  False when nothing was stored (then this was
        ``invalidate``: no folder node cached, a folder of a mounted view or a local one,
        ``make`` gave None, or a change won).  The upload's check fetches the resource's
        listing to see the file; stored so, the next lookup in the folder needs no request."""
        parts = split_path(path)
        value, key = None, None
        node = self.meta.peek(parts + (_NODE_KEY,)) if parts else None
        if node is not None and node.is_dir and not self.layout_of(parts)[1]:
            children = self.descriptor(parts, node)
            if isinstance(children, Loaded):
                key = children.key
                try:
                    value = make(node)
                except Exception as exc:  # noqa: BLE001 - a missed shortcut: the next call loads
                    log.debug("listing of %s not kept: %s", path, exc)
        self._forget_around(parts)
        if value is None or key is None:
            self.meta.invalidate_prefix(parts)
            self.meta.invalidate(parts[:-1])
            return False
        return self.meta.refresh(key, value, since, prefixes=[parts], keys=[parts[:-1]])

    # ------------------------------------------------------------------ generated files
    def _is_sized(self, node: NodeInfo) -> bool:
        """Is ``node`` a generated file whose true size ``stat`` shows (``_sized``)?"""
        ref = node.ref
        return isinstance(ref, Generated) and (ref.sized or self.size_all_generated)

    def _sized(self, parts: PathParts, node: NodeInfo, layout: Layout) -> NodeInfo:
        """A generated file with its true size, never 0 until read (issue 16 §1): ``shutil``,
        ``rsync``, ``zipfile`` and ``unzip`` trust the size ``stat`` gives.  A document is
        made now and kept (per path, as long as a listing); a file the server makes (XNAT's
        zip, §3.3) is brought into the content cache first."""
        path = join_path(parts)
        with self._generated_lock:
            data = self._generated.get(path)
        if data is None:
            opened = layout.open(node, path)
            if opened.data is None:
                if opened.key is not None:
                    return replace(node, size=self._download_size(opened.key, path))
                if opened.handle is not None:
                    opened.handle.close()
                return node
            data = opened.data
            with self._generated_lock:
                self._generated[path] = data
        return replace(node, size=len(data))

    def forget_generated(self, path: str) -> None:
        """Make the document at ``path`` anew at its next lookup (``fs/noopen.py`` refreshes
        ``.xnatfs/stats`` so)."""
        with self._generated_lock:
            self._generated.pop(path, None)

    def kept_generated(self, path: str) -> Optional[bytes]:
        """The document at ``path`` as its last lookup made and sized it, or None (not a
        generated document, or no longer kept): ``fs/noopen.py`` reads exactly those bytes."""
        with self._generated_lock:
            data = self._generated.get(path)
        return data if isinstance(data, bytes) else None

    def _download_size(self, key: ContentKey, path: str) -> int:
        """The size of a file that exists only once the server has made it: it is downloaded
        into the content cache (once; later stats cost one ``open``) within the call's
        deadline.  One too big for that answers ETIMEDOUT (one log line, by the ``_op``
        wrapper) while its download goes on, so a later ``stat`` finds it."""
        # what is left of the call (a lookup may have walked slow listings to get here)
        until = time.monotonic() + deadline.left(self.fs_timeout)
        handle = self.content.open(key)
        try:
            if not handle.wait(until):
                raise OSError(
                    errno.ETIMEDOUT,
                    f"{key.uri} is not downloaded after "
                    f"{self.fs_timeout:g} s (--timeout); it goes on downloading into "
                    "the cache: try again later",
                    path,
                )
            fd, _ = handle.span(0, 1, until)  # raises the download's error, if it failed
            return os.fstat(fd).st_size
        finally:
            handle.close()

    # ------------------------------------------------------------------ reading
    def open(self, node: NodeInfo, path: str = "") -> Any:
        """A read handle.  Never waits for the network: downloads start in the background."""
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory", path)
        if self.overlay is not None and self.overlay.owns(node):
            return self.overlay.local_read_handle(node)
        generated = isinstance(node.ref, Generated)
        if self._is_sized(node):
            with self._generated_lock:
                data = self._generated.get(path) if path else None
            if data is not None:  # the bytes whose size lookup gave
                return ReadHandle(node, None, data, self.fs_timeout, path, direct_io=True)
        opened = self._layout_for(node).open(node, path)
        if opened.data is not None:
            if path and self._is_sized(node):
                with self._generated_lock:
                    self._generated[path] = opened.data
            cached = None
        elif opened.key is not None:
            cached = self.content.open(opened.key)
        else:
            cached = opened.handle
        handle = ReadHandle(
            node,
            cached,
            opened.data,
            self.fs_timeout,
            path,
            # a streamed file (larger than the cache): StreamHandle.direct_io
            direct_io=generated or opened.direct_io or bool(getattr(cached, "direct_io", False)),
        )
        if not generated and path and self.policies:
            hit = bool(getattr(cached, "verified", False))
            parts = split_path(path)
            for policy in self.policies:
                if hit and not getattr(policy, "on_cached_opens", True):
                    continue  # Policy.on_cached_opens
                try:
                    if policy.on_open(self, parts, node):
                        break
                except Exception as exc:  # noqa: BLE001 - read-ahead is a guess: the open stands
                    # a policy may load the folder's listing within what is left of the open's
                    # deadline; when it cannot, the file is still open (its handle, pinned in
                    # the cache, was lost with the exception before)
                    log.debug("read-ahead at the open of %s: %s", path, exc)
        return handle

    # ------------------------------------------------------------------ attributes
    def content_key(self, node: NodeInfo) -> Optional[ContentKey]:
        """The node's content-cache key (its layout's ``content_key``)."""
        return self._layout_for(node).content_key(node)

    def mtime_ns(self, node: NodeInfo) -> int:
        """The mtime ``getattr`` shows, in nanoseconds: a local file's own, else the layout's."""
        if self.overlay is not None and self.overlay.owns(node):
            return self.overlay.mtime_ns(node)
        return self._layout_for(node).mtime_ns(node)

    def writable(self, node: NodeInfo) -> bool:
        """Can something be made in this directory, or this file be written?"""
        return not node.mount and self._layout_for(node).writable(node)

    def cacheable(self, node: NodeInfo) -> bool:
        """May the kernel keep this file's pages across opens?  Never a file still being
        written; otherwise the layout says (only bytes fixed by their content key)."""
        if self.overlay is not None and self.overlay.owns(node):
            return False
        return self._layout_for(node).cacheable(node)

    def cache_state(self, node: NodeInfo) -> str:
        if isinstance(node.ref, Generated):
            return "virtual"
        key = None if node.is_dir else self.content_key(node)
        return "n/a" if key is None else self.content.state(key)

    def xattrs(self, node: NodeInfo) -> Dict[str, str]:
        """``user.xnat.*`` names (without the prefix) -> values: the node's layout's, plus
        ``cache_state`` for a file read through the content cache."""
        with deadline.scope(self.fs_timeout):
            attrs = self._layout_for(node).attributes(node)
        if not node.is_dir and "cache_state" not in attrs:
            key = self.content_key(node)
            if key is not None:
                attrs["cache_state"] = self.content.state(key)
        return attrs

    def close(self) -> None:
        """Stop the policies, the refresh pool and the layouts (queued work is dropped)."""
        for policy in self.policies:
            policy.close()
        with self._last_good_lock:
            refresh, self._refresh_pool = self._refresh_pool, None
        if refresh is not None:
            refresh.shutdown(wait=False, cancel_futures=True)
        for layout in [self.layout, *self._mounts.values()]:
            layout.close()


class ReadHandle:
    """An open file: a content-cache handle (or a layout's own handle) or generated bytes."""

    def __init__(
        self,
        node: NodeInfo,
        cached: Any,
        data: Optional[bytes],
        fs_timeout: float,
        path: str,
        *,
        direct_io: bool = False,
    ) -> None:
        self.node = node
        self._cached = cached
        self._data = data
        self._fs_timeout = fs_timeout
        self.path = path
        #: generated files are read to their end whatever size the kernel remembers: a
        #: document made again after its listing TTL may have changed length
        self.direct_io = direct_io

    @property
    def content_version(self) -> Tuple[Any, bool]:
        """(the content key read, served from a verified cache entry: no download, no MD5
        check pending); what the kernel may keep of earlier opens depends on it
        (``fs.keepcache``)."""
        cached = self._cached
        return getattr(cached, "key", None), bool(getattr(cached, "verified", False))

    def read(self, offset: int, size: int) -> bytes:
        if self._data is not None:
            return self._data[offset : offset + size]
        return self._cached.read(offset, size, time.monotonic() + self._fs_timeout)

    def span(self, offset: int, size: int) -> "Tuple[int, int] | bytes":
        """``(fd, n)`` where the bytes can be read from a file (cache, download), else the
        bytes themselves; waits for a download at most ``fs_timeout``
        (``XnatOperations.read_into``)."""
        if self._data is not None:
            return self._data[offset : offset + size]
        return self._cached.span(offset, size, time.monotonic() + self._fs_timeout)

    def close(self) -> None:
        if self._cached is not None:
            self._cached.close()
            self._cached = None
