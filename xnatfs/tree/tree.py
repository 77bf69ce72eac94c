"""The tree: XNAT's hierarchy as directories and files (DESIGN.md §1.1, §1.2).

``Tree`` turns a mount path into a ``NodeInfo`` by walking from the root through cached listings,
lists directories, and opens files through the content cache.  It knows XNAT's shape but not FUSE:
it raises ``OSError`` (with an errno) or lets ``xnatfs.xnat.errors.XnatError`` pass through, and
``xnatfs.fs.errmap`` turns both into errno values.

Costs: every directory is one listing request (cached for ``listing_ttl``); object directories
such as a project or a scan have fixed children and cost nothing; ``getattr`` of any path below a
fresh listing costs nothing, and a name missing from a fresh listing is ENOENT without a request
(fsspec ``_ls_from_cache``).
"""
from __future__ import annotations

import cachetools
import errno
import functools
import json
import logging
import os
import re
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from xnatfs.cache.content import ContentCache, ContentKey
from xnatfs import deadline, metrics
from xnatfs.cache.meta import MetaCache
from xnatfs.tree.nodes import (FIXED_CHILDREN, JSON_KINDS, JSON_NAME, WRITABLE_DIRS, ZIP_KINDS,
                               ZIP_NAME, Kind, NodeInfo)
from xnatfs.tree.paths import PathParts, escape_name, split_path
from xnatfs.xnat.errors import XnatError

log = logging.getLogger(__name__)

PREARCHIVE_NAME = ".prearchive"
#: a folder read less than this many seconds after its parent and grandparent means a walk
_WALK_WINDOW = 10.0
#: a bulk zip is used only for resources up to this size, and of small files on average
_BULK_MAX_BYTES = 2 << 30
_BULK_MAX_MEAN = 16 << 20
#: the part of a zip member's name below its resource's ``files/`` (§3.3 default structure:
#: ``{session}/scans/{id}-{type}/resources/{label}/files/{relpath}``)
_ZIP_MEMBER = re.compile(r"^(?:.*?/)?resources/[^/]+/files/(.+)$")
#: most listings queued ahead of a walker at once
_WALK_QUEUE = 512
#: last part of the metadata-cache key of a resolved node (a file name cannot hold NUL)
_NODE_KEY = "\0node"
#: threads refreshing expired listings in the background (stale-while-slow)
_REFRESH_THREADS = 4
#: longest wait for a refresh of an expired listing before the one seen before is shown
_STALE_GRACE_MAX = 2.0
CONTROL_NAME = ".xnatfs"


@dataclass
class Listing:
    """A directory's children by file name, plus other names that resolve to the same child
    (accession IDs of subjects and experiments listed by label, §0.1)."""

    children: Dict[str, NodeInfo] = field(default_factory=dict)
    aliases: Dict[str, str] = field(default_factory=dict)
    _sorted: Optional[List[str]] = field(default=None, repr=False)

    _positions: Optional[Dict[str, int]] = field(default=None, repr=False)

    def sorted_files(self) -> List[str]:
        """Names of the files (not folders), sorted; computed once per listing."""
        if self._sorted is None:
            self._sorted = sorted(n for n, c in self.children.items() if c.kind is Kind.FILE)
        return self._sorted

    def position(self, name: str) -> int:
        """Index of ``name`` in :meth:`sorted_files`, -1 if it is not a file here."""
        if self._positions is None:
            self._positions = {n: i for i, n in enumerate(self.sorted_files())}
        return self._positions.get(name, -1)


@dataclass
class FileTree:
    """One resource's files listing (a single request, §1.8) as nested folders:
    sub-folder path -> Listing."""

    folders: Dict[Tuple[str, ...], Listing] = field(default_factory=dict)


