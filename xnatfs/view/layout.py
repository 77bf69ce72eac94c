"""The interfaces of the view engine: what a layout, the overlay and a read-ahead policy are.

A **layout** is one class (subclass :class:`BaseLayout`, or satisfy the :class:`Layout`
protocol) that turns *relative* path parts into nodes.  The engine owns everything else: path
splitting, the node cache, listing caches and their last-good fallback, deadlines, the overlay
of local files, generated-file sizes and read handles.  A layout mounted under a top-level name
(``Engine(main, meta, content, mounts={".bids": BidsLayout(...)})``) sees the paths below that
name: for ``MNT/.bids/P/sub-01`` the BIDS layout gets ``parts == ("P", "sub-01")``.

Contract every layout keeps (the engine relies on it):

- ``children()`` and ``lookup()`` make **no request**; the only place a request is made while
  resolving a path is a ``Loaded.load`` the engine calls (once per cache key and TTL, single
  flight, under the caller's deadline, last-good fallback when the source is slow or down).
- errors are ``OSError`` with an errno (ENOENT for "no such name" is the engine's own when a
  name is missing from a listing) or the source's exceptions; ``xnatfs.fs.errmap`` maps both.
  An exception with ``retryable = True`` (or a ``TimeoutError``) from ``Loaded.load`` is
  *transient*: the listing seen before is shown instead; any other forgets it.
- nodes are immutable (``NodeInfo`` is frozen); the engine may keep a node for a listing TTL.
- thread safety: every method may be called from many FUSE threads at once.

Wiring (``xnatfs/runtime.py``; one line per extra layout)::

    engine = Engine(XnatLayout(client, ...), meta, content, fs_timeout=o.fs_timeout,
                    policies=[...])
    engine.mount(".bids", BidsLayout(client, content, ...))   # before the first lookup

A mounted layout's root is listed in the main root under its name, its paths are read-only
(``Engine.read_only(path)``: writes there are EROFS), the overlay never applies to it, and every
node ``Engine.lookup`` returns from it has ``mount == ".bids"``.  Its listing cache keys are
prefixed with the mount name, so ``Engine.invalidate("/.bids/P")`` works as for any path.
What the engine does per call, for a path below a layout:

- ``lookup``: node cache hit (kept as long as the listing, keyed under the path) -> done; else
  resolve the parent, then ``layout.lookup(parent_parts, parent, name)``, then the parent's
  listing (``children`` -> ``Fixed``/``Loaded``), then its aliases; missing -> ENOENT without a
  request when the listing is fresh.  ``layout.refusal(node)`` non-empty -> EIO.  A
  ``Generated(sized=True)`` node is sized (see ``node.Generated``).
- ``listdir``/``readdir``: the listing's children (plus the overlay's; plus mount names at
  the root), then the policies' ``on_readdir``.
- ``open``: directory -> EISDIR; overlay file -> the overlay's handle; else
  ``layout.open(node, path)``, then the policies' ``on_open`` (source files only).
- ``xattrs``/``mtime_ns``/``cacheable``/``writable``: the node's layout's methods (overlay files
  answered by the overlay where it knows better); ``cache_state``: from ``content_key``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Protocol,
    Tuple,
    Union,
    runtime_checkable,
)

from xnatfs.cache.content import ContentKey
from xnatfs.view.node import NodeInfo
from xnatfs.view.paths import PathParts


@dataclass
class Listing:
    """A directory's children by file name, plus other names that resolve to the same child
    (XNAT: accession IDs of subjects and experiments listed by label, §0.1).  Alias names are
    not listed by readdir; they resolve on lookup."""

    children: Dict[str, NodeInfo] = field(default_factory=dict)
    aliases: Dict[str, str] = field(default_factory=dict)
    _sorted: Optional[List[str]] = field(default=None, repr=False)
    _positions: Optional[Dict[str, int]] = field(default=None, repr=False)

    def add(self, child: NodeInfo, *aliases: str) -> None:
        """Add ``child`` and the other names (already escaped) that resolve to it."""
        self.children[child.name] = child
        for alias in aliases:
            if alias and alias != child.name:
                self.aliases.setdefault(alias, child.name)

    def sorted_files(self) -> List[str]:
        """Names of the files (not folders), sorted; computed once per listing."""
        if self._sorted is None:
            self._sorted = sorted(n for n, c in self.children.items() if not c.is_dir)
        return self._sorted

    def position(self, name: str) -> int:
        """Index of ``name`` in :meth:`sorted_files`, -1 if it is not a file here."""
        if self._positions is None:
            self._positions = {n: i for i, n in enumerate(self.sorted_files())}
        return self._positions.get(name, -1)


@dataclass(frozen=True)
class Fixed:
    """Children known without any request (XNAT: a project's ``subjects``/``resources``).
    Walk-ahead looks through such folders to the listings below them."""

    listing: Listing


def _whole(value: Any) -> Listing:
    return value


@dataclass(frozen=True)
class Loaded:
    """Children that cost one request, cached by the engine.

    ``key``: the cache key, as path parts *relative to the layout's root* (the engine prefixes
    the mount); usually the directory's own parts.  Several directories may share one key: a
    XNAT resource's whole ``files/`` tree is ONE request, and each sub-folder is a view of it —
    its descriptor has the resource's ``files`` parts as key, the same ``load`` and a ``select``
    that picks the sub-folder.  ``invalidate(path)`` drops every key at or below ``path`` and
    the key of its parent, so a key must be a prefix of (or equal to) the paths it serves.

    ``load()``: makes the request(s) and returns the cached value (any object; a ``Listing``
    when ``select`` is the default).  Runs on a FUSE thread or a background refresh thread,
    under the deadline of the call that needed it.

    ``select(value)``: the ``Listing`` of this directory from the cached value; raise
    ``OSError(ENOENT)`` if it is not there (a sub-folder gone from a newer listing).  Must be
    cheap and make no request.
    """

    key: PathParts
    load: Callable[[], Any]
    select: Callable[[Any], Listing] = _whole


Children = Union[Fixed, Loaded]


@dataclass(frozen=True)
class Opened:
    """What ``Layout.open`` gives: exactly one of ``data`` (the bytes, for a generated
    document), ``key`` (read through the content cache: downloaded once, kept, verified) or
    ``handle`` (an object with ``read(offset, size, deadline) -> bytes``,
    ``span(offset, size, deadline) -> (fd, n) | bytes`` and ``close()``, like
    ``cache.content.ContentHandle``; deadlines are ``time.monotonic()`` values).

    ``direct_io``: the kernel must not trust the size stat gave nor keep pages (a generated
    file, a file whose true size is known only after a conversion).  Nodes with a ``Generated``
    ref are always served with direct I/O.
    """

    data: Optional[bytes] = None
    key: Optional[ContentKey] = None
    handle: Any = None
    direct_io: bool = False


@runtime_checkable
class Layout(Protocol):
    """A hierarchy shown as directories and files.  ``parts`` are relative to the layout's
    root (the mount point for the main layout, ``MNT/<name>`` for one mounted under a name)."""

    #: what log lines name when the source is slow or answers again (XNAT: its base URL)
    source: str

    def root(self) -> NodeInfo:
        """The root directory node (``is_dir=True``).  Under a mount the engine renames it to
        the mount name.  Called often: return a stored node."""

    def children(self, parts: PathParts, node: NodeInfo) -> Children:
        """How to list directory ``node`` at ``parts``: ``Fixed`` or ``Loaded``.  No request
        here (see the module docstring).  Never called for nodes with a ``Local`` ref."""

    def lookup(self, parts: PathParts, parent: NodeInfo, name: str) -> Optional[NodeInfo]:
        """A name that resolves without the parent's listing (unlisted names such as XNAT's
        ``.xnat.json`` and ``.zip``, or a control folder that must answer while the source
        does not), else None and the engine looks ``name`` up in the listing.  ``parts`` is
        the parent's path; ``parent`` is a directory.  No request here: a generated file that
        needs one to be sized gets a ``Generated(sized=True)`` ref and the engine sizes it."""

    def open(self, node: NodeInfo, path: str) -> Opened:
        """The bytes of file ``node`` (never a directory, never an overlay file).  Must not wait
        for the network: downloads start in the background (return ``key``).  ``path`` is the
        full mount path, for error messages."""

    def content_key(self, node: NodeInfo) -> Optional[ContentKey]:
        """The content-cache key of a file served through the cache (for ``cache_state``,
        prefetch, bulk zips); None for anything else."""

    def refusal(self, node: NodeInfo) -> str:
        """Why ``node`` may not be used (a listing row the source gave that was refused: a
        size outside 0..2^63-1, a URI leaving ``/data/``, issue 17 §8), "" if it may.  The
        engine answers EIO with this reason on lookup."""

    def attributes(self, node: NodeInfo) -> Dict[str, str]:
        """Extended attributes, names without the ``user.xnat.`` prefix.  May make one bounded
        request (XNAT: a prearchive session's fresh status); the engine runs it under the
        call's deadline, and adds ``cache_state`` (cached / downloading / absent) for files
        with a ``content_key`` when the layout gave none."""

    def mtime_ns(self, node: NodeInfo) -> int:
        """The mtime stat shows, in nanoseconds (overlay files are answered by the overlay)."""

    def cacheable(self, node: NodeInfo) -> bool:
        """May the kernel keep this file's pages across opens?  Only for bytes fixed by their
        content key; the engine already answers False for overlay files."""

    def writable(self, node: NodeInfo) -> bool:
        """Can something be made in this directory, or this file be written?"""

    def close(self) -> None:
        """Stop whatever the layout started (pools, converters).  Called once, at unmount."""


class BaseLayout:
    """Defaults for a read-only layout: a subclass needs only ``root``, ``children`` and
    ``open`` (``tests/mount/toy_layout.py`` is a whole layout in ~80 lines)."""

    source = "the source"
    #: a view of the main layout's projects, each at a top-level folder named as in the main
    #: layout (the BIDS view's ``.bids/P``): a refresh of the main layout's ``P/...``
    #: reaches that folder too (``Engine.following``)
    follows_projects = False

    def root(self) -> NodeInfo:  # pragma: no cover - every layout has its own
        raise NotImplementedError

    def children(self, parts: PathParts, node: NodeInfo) -> Children:  # pragma: no cover
        raise NotImplementedError

    def lookup(self, parts: PathParts, parent: NodeInfo, name: str) -> Optional[NodeInfo]:
        return None

    def open(self, node: NodeInfo, path: str) -> Opened:  # pragma: no cover
        raise NotImplementedError

    def content_key(self, node: NodeInfo) -> Optional[ContentKey]:
        return None

    def refusal(self, node: NodeInfo) -> str:
        return ""

    def attributes(self, node: NodeInfo) -> Dict[str, str]:
        return {k: v for k, v in node.attrs.items() if v}

    def mtime_ns(self, node: NodeInfo) -> int:
        return int(node.mtime * 1e9)

    def cacheable(self, node: NodeInfo) -> bool:
        return False

    def writable(self, node: NodeInfo) -> bool:
        return False

    def close(self) -> None:
        return None


@runtime_checkable
class Overlay(Protocol):
    """What the user wrote that the source does not show yet (``tree.writes.Writer``),
    registered with ``Engine.attach_overlay``.  Applies to the main layout only (mounted
    layouts are read-only).  ``parts`` are mount paths."""

    def node(self, parts: PathParts) -> Optional[NodeInfo]:
        """The local file or folder at ``parts``, shown in place of the source's, else None."""

    def dir_node(self, parts: PathParts) -> Optional[NodeInfo]:
        """A local folder at ``parts`` that the source's listing lacks, else None."""

    def children(self, parts: PathParts) -> Iterable[NodeInfo]:
        """Local files and folders directly in ``parts`` (merged into the listing)."""

    def owns(self, node: NodeInfo) -> bool:
        """Is ``node`` one of the overlay's (``Local`` ref with a file)?"""

    def local_read_handle(self, node: NodeInfo) -> Any:
        """A read handle (``read``/``span``/``close``) on a file the overlay owns."""

    def mtime_ns(self, node: NodeInfo) -> int:
        """The mtime of a file the overlay owns, in nanoseconds."""


class View(Protocol):
    """The part of the engine a policy may use.  ``parts`` are mount paths."""

    #: the content cache (``cache.content.ContentCache``)
    content: Any
    #: the metadata cache (``cache.meta.MetaCache``)
    meta: Any

    def node(self, parts: PathParts) -> NodeInfo:
        """The node at ``parts`` (as ``lookup``, without a new deadline scope)."""

    def layout_of(self, parts: PathParts) -> Tuple[Layout, PathParts]:
        """The layout serving ``parts`` and the mount prefix it lives under."""

    def descriptor(self, parts: PathParts, node: NodeInfo) -> Optional[Children]:
        """How directory ``node`` is listed, with a ``Loaded`` key made absolute; None for a
        local (overlay) folder."""

    def listing(self, parts: PathParts, node: NodeInfo) -> Listing:
        """The source's listing of directory ``node`` (cached; may make its one request)."""

    def cached(self, key: PathParts, load: Callable[[], Any]) -> Any:
        """The cached value at absolute ``key``, loading it with ``load`` if needed."""

    def content_key(self, node: NodeInfo) -> Optional[ContentKey]:
        """The node's layout's content key."""


class Policy(Protocol):
    """A read-ahead policy (``xnatfs.policies``): its own state and its own lock, never held
    while it calls the engine.  Hooks run on FUSE threads after the call's answer is known and
    must return quickly (queue work on a pool of their own or on the content cache)."""

    #: asked at the open of a file already verified in the cache too: True for a policy with
    #: work left then (prefetch pages the next cached files in from disk), False for one that
    #: only starts downloads (a hit says nothing about those; the next uncached open of the
    #: folder decides).  Skipping the others was ~12 % of the daemon's time per warm open
    #: (benchmarks/RESULTS.md "Warm opens")
    on_cached_opens: bool

    def on_readdir(self, view: View, parts: PathParts, children: List[NodeInfo]) -> None:
        """Directory ``parts`` was read (FUSE readdir) and had ``children``."""

    def on_open(self, view: View, parts: PathParts, node: NodeInfo) -> bool:
        """File ``node`` at ``parts`` of the source was opened (not generated, not local).
        True: this policy has the read-ahead in hand; later policies are not asked."""

    def close(self) -> None:
        """Drop queued work and stop threads (called once at unmount)."""
