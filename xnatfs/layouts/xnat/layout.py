"""``XnatLayout``: XNAT's hierarchy as directories and files (docs/LAYOUT.md §1.1, §1.2).

Object directories (a project, a scan) have fixed children and cost nothing; every other
directory is one listing request (``loaders``); a resource's whole ``files/`` tree is ONE request
(§1.8) whose sub-folders are views of it (one ``Loaded`` key for all of them).  ``.xnat.json``
and ``.zip`` are unlisted names answered by ``lookup``; ``.xnatfs`` answers without the root
listing, so stats answer while XNAT does not.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import re
from typing import Any, Callable, Dict, Mapping, Optional
from urllib.parse import unquote

from xnatfs import metrics
from xnatfs.cache.content import ContentKey
from xnatfs.jsondoc import dumps_bounded
from xnatfs.layouts.xnat.bundle import ExperimentBundles
from xnatfs.layouts.xnat.kinds import (
    CONTROL_NAME,
    FIXED_CHILDREN,
    JSON_KINDS,
    JSON_NAME,
    WRITABLE_DIRS,
    ZIP_KINDS,
    ZIP_NAME,
    Gen,
    Kind,
)
from xnatfs.layouts.xnat.loaders import (
    FileTree,
    Source,
    control_listing,
    control_node,
    load_files,
    load_listing,
    load_resources,
)
from xnatfs.view.layout import BaseLayout, Children, Fixed, Listing, Loaded, Opened
from xnatfs.view.node import Generated, NodeInfo
from xnatfs.view.paths import PathParts, split_path
from xnatfs.xnat.errors import XnatError

log = logging.getLogger(__name__)


class XnatLayout(BaseLayout):
    """The XNAT archive and prearchive.  ``client`` is an ``xnatfs.xnat.client.XnatClient``
    (or anything with the same listing methods); ``content`` the content cache (for
    ``cache_state``); ``stats_fn`` returns the dict served as ``.xnatfs/stats``."""

    def __init__(
        self,
        client: Any,
        content: Any,
        *,
        epoch: float,
        stats_fn: Optional[Callable[[], Mapping[str, Any]]] = None,
    ) -> None:
        self.client = client
        self.content = content
        self.source = getattr(client, "base_url", "XNAT")
        self._src = Source(client, epoch)
        self._stats_fn = stats_fn or (lambda: {})
        self._root = NodeInfo(name="", kind=Kind.ROOT, is_dir=True, mtime=epoch)
        self._control = control_node(epoch)
        #: file times set on the mount (``cache.times.TimesIndex``, issue 15 §2), or None
        self.times: Any = None
        #: an experiment's scan resources and files from one or two requests (issue 12, B4),
        #: or None: one request per directory (``Tree(experiment_listings=...)``)
        self.bundles: Optional[ExperimentBundles] = None
        #: ``(key, load) -> value``: a listing as the engine keeps it (``Engine.cached``: fresh,
        #: else one request), so a ``.zip`` is keyed on the listings ``ls`` shows; set by the
        #: tree.  Unset (a layout on its own), each load is a request
        self.listed: Callable[[PathParts, Callable[[], Any]], Any] = _load_uncached

    @property
    def epoch(self) -> float:
        return self._src.epoch

    @property
    def catalog_times(self) -> bool:
        """Read per-file times from each resource's catalog (one request per resource)."""
        return self._src.catalog_times

    @catalog_times.setter
    def catalog_times(self, value: bool) -> None:
        self._src.catalog_times = value

    # ------------------------------------------------------------------ hierarchy
    def root(self) -> NodeInfo:
        return self._root

    def children(self, parts: PathParts, node: NodeInfo) -> Children:
        fixed = FIXED_CHILDREN.get(node.kind) if isinstance(node.kind, Kind) else None
        if fixed is not None:
            return Fixed(fixed_listing(node, fixed))
        if node.kind is Kind.CONTROL:
            return Fixed(control_listing(self.epoch))  # no request, nothing to wait for
        if node.kind is Kind.FILES:
            # the whole resource is one listing; sub-folders are views of it
            root = parts[: len(parts) - len(node.subpath)]
            # a sub-folder's node carries the resource's uri, mtime and prearchive flag: all
            # the one files listing of the resource needs (§1.8)
            return Loaded(
                root,
                functools.partial(load_files, self._src, node, self._bundled_files(root, node)),
                functools.partial(_folder, node.subpath, parts),
            )
        rows = self._bundled_resources(parts, node)
        if rows is not None:
            return Loaded(parts, functools.partial(load_resources, self._src, node, rows))
        if self._warms_tables(parts, node):
            return Loaded(parts, functools.partial(self._load_scans_warming, parts, node))
        return Loaded(parts, functools.partial(load_listing, self._src, node))

    # an archive experiment's scans: P/subjects/S/experiments/E/scans[/N/resources[/R/files]]
    @staticmethod
    def _scan_path(parts: PathParts, depth: int) -> bool:
        return (
            len(parts) == depth
            and parts[1] == "subjects"
            and parts[3] == "experiments"
            and parts[5] == "scans"
            and (depth < 8 or parts[7] == "resources")
        )

    def _warms_tables(self, parts: PathParts, node: NodeInfo) -> bool:
        """An archive experiment's ``scans``: its listing warms the experiment's tables."""
        return (
            self.bundles is not None
            and self.bundles.submit is not None
            and node.kind is Kind.SCANS
            and not node.prearchive
            and self._scan_path(parts, 6)
        )

    def _load_scans_warming(self, parts: PathParts, node: NodeInfo) -> Listing:
        """The scans listing, with the experiment's resources and files tables loading beside
        it (``ExperimentBundles.warm``): the walker's next two listings come from them."""
        assert self.bundles is not None
        self.bundles.warm(parts[:5], node.uri)
        return load_listing(self._src, node)

    def _bundled_resources(self, parts: PathParts, node: NodeInfo) -> Optional[Callable[[], Any]]:
        """A scan's resources from its experiment's one ``resources?all=true`` (B4)."""
        if (
            self.bundles is None
            or node.prearchive
            or node.kind is not Kind.RESOURCES
            or not self._scan_path(parts, 8)
            or "/scans/" not in node.uri
        ):
            return None
        exp_uri, scan = node.uri.rsplit("/scans/", 1)
        fallback = functools.partial(self.client.list_resources, node.uri)
        return functools.partial(
            self.bundles.scan_resources, parts[:5], exp_uri, unquote(scan), fallback
        )

    def _bundled_files(self, root: PathParts, node: NodeInfo) -> Optional[Callable[[], Any]]:
        """A scan resource's files from its experiment's one ``scans/ALL/files`` (B4); not
        with ``--catalog-times`` (a request per resource anyway)."""
        if (
            self.bundles is None
            or node.prearchive
            or self.catalog_times
            or not self._scan_path(root, 10)
            or root[9] != "files"
            or "/scans/" not in node.uri
        ):
            return None
        scan_uri = node.uri.rsplit("/resources/", 1)[0]
        exp_uri, scan = scan_uri.rsplit("/scans/", 1)
        fallback = functools.partial(self.client.list_files, node.uri)
        return functools.partial(
            self.bundles.scan_files, root[:5], exp_uri, unquote(scan), node.uri, fallback
        )

    def files_listing(self, node: NodeInfo, rows: Any) -> Optional[FileTree]:
        """The value a resource's ``files/`` folders are listed from (``load_files``), made of
        ``rows`` (what ``client.list_files`` of its resource returned) instead of a request;
        None where loading it costs more than that one request (``--catalog-times``: the
        catalog's times) or ``node`` is no such folder."""
        if node.kind is not Kind.FILES or node.prearchive or self.catalog_times:
            return None
        return load_files(self._src, node, lambda: rows)

    def invalidated(self, parts: PathParts) -> None:
        """A local change at ``parts`` (the engine calls it): bundles at or below forgotten."""
        if self.bundles is not None:
            self.bundles.invalidated(parts)

    def lookup(self, parts: PathParts, parent: NodeInfo, name: str) -> Optional[NodeInfo]:
        if not parts and name == CONTROL_NAME:
            # never behind the root listing: stats must answer while the server does not
            return self._control
        if name == JSON_NAME and parent.kind in JSON_KINDS:
            return self._generated(name, parent, Gen.JSON)
        if name == ZIP_NAME and parent.kind in ZIP_KINDS and not parent.prearchive:
            return self._generated(name, parent, Gen.ZIP)
        return None

    @staticmethod
    def _generated(name: str, parent: NodeInfo, what: Gen) -> NodeInfo:
        return NodeInfo(
            name=name,
            kind=Kind.VIRTUAL,
            is_dir=False,
            mtime=parent.mtime,
            uri=parent.uri,
            project=parent.project,
            prearchive=parent.prearchive,
            ref=Generated(what, parent),
        )

    # ------------------------------------------------------------------ bytes
    def open(self, node: NodeInfo, path: str) -> Opened:
        ref = node.ref
        if not isinstance(ref, Generated):
            return Opened(key=self._file_key(node))
        if ref.what is Gen.ZIP:
            assert ref.parent is not None, "a zip node is made with the folder it zips"
            folder = split_path(path)[:-1] if path else None
            return Opened(
                key=zip_key(ref.parent, self.zip_version(folder, ref.parent), self.source),
                direct_io=True,
            )
        return Opened(data=self._make(ref), direct_io=True)

    def zip_version(self, parts: Optional[PathParts], parent: NodeInfo) -> str:
        """What XNAT's zip of folder ``parent`` (at ``parts``) holds now, as a digest of the
        listings below it: every name, and every file's URI, size, MD5 and time (an
        experiment's zip is of its scans only, §3.3).

        Why: the zip was keyed on the folder's time, which XNAT does not change when a file is
        added to a resource (a resource's time is its parent row's, and a row's
        ``last_modified`` is the row's, §1.2): the first zip made was served for ever.  Keyed
        on what the mount lists, a changed listing is a new key (a new zip, fetched once), the
        same listing the zip already cached, never refetched; the listings are the engine's
        (``listed``), so a zip is never older than what ``ls`` of its folder shows, and a
        listing TTL or ``xnatfs refresh`` of the folder (or of any folder below it) renews it.
        Costs what listing the folder's tree costs, as ``find`` of it would (a resource: its
        one files listing; a scan or an experiment: its experiment's tables, B4, else one
        listing per folder), a digest of the names held, and nothing more while those
        listings are fresh; no open or read of any other file does any of it.  ``parts``
        None (no path): the listings are loaded, not kept."""
        digest = hashlib.sha256()
        if parent.kind is Kind.EXPERIMENT:
            scans = fixed_listing(parent, (("scans", Kind.SCANS),)).children["scans"]
            self._fold_listed(None if parts is None else parts + ("scans",), scans, digest)
        else:
            self._fold_listed(parts, parent, digest)
        return digest.hexdigest()

    def _fold_listed(
        self, parts: Optional[PathParts], node: NodeInfo, digest: "hashlib._Hash"
    ) -> None:
        """Add to ``digest`` what is listed below folder ``node`` at ``parts``; a resource's
        files as their one ``FileTree.version``."""
        children = self.children(parts or (), node)
        if isinstance(children, Fixed):
            listing = children.listing
        else:
            value = children.load() if parts is None else self.listed(children.key, children.load)
            if isinstance(value, FileTree):
                digest.update(value.version)
                return
            listing = children.select(value)
        for name in sorted(listing.children):
            child = listing.children[name]
            attrs = sorted(child.attrs.items())
            digest.update(
                json.dumps([name, child.is_dir, attrs, child.size, child.digest]).encode()
            )
            if child.is_dir:
                self._fold_listed(None if parts is None else parts + (name,), child, digest)

    def _make(self, ref: Generated) -> bytes:
        what, parent = ref.what, ref.parent
        if what is Gen.STATS:
            return (json.dumps(self._stats_fn(), indent=2, sort_keys=True) + "\n").encode()
        if what is Gen.METRICS:
            return metrics.prometheus(self._stats_fn()).encode()
        if what is Gen.JSON and parent is not None:
            if parent.kind in (Kind.RESOURCE, Kind.PRE_SESSION) or parent.prearchive:
                doc: Any = dict(getattr(parent.record, "fields", {}) or {})
            else:
                doc = self.client.get_object(parent.uri)
            # within a size cap: indenting makes a deep document's text huge (jsondoc.py)
            return dumps_bounded(doc, f"{parent.uri}: {JSON_NAME}")
        raise OSError(errno.EIO, f"unknown generated file {what}")

    def content_key(self, node: NodeInfo) -> Optional[ContentKey]:
        if node.kind is not Kind.FILE or self.refusal(node):
            return None
        return self._file_key(node)

    def _file_key(self, node: NodeInfo) -> ContentKey:
        # With a digest, (uri, size, digest) identifies the bytes; the mtime we show for files is
        # the parent object's, which changes whenever anything in it changes, so it would only
        # cause needless downloads.  Without a digest (checksums off, §1.8) the mtime is all
        # we have to notice a change, and the server is part of the key (``ContentKey.origin``).
        if node.digest:
            return _content_key(node.uri, node.size, node.digest, None, "")
        return _content_key(node.uri, node.size, "", node.mtime, self.source)

    def refusal(self, node: NodeInfo) -> str:
        """A listing row refused by the client (a size outside 0..2^63-1, a URI leaving
        ``/data/``, issue 17 §8) carries its ``problem``."""
        if node.kind is not Kind.FILE:
            return ""
        return getattr(node.record, "problem", "") or ""

    # ------------------------------------------------------------------ attributes
    def mtime_ns(self, node: NodeInfo) -> int:
        """For a file on XNAT the mtime set on this mount for these bytes (``cache.times``),
        else XNAT's."""
        if node.kind is Kind.FILE and self.times is not None and node.uri:
            kept = self.times.get(
                node.uri, node.size, node.digest, getattr(node.record, "mtime", None) or 0.0
            )
            if kept is not None:
                return kept
        return int(node.mtime * 1e9)

    def writable(self, node: NodeInfo) -> bool:
        """Can something be made in this directory, or this file be written (modes,
        docs/LAYOUT.md §1.2)?"""
        if node.is_dir:
            return node.kind in WRITABLE_DIRS and (
                not node.prearchive or node.kind is Kind.PRE_PROJECT
            )
        return node.kind is Kind.FILE and not node.prearchive

    def cacheable(self, node: NodeInfo) -> bool:
        """Only XNAT's own files, whose content is fixed by (uri, size, digest)."""
        return node.kind is Kind.FILE

    def attributes(self, node: NodeInfo) -> Dict[str, str]:
        """The listing's fields; a prearchive session's status read fresh (the engine adds
        ``cache_state``)."""
        attrs = {k: v for k, v in node.attrs.items() if v}
        if node.kind is Kind.PRE_SESSION and node.uri:
            # queued builds and moves change the status well within a listing's TTL (§7.3):
            # read it fresh; on failure the listing's value stands
            try:
                fresh = self.client.get_prearchive(node.uri)
            except XnatError as exc:
                log.debug("status of %s: %s", node.uri, exc)
                fresh = None
            if fresh is not None and fresh.status:
                attrs["status"] = fresh.status
        return attrs