class Tree:
    """Path ⇄ XNAT object.  Thread-safe: all shared state lives in the caches.

    ``client`` is an ``xnatfs.xnat.client.XnatClient`` (or anything with the same listing
    methods); ``stats_fn`` returns the dict served as ``.xnatfs/stats``.
    """

    def __init__(self, client: Any, meta: MetaCache, content: ContentCache, *,
                 fs_timeout: float = 60.0,
                 stats_fn: Optional[Callable[[], Mapping[str, Any]]] = None,
                 clock: Callable[[], float] = time.time, prefetch: int = 0,
                 walk_ahead: int = 0, bulk_min: int = 0) -> None:
        self.client = client
        self.meta = meta
        self.content = content
        self.fs_timeout = fs_timeout
        #: how many following files of a folder to download when one is opened
        self.prefetch = prefetch
        self._stats_fn = stats_fn or (lambda: {})
        #: mtime shown when XNAT gives none: the mount's start time, so it is stable
        self.epoch = clock()
        self._root = NodeInfo(name="", kind=Kind.ROOT, is_dir=True, mtime=self.epoch)
        #: what the user wrote that XNAT does not show yet (``writes.Writer``), or None
        self.overlay: Any = None
        #: file times set on the mount (``cache.times.TimesIndex``, issue 15 §2), or None
        self.times: Any = None
        #: read per-file times from each resource's catalog (one request per resource)
        self.catalog_times = False
        #: guards _generated, _prefetched and the walk-ahead state (short critical sections)
        self._virtual_lock = threading.Lock()
        #: ``.xnat.json`` documents made at lookup (path -> bytes), so that the size stat
        #: shows is the size read gives, for as long as the kernel trusts that stat; bounded
        self._generated: cachetools.TTLCache = cachetools.TTLCache(maxsize=1024,
                                                                    ttl=meta.ttl or 1.0)
        #: a resource with at least this many uncached files is fetched as one zip (0: off)
        self.bulk_min = bulk_min
        #: resource roots whose first open already decided for or against a zip
        self._bulk_seen: cachetools.TTLCache = cachetools.TTLCache(maxsize=4096,
                                                                    ttl=meta.ttl or 60.0)
        #: parallel listing loads while somebody walks the tree (0: off)
        self.walk_ahead = walk_ahead
        self._walk_pool: Optional[ThreadPoolExecutor] = None
        self._walk_pending = 0
        #: folder -> when it was last read (to recognise a walk); bounded
        self._recent_reads: cachetools.LRUCache = cachetools.LRUCache(maxsize=4096)
        #: id(listing) -> (listing, end of the prefetch window queued for it); bounded
        self._prefetched: cachetools.LRUCache = cachetools.LRUCache(maxsize=1024)
        #: the last listing that loaded for each directory, kept past its TTL so that a server
        #: that is down still shows what was seen (CVMFS-style offline metadata); bounded LRU
        self._last_good: cachetools.LRUCache = cachetools.LRUCache(maxsize=50_000)
        #: guards _last_good, _invalidations, _slow_since and _refresh_pool
        self._last_good_lock = threading.Lock()
        #: bumped by every invalidate(): a load that began before it does not become last-good
        self._invalidations = 0
        #: monotonic time since when refreshes fail or take longer than the grace (None: the
        #: server answers); while set, expired listings are shown at once, refreshed behind
        self._slow_since: Optional[float] = None
        self._refresh_pool: Optional[ThreadPoolExecutor] = None
        #: how long a call waits for the refresh of an expired listing before showing the old
        #: one: most calls on cached paths return at once, none costs more than one deadline
        self.stale_grace = min(_STALE_GRACE_MAX, fs_timeout / 4.0)

    # ------------------------------------------------------------------ lookup and listing
    def lookup(self, path: str) -> NodeInfo:
        """The node at ``path``; ``OSError(ENOENT)`` if XNAT has no such object."""
        with deadline.scope(self.fs_timeout):
            return self._checked(self._lookup(split_path(path)))

    @staticmethod
    def _checked(node: NodeInfo) -> NodeInfo:
        """A file whose listing row was refused (a size outside 0..2^63-1, a URI leaving
        ``/data/``, issue 17 §8) is EIO, with the reason; ``fs/ops`` logs it once."""
        problem = getattr(node.ref, "problem", "") if node.kind is Kind.FILE else ""
        if problem:
            raise OSError(errno.EIO, f"refused listing row ({problem}), uri={node.uri!r}")
        return node

    def listdir(self, path: str) -> List[NodeInfo]:
        with deadline.scope(self.fs_timeout):
            return self._listdir(path)

    def _listdir(self, path: str) -> List[NodeInfo]:
        parts = split_path(path)
        node = self._lookup(parts)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", path)
        children = self._listing(parts, node).children
        if self.overlay is None:
            return list(children.values())
        merged = dict(children)
        for local in self.overlay.children(parts):
            if not (local.is_dir and local.name in merged):
                merged[local.name] = local
        return list(merged.values())

    def readdir(self, path: str) -> List[NodeInfo]:
        """``listdir`` for FUSE readdir.  When the two folders above were read just before,
        somebody is walking the tree (find, cp -r, du, rsync): the listings one level down are
        then loaded in the background, ``walk_ahead`` at a time, instead of one after another
        as the walker reaches them.  Each is still one request per directory."""
        children = self.listdir(path)
        if self.walk_ahead:
            parts = split_path(path)
            now = time.monotonic()
            with self._virtual_lock:
                recent = self._recent_reads
                walking = len(parts) >= 2 and all(
                    now - recent.get(parts[:-i], -1e9) < _WALK_WINDOW for i in (1, 2))
                recent[parts] = now
            if walking:
                self._walk_ahead(parts, children)
        return children

    def _walk_ahead(self, parts: PathParts, children: List[NodeInfo]) -> None:
        jobs: List[Tuple[PathParts, NodeInfo]] = []
        for child in children:
            if not child.is_dir or child.kind in (Kind.CONTROL, Kind.PREARCHIVE) \
                    or child.ref == "local":
                continue
            cparts = parts + (child.name,)
            fixed = FIXED_CHILDREN.get(child.kind)
            if fixed is None:
                jobs.append((cparts, child))
            else:  # objects with fixed children: their children's listings are the requests
                for name, grandchild in self._fixed_listing(child, fixed).children.items():
                    jobs.append((cparts + (name,), grandchild))
        with self._virtual_lock:
            if self._walk_pool is None:
                self._walk_pool = ThreadPoolExecutor(self.walk_ahead,
                                                     thread_name_prefix="xnatfs-walk")
            for job_parts, node in jobs:
                if self._walk_pending >= _WALK_QUEUE or self.meta.peek(job_parts) is not None:
                    continue
                self._walk_pending += 1
                self._walk_pool.submit(self._walk_load, job_parts, node)

    def _walk_load(self, parts: PathParts, node: NodeInfo) -> None:
        try:
            self._listing(parts, node)
        except Exception as exc:  # noqa: BLE001 - a guess that failed; the walker will ask
            log.debug("walk-ahead /%s: %s", "/".join(parts), exc)
        finally:
            with self._virtual_lock:
                self._walk_pending -= 1

    def _bulk(self, folder_parts: PathParts, folder: NodeInfo) -> bool:
        """Fetch the resource holding ``folder`` as one zip (§3.3) the first time one of its
        files is opened, when many of its files are not cached: one request instead of one per
        file, which is what lets ``cp -r`` of a DICOM scan keep up with xnatpy's zip download.
        The zip's members are streamed into the cache as they arrive and a reader of any of
        them waits only for its own member (``ContentCache.bulk``).  True when the zip is on
        its way (per-file prefetching would fetch the same bytes twice)."""
        root = folder_parts[:len(folder_parts) - len(folder.subpath)]
        with self._virtual_lock:
            if root in self._bulk_seen:
                return False
            self._bulk_seen[root] = True
        files = [node for listing in self._cached(
            root, lambda: self._load_files(self._lookup(root))).folders.values()
            for node in listing.children.values()
            if node.kind is Kind.FILE and not getattr(node.ref, "problem", "")]
        total = sum(n.size for n in files)
        if len(files) < self.bulk_min or total > _BULK_MAX_BYTES \
                or total > _BULK_MAX_MEAN * len(files):
            return False
        by_path = {n.ref.path: self.content_key(n) for n in files
                   if getattr(n.ref, "path", None) is not None}

        def key_of(member: str) -> Optional[ContentKey]:
            m = _ZIP_MEMBER.match(member)
            return by_path.get(m.group(1)) if m else None

        try:
            started = self.content.bulk(folder.uri.rstrip("/") + "/files?format=zip",
                                        [self.content_key(n) for n in files], key_of,
                                        min_files=self.bulk_min, max_files=_bulk_max_files())
        except RuntimeError:  # the cache is closing
            return False
        log.debug("/%s: %d file(s) coming in one zip", "/".join(root), started)
        return started > 0

    def close(self) -> None:
        """Stop the walk-ahead and refresh pools (queued work is dropped)."""
        with self._virtual_lock:
            pool, self._walk_pool = self._walk_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        with self._last_good_lock:
            refresh, self._refresh_pool = self._refresh_pool, None
        if refresh is not None:
            refresh.shutdown(wait=False, cancel_futures=True)

    def _lookup(self, parts: PathParts) -> NodeInfo:
        if not parts:
            return self._root
        if self.overlay is not None:
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
        node = self._resolve(parts)
        # generated files learn their size when made; local folders come and go with writes
        if node.kind is not Kind.VIRTUAL and node.ref != "local":
            self.meta.put(node_key, node)
        return node

    def _resolve(self, parts: PathParts) -> NodeInfo:
        parent_parts, name = parts[:-1], parts[-1]
        if not parent_parts and name == CONTROL_NAME:
            # never behind the root listing: stats must answer while the server does not
            return NodeInfo(name=CONTROL_NAME, kind=Kind.CONTROL, is_dir=True, mtime=self.epoch)
        parent = self._lookup(parent_parts)
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", "/" + "/".join(parent_parts))
        if name == JSON_NAME and parent.kind in JSON_KINDS:
            return self._virtual(parts, parent, "json")
        if name == ZIP_NAME and parent.kind in ZIP_KINDS and not parent.prearchive:
            return self._virtual(parts, parent, "zip")
        listing = self._listing(parent_parts, parent)
        child = listing.children.get(name)
        if child is None and name in listing.aliases:
            child = listing.children.get(listing.aliases[name])
        if child is None and self.overlay is not None:
            child = self.overlay.dir_node(parts)
        if child is None:
            raise OSError(errno.ENOENT, "no such XNAT object", "/" + "/".join(parts))
        return child

    def _listing(self, parts: PathParts, node: NodeInfo) -> Listing:
        """Children of directory ``node`` at ``parts``: fixed, or from one cached listing."""
        fixed = FIXED_CHILDREN.get(node.kind)
        if fixed is not None:
            return self._fixed_listing(node, fixed)
        if node.kind is Kind.CONTROL:
            return self._load_listing(node)  # no request, nothing to wait for
        if node.kind is Kind.FILES:
            if node.ref == "local":  # made by mkdir, only local children (writes.Writer)
                return Listing()
            # the whole resource is one listing; sub-folders are views of it
            root_parts = parts[:len(parts) - len(node.subpath)]
            tree = self._cached(root_parts, lambda: self._load_files(node))
            listing = tree.folders.get(node.subpath)
            if listing is None:
                raise OSError(errno.ENOENT, "folder vanished from the resource", "/".join(parts))
            return listing
        return self._cached(parts, lambda: self._load_listing(node))

    def _cached(self, key: PathParts, loader: Callable[[], Any]) -> Any:
        """The fresh listing, else one request; stale-while-slow when one was seen before.

        Without a listing seen before, the caller loads it (or joins the load running), waiting
        no longer than its call's deadline.  With one (it expired, issue 18 §0.3), the refresh
        runs on a background thread (single flight) and the caller waits for it only
        ``stale_grace`` seconds, and not at all while the server is known to be slow: then the
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
                log.warning("%s answers again", getattr(self.client, "base_url", "XNAT"))
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
            log.warning("/%s: no answer within %.1fs; showing listings seen before while %s "
                        "is slow", "/".join(key), self.stale_grace,
                        getattr(self.client, "base_url", "XNAT"))
        return stale

    def _note_failure(self, key: PathParts, exc: BaseException) -> None:
        """A listing load failed: remember a slow server, forget a listing that is gone."""
        transient = getattr(exc, "retryable", False) or isinstance(exc, TimeoutError)
        with self._last_good_lock:
            stale = self._last_good.get(key)
            if not transient:
                self._last_good.pop(key, None)
                return
            if self._slow_since is None:
                self._slow_since = time.monotonic()
        if stale is not None:
            log.warning("/%s: %s; showing the listing seen before", "/".join(key), exc)
            # trusted for another TTL, so a down server is not asked again on every stat
            self.meta.put(key, stale)

    def _refresh_submit(self, job: Callable[[], Any]) -> Any:
        """Run a listing refresh on the small background pool (made on first use)."""
        with self._last_good_lock:
            if self._refresh_pool is None:
                self._refresh_pool = ThreadPoolExecutor(_REFRESH_THREADS,
                                                        thread_name_prefix="xnatfs-refresh")
            pool = self._refresh_pool
        return pool.submit(job)

    def _fixed_listing(self, node: NodeInfo, fixed: Tuple[Tuple[str, Kind], ...]) -> Listing:
        listing = Listing()
        for name, kind in fixed:
            listing.children[name] = NodeInfo(
                name=name, kind=kind, is_dir=True, mtime=node.mtime, uri=node.uri,
                project=node.project, subject=node.subject, prearchive=node.prearchive)
        return listing

    # ------------------------------------------------------------------ loaders (one request)
    def _load_listing(self, node: NodeInfo) -> Listing:
        kind, c = node.kind, self.client
        listing = Listing()

        def add(child: NodeInfo, *aliases: str) -> None:
            listing.children[child.name] = child
            for alias in aliases:
                alias = escape_name(alias)
                if alias and alias != child.name:
                    listing.aliases.setdefault(alias, child.name)

        if kind is Kind.ROOT:
            for p in c.list_projects():
                add(NodeInfo(name=escape_name(p.id), kind=Kind.PROJECT, is_dir=True,
                             mtime=p.mtime or self.epoch, uri=p.uri, project=p.id, ref=p,
                             attrs=_attrs(id=p.id, label=p.id, uri=p.uri,
                                          xsi_type="xnat:projectData", name=p.name)))
            add(NodeInfo(name=PREARCHIVE_NAME, kind=Kind.PREARCHIVE, is_dir=True,
                         mtime=self.epoch, prearchive=True))
            add(NodeInfo(name=CONTROL_NAME, kind=Kind.CONTROL, is_dir=True, mtime=self.epoch))
        elif kind is Kind.SUBJECTS:
            for s in c.list_subjects(node.project):
                add(NodeInfo(name=escape_name(s.label or s.id), kind=Kind.SUBJECT, is_dir=True,
                             mtime=s.mtime or node.mtime, uri=s.uri, project=node.project,
                             subject=s.id, ref=s,
                             attrs=_attrs(id=s.id, label=s.label, uri=s.uri, project=s.project,
                                          xsi_type="xnat:subjectData")), s.id)
        elif kind is Kind.EXPERIMENTS:
            for e in c.list_experiments(node.project, node.subject):
                add(NodeInfo(name=escape_name(e.label or e.id), kind=Kind.EXPERIMENT,
                             is_dir=True, mtime=e.mtime or node.mtime, uri=e.uri,
                             project=node.project, subject=node.subject, ref=e,
                             attrs=_attrs(id=e.id, label=e.label, uri=e.uri, project=e.project,
                                          xsi_type=e.xsi_type, date=e.date)), e.id)
        elif kind is Kind.SCANS:
            scans = (c.list_prearchive_scans(node.uri) if node.prearchive
                     else c.list_scans(node.uri))
            for s in scans:
                add(NodeInfo(name=escape_name(s.id), kind=Kind.SCAN, is_dir=True,
                             mtime=s.mtime or node.mtime, uri=s.uri, project=node.project,
                             subject=node.subject, prearchive=node.prearchive, ref=s,
                             attrs=_attrs(id=s.id, label=s.id, uri=s.uri, xsi_type=s.xsi_type,
                                          scan_type=s.type, quality=s.quality,
                                          series_description=s.series_description)))
        elif kind is Kind.ASSESSORS:
            for a in c.list_assessors(node.uri):
                add(NodeInfo(name=escape_name(a.label or a.id), kind=Kind.ASSESSOR, is_dir=True,
                             mtime=a.mtime or node.mtime, uri=a.uri, project=node.project,
                             subject=node.subject, ref=a,
                             attrs=_attrs(id=a.id, label=a.label, uri=a.uri,
                                          xsi_type=a.xsi_type)), a.id)
        elif kind is Kind.RESOURCES:
            resources = (c.list_prearchive_resources(node.uri) if node.prearchive
                         else c.list_resources(node.uri))
            for r in resources:
                add(NodeInfo(name=escape_name(r.label or r.id), kind=Kind.RESOURCE, is_dir=True,
                             mtime=node.mtime, uri=r.uri, project=node.project,
                             subject=node.subject, prearchive=node.prearchive, ref=r,
                             attrs=_attrs(id=r.id, label=r.label, uri=r.uri,
                                          xsi_type="xnat:resourceCatalog", format=r.format,
                                          content=r.content, tags=r.tags)), r.id)
        elif kind is Kind.PREARCHIVE:
            # every project the user can see (an archive written into .prearchive/P is
            # imported there), plus any other project that has sessions waiting
            projects = [p.id for p in c.list_projects()]
            projects += [s.project for s in c.list_prearchive()]
            for project in dict.fromkeys(projects):
                add(NodeInfo(name=escape_name(project), kind=Kind.PRE_PROJECT, is_dir=True,
                             mtime=self.epoch, project=project, prearchive=True))
        elif kind is Kind.PRE_PROJECT:
            for s in c.list_prearchive(node.project):
                name = escape_name(s.timestamp)
                if name not in listing.children:
                    add(NodeInfo(name=name, kind=Kind.PRE_TIMESTAMP, is_dir=True,
                                 mtime=s.mtime or self.epoch, project=node.project,
                                 prearchive=True, ref=s.timestamp))
        elif kind is Kind.PRE_TIMESTAMP:
            for s in c.list_prearchive(node.project):
                if s.timestamp == node.ref:
                    add(NodeInfo(name=escape_name(s.folder_name or s.name),
                                 kind=Kind.PRE_SESSION, is_dir=True, mtime=s.mtime or self.epoch,
                                 uri=s.uri, project=node.project, prearchive=True, ref=s,
                                 attrs=_attrs(label=s.name, uri=s.uri, status=s.status,
                                              subject=s.subject, timestamp=s.timestamp)))
        elif kind is Kind.CONTROL:
            for name in ("stats", "metrics"):
                add(NodeInfo(name=name, kind=Kind.VIRTUAL, is_dir=False, mtime=self.epoch,
                             ref=(name, None)))
        else:  # pragma: no cover - every directory kind is handled above
            raise OSError(errno.EIO, f"cannot list a {kind.value}", node.name)
        return listing

    def _load_files(self, node: NodeInfo) -> FileTree:
        """All files of one resource in one request, folded into sub-folders (§1.8)."""
        entries = (self.client.list_prearchive_files(node.uri) if node.prearchive
                   else self.client.list_files(node.uri))
        times = self._catalog_times(node) if self.catalog_times and not node.prearchive else {}
        tree = FileTree()
        tree.folders[()] = Listing()
        for entry in entries:
            parts = tuple(escape_name(p) for p in entry.path.split("/") if p)
            if not parts:
                continue
            for depth in range(1, len(parts)):
                folder, name = parts[:depth - 1], parts[depth - 1]
                sub = parts[:depth]
                if sub not in tree.folders:
                    tree.folders[sub] = Listing()
                    tree.folders.setdefault(folder, Listing()).children[name] = NodeInfo(
                        name=name, kind=Kind.FILES, is_dir=True, mtime=node.mtime, uri=node.uri,
                        project=node.project, subject=node.subject, subpath=sub,
                        prearchive=node.prearchive)
            folder = parts[:-1]
            tree.folders.setdefault(folder, Listing()).children[parts[-1]] = NodeInfo(
                name=parts[-1], kind=Kind.FILE, is_dir=False, size=entry.size,
                mtime=entry.mtime or times.get(entry.path) or node.mtime, uri=entry.uri,
                project=node.project, subject=node.subject, subpath=parts, digest=entry.digest,
                prearchive=node.prearchive, ref=entry,
                attrs=_attrs(uri=entry.uri, digest=entry.digest, format=entry.format,
                             content=entry.content, tags=entry.tags,
                             resource=entry.collection))
        return tree

    def _catalog_times(self, node: NodeInfo) -> Dict[str, float]:
        """Per-file times from the resource's catalog (``--catalog-times``, issue 15 §1): one
        more request per resource listing, none per file.  A server that cannot answer costs
        only the times (the object's time is shown), never the listing."""
        try:
            return self.client.catalog_times(node.uri)
        except Exception as exc:  # noqa: BLE001 - times are a nicety; the listing stands
            log.info("catalog times of %s unavailable (%s): files show the object's time",
                     node.uri, exc)
            return {}

    # ------------------------------------------------------------------ generated files
    def _virtual(self, parts: PathParts, parent: NodeInfo, what: str) -> NodeInfo:
        """A generated file with its true size, never 0 until read (issue 16 §1): ``shutil``,
        ``rsync``, ``zipfile`` and ``unzip`` trust the size ``stat`` gives.  ``.xnat.json``
        is made now (one small request, kept as long as the listing); the ``.zip`` is XNAT's
        own download (§3.3), brought into the content cache first."""
        path = "/" + "/".join(parts)
        node = NodeInfo(name=parts[-1], kind=Kind.VIRTUAL, is_dir=False, mtime=parent.mtime,
                        uri=parent.uri, project=parent.project, prearchive=parent.prearchive,
                        ref=(what, parent))
        size = self._zip_size(node, path) if what == "zip" else len(self._generate(node, path))
        return replace(node, size=size)

    def _generate(self, node: NodeInfo, path: str) -> bytes:
        with self._virtual_lock:
            data = self._generated.get(path)
        if data is None:
            data = self._make_virtual(node)
            with self._virtual_lock:
                self._generated[path] = data
        return data

    @staticmethod
    def _zip_key(parent: NodeInfo) -> ContentKey:
        uri = parent.uri + ("/scans/ALL" if parent.kind is Kind.EXPERIMENT else "")
        return ContentKey.archive(uri, mtime=parent.mtime)

    def _zip_size(self, node: NodeInfo, path: str) -> int:
        """The size of XNAT's zip, which exists only once XNAT has made it: it is downloaded
        into the content cache (once; later stats cost one ``open``) within the call's
        deadline.  A zip too big for that answers ETIMEDOUT (one log line, by the ``_op``
        wrapper) while its download goes on, so a later ``stat`` finds it."""
        key = self._zip_key(node.ref[1])
        deadline = time.monotonic() + self.fs_timeout
        handle = self.content.open(key)
        try:
            if not handle.wait(deadline):
                raise OSError(errno.ETIMEDOUT, f"XNAT's zip {key.uri} is not downloaded after "
                              f"{self.fs_timeout:g} s (--timeout); it goes on downloading into "
                              "the cache: try again later", path)
            fd, _ = handle.span(0, 1, deadline)  # raises the download's error, if it failed
            return os.fstat(fd).st_size
        finally:
            handle.close()

    def _make_virtual(self, node: NodeInfo) -> bytes:
        what, parent = node.ref
        if what == "stats":
            return (json.dumps(self._stats_fn(), indent=2, sort_keys=True) + "\n").encode()
        if what == "metrics":
            return metrics.prometheus(self._stats_fn()).encode()
        if what == "json":
            if parent.kind in (Kind.RESOURCE, Kind.PRE_SESSION) or parent.prearchive:
                doc: Any = dict(getattr(parent.ref, "fields", {}) or {})
            else:
                doc = self.client.get_object(parent.uri)
            return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)
                    + "\n").encode()
        raise OSError(errno.EIO, f"unknown generated file {what}", node.name)

    # ------------------------------------------------------------------ reading
    def open(self, node: NodeInfo, path: str = "") -> "ReadHandle":
        """A read handle.  Never waits for the network: downloads start in the background."""
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory", path)
        if self.overlay is not None and self.overlay.owns(node):
            return self.overlay.local_read_handle(node)
        if node.kind is Kind.VIRTUAL:
            what, parent = node.ref
            if what == "zip":
                return ReadHandle(node, self.content.open(self._zip_key(parent)), None, self,
                                  path)
            # .xnat.json: the bytes whose size lookup gave; stats and metrics: made now
            data = self._generate(node, path) if what == "json" else self._make_virtual(node)
            return ReadHandle(node, None, data, self, path)
        handle = ReadHandle(node, self.content.open(self.content_key(node)), None, self, path)
        if (self.prefetch or self.bulk_min) and path:
            self._prefetch_after(split_path(path), node)
        return handle

    def _prefetch_after(self, parts: PathParts, node: NodeInfo) -> None:
        """Queue downloads of the next ``prefetch`` files of the folder (by name, the order of
        ``cp -r``, ``ls`` and DICOM readers), so per-request latency overlaps instead of adding
        up.  A sliding window: each open moves it, and the queue stays short enough that a
        file somebody actually opens is never stuck behind a long list of guesses."""
        folder = self._lookup(parts[:-1])
        if self.bulk_min and not folder.prearchive and self._bulk(parts[:-1], folder):
            return  # the whole resource is on its way as one zip
        if not self.prefetch:
            return
        listing = self._listing(parts[:-1], folder)
        names = listing.sorted_files()
        start = listing.position(node.name) + 1
        if start == 0:
            return
        end = min(len(names), start + self.prefetch)
        with self._virtual_lock:
            # the window already queued for this folder listing: only extend it, unless the
            # reader went back (a second pass) or jumped past it
            done = self._prefetched.get(id(listing), (None, 0))
            if done[0] is listing and done[1] - self.prefetch <= start <= done[1]:
                start = done[1]
            if start >= end:
                return
            self._prefetched[id(listing)] = (listing, end)
        self.content.prefetch(self.content_key(listing.children[name])
                              for name in names[start:end]
                              if not getattr(listing.children[name].ref, "problem", ""))

    @staticmethod
    def content_key(node: NodeInfo) -> ContentKey:
        # With a digest, (uri, size, digest) identifies the bytes; the mtime we show for files is
        # the parent object's, which changes whenever anything in it changes, so it would only
        # cause needless downloads.  Without a digest (checksums off, §1.8) the mtime is all
        # we have to notice a change.
        return _content_key(node.uri, node.size, node.digest,
                            None if node.digest else node.mtime)

    def mtime_ns(self, node: NodeInfo) -> int:
        """The mtime ``getattr`` shows, in nanoseconds: a local file's own; for a file on
        XNAT the one set on this mount for these bytes (``cache.times``), else XNAT's."""
        if self.overlay is not None and self.overlay.owns(node):
            return int(node.ref.mtime_ns)
        if node.kind is Kind.FILE and self.times is not None and node.uri:
            kept = self.times.get(node.uri, node.size, node.digest,
                                  getattr(node.ref, "mtime", None) or 0.0)
            if kept is not None:
                return kept
        return int(node.mtime * 1e9)

    def writable(self, node: NodeInfo) -> bool:
        """Can something be made in this directory, or this file be written (modes, §1.2)?"""
        if node.is_dir:
            return node.kind in WRITABLE_DIRS and (not node.prearchive
                                                   or node.kind is Kind.PRE_PROJECT)
        return node.kind is Kind.FILE and not node.prearchive

    def cacheable(self, node: NodeInfo) -> bool:
        """May the kernel keep this file's pages across opens?  Only XNAT's own files, whose
        content is fixed by (uri, size, digest); never a file still being written."""
        return node.kind is Kind.FILE and not (self.overlay is not None
                                               and self.overlay.owns(node))

    def cache_state(self, node: NodeInfo) -> str:
        if node.kind is not Kind.FILE:
            return "virtual" if node.kind is Kind.VIRTUAL else "n/a"
        return self.content.state(self.content_key(node))

    def xattrs(self, node: NodeInfo) -> Dict[str, str]:
        """``user.xnat.*`` names (without the prefix) -> values; cache state for files."""
        attrs = {k: v for k, v in node.attrs.items() if v}
        if node.kind is Kind.PRE_SESSION and node.uri:
            # queued builds and moves change the status well within a listing's TTL (§7.3):
            # read it fresh; on failure the listing's value stands
            try:
                with deadline.scope(self.fs_timeout):
                    fresh = self.client.get_prearchive(node.uri)
            except XnatError as exc:
                log.debug("status of %s: %s", node.uri, exc)
                fresh = None
            if fresh is not None and fresh.status:
                attrs["status"] = fresh.status
        if node.kind is Kind.FILE and "cache_state" not in attrs:
            attrs["cache_state"] = self.cache_state(node)
        return attrs

    def invalidate(self, path: str) -> None:
        """Forget cached listings at and below ``path`` and of its parent (after a change)."""
        parts = split_path(path)
        n = len(parts)
        with self._last_good_lock:
            # a listing from before a local change is never shown in place of a fresh one
            self._invalidations += 1
            for key in [k for k in self._last_good.keys()
                        if k[:n] == parts or (n and k == parts[:-1])]:
                self._last_good.pop(key, None)
        self.meta.invalidate_prefix(parts)
        if parts:
            self.meta.invalidate(parts[:-1])


class ReadHandle:
    """An open file: either a content-cache handle (XNAT files, zips) or generated bytes."""

    def __init__(self, node: NodeInfo, cached: Any, data: Optional[bytes], tree: Tree,
                 path: str) -> None:
        self.node = node
        self._cached = cached
        self._data = data
        self._tree = tree
        self.path = path

    @property
    def direct_io(self) -> bool:
        """Generated files are read to their end whatever size the kernel remembers: a
        document made again after its listing TTL may have changed length."""
        return self.node.kind is Kind.VIRTUAL

    @property
    def content_version(self) -> Tuple[Any, bool]:
        """(the content key read, served from a verified cache entry: no download, no MD5
        check pending); what the kernel may keep of earlier opens depends on it
        (``fs.keepcache``)."""
        cached = self._cached
        return getattr(cached, "key", None), bool(getattr(cached, "verified", False))

    def read(self, offset: int, size: int) -> bytes:
        if self._data is not None:
            return self._data[offset:offset + size]
        deadline = time.monotonic() + self._tree.fs_timeout
        return self._cached.read(offset, size, deadline)

    def span(self, offset: int, size: int) -> "Tuple[int, int] | bytes":
        """``(fd, n)`` where the bytes can be read from a file (cache, download), else the
        bytes themselves; waits for a download at most ``fs_timeout``
        (``XnatOperations.read_into``)."""
        if self._data is not None:
            return self._data[offset:offset + size]
        return self._cached.span(offset, size, time.monotonic() + self._tree.fs_timeout)

    def close(self) -> None:
        if self._cached is not None:
            self._cached.close()
            self._cached = None