def fixed_listing(node: NodeInfo, fixed: Any) -> Listing:
    listing = Listing()
    for name, kind in fixed:
        listing.children[name] = NodeInfo(
            name=name,
            kind=kind,
            is_dir=True,
            mtime=node.mtime,
            uri=node.uri,
            project=node.project,
            subject=node.subject,
            prearchive=node.prearchive,
        )
    return listing


def _folder(subpath: PathParts, parts: PathParts, tree: FileTree) -> Listing:
    listing = tree.folders.get(subpath)
    if listing is None:
        raise OSError(errno.ENOENT, "folder vanished from the resource", "/".join(parts))
    return listing


def zip_key(parent: NodeInfo, version: str, origin: str) -> ContentKey:
    """XNAT's zip of an experiment's scans, a scan or a resource (§3.3), as it is when what it
    holds is ``version`` (``XnatLayout.zip_version``), made by the server ``origin`` (each
    server frames its zips its own way: no digest says the bytes are the same)."""
    uri = parent.uri + ("/scans/ALL" if parent.kind is Kind.EXPERIMENT else "")
    return ContentKey.archive(uri, mtime=version, origin=origin)


def _load_uncached(key: PathParts, load: Callable[[], Any]) -> Any:
    """``XnatLayout.listed`` of a layout outside a tree: every listing is a request."""
    return load()