def _bulk_max_files() -> int:
    """Files one bulk zip may bring: each holds an open partial file until it is cached, so
    stay well inside the open-files limit (the daemon raises it at start, ``cli``)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(0, min(4096, soft // 2 - 128))


@functools.lru_cache(maxsize=65536)
def _content_key(uri: str, size: int, digest: str, mtime: Optional[float]) -> ContentKey:
    """One ContentKey object per file version, so its hexname (json + sha256) is computed once
    and not on every open, prefetch check and xattr read.

    The listed MD5 rides on the download URL as ``xnatfs_md5=``, a parameter XNAT does not read
    (xnat-rest-api.md §1.2, §3.1), so that a shared cache proxy (``xnatfs cache-proxy``,
    docs/SCALING.md) keys on it: a file changed on XNAT has a new URL and never an old entry."""
    if digest and _HEX.fullmatch(digest):
        uri += ("&" if "?" in uri else "?") + DIGEST_PARAM + "=" + digest.lower()
    return ContentKey(uri=uri, size=size, digest=digest, mtime=mtime)


#: the download URL parameter that carries the listed MD5 (the cache proxy's key)
DIGEST_PARAM = "xnatfs_md5"
_HEX = re.compile(r"[0-9a-fA-F]{32}")


def _attrs(**values: Optional[str]) -> Dict[str, str]:
    return {k: str(v) for k, v in values.items() if v}