@functools.lru_cache(maxsize=65536)
def _content_key(
    uri: str, size: int, digest: str, mtime: Optional[float], origin: str
) -> ContentKey:
    """One ContentKey object per file version, so its hexname (json + sha256) is computed once
    and not on every open, prefetch check and xattr read.

    The listed MD5 rides on the download URL as ``xnatfs_md5=``, a parameter XNAT does not read
    (docs/XNAT-API.md §1.2, §3.1), so that a shared cache proxy (``xnatfs cache-proxy``,
    docs/SCALING.md) keys on it: a file changed on XNAT has a new URL and never an old entry."""
    if digest and _HEX.fullmatch(digest):
        uri += ("&" if "?" in uri else "?") + DIGEST_PARAM + "=" + digest.lower()
    return ContentKey(uri=uri, size=size, digest=digest, mtime=mtime, origin=origin)


def uncached_uri(uri: str) -> str:
    """``uri`` without the digest ``_content_key`` put on it: a cache proxy passes such a
    request through to XNAT, uncached (a file streamed past the mount's cache, whose bytes are
    served before their verdict, must be XNAT's; docs/SCALING.md).  XNAT reads neither."""
    return _DIGEST_AT_END.sub("", uri)


#: the download URL parameter that carries the listed MD5 (the cache proxy's key)
DIGEST_PARAM = "xnatfs_md5"
_HEX = re.compile(r"[0-9a-fA-F]{32}")
_DIGEST_AT_END = re.compile(r"[?&]" + DIGEST_PARAM + r"=[0-9a-f]{32}\Z")
