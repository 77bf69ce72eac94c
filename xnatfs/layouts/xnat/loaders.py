"""One loader per listed kind: each makes the one request that lists a directory
(docs/LAYOUT.md §1.1).

``LOADERS`` maps a ``Kind`` to its loader; a loader takes the layout's ``Source`` (the client,
the mount's epoch) and the directory node, and returns a ``Listing``.  The prearchive has its own
listing endpoints for scans, resources and files (docs/XNAT-API.md §7.2): ``ENDPOINTS`` picks
them by ``node.prearchive``, so no loader branches on it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from xnatfs.layouts.xnat.kinds import CONTROL_NAME, PREARCHIVE_NAME, Gen, Kind, Timestamp
from xnatfs.view.layout import Listing
from xnatfs.view.node import Generated, NodeInfo, Record
from xnatfs.view.paths import escape_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    """The client methods that list one object's children: the archive's or the prearchive's
    (§7.2).  ``catalog_times``: the resource has a catalog with per-file times (issue 15 §1)."""

    scans: str
    resources: str
    files: str
    catalog_times: bool


#: prearchive? -> the endpoints (the twins of ``xnat/client.py``)
ENDPOINTS: Mapping[bool, Endpoints] = {
    False: Endpoints("list_scans", "list_resources", "list_files", catalog_times=True),
    True: Endpoints(
        "list_prearchive_scans",
        "list_prearchive_resources",
        "list_prearchive_files",
        catalog_times=False,
    ),
}


@dataclass
class Source:
    """What the loaders need from the layout."""

    client: Any
    #: mtime shown when XNAT gives none (the mount's start)
    epoch: float
    #: read per-file times from each resource's catalog (``--catalog-times``)
    catalog_times: bool = False

    def endpoint(self, node: NodeInfo, which: str) -> Callable[..., Any]:
        """The client method listing ``which`` (scans, resources, files) below ``node``."""
        return getattr(self.client, getattr(ENDPOINTS[node.prearchive], which))


@dataclass
class FileTree:
    """One resource's files listing (a single request, §1.8) as nested folders:
    sub-folder path -> Listing."""

    folders: Dict[Tuple[str, ...], Listing] = field(default_factory=dict)

    @functools.cached_property
    def version(self) -> bytes:
        """A digest of every file listed (path, URI, size, MD5, time): what XNAT's zip of the
        resource holds, so its cache key (``layout.zip_key``).  Computed once per listing
        (the engine keeps this object for a listing TTL); two threads may both compute it."""
        digest = hashlib.sha256()
        for sub in sorted(self.folders):
            children = self.folders[sub].children
            for name in sorted(children):
                child = children[name]
                if not child.is_dir:
                    row = [child.subpath, child.uri, child.size, child.digest, child.mtime]
                    digest.update(json.dumps(row).encode())
        return digest.digest()


def _attrs(**values: Optional[str]) -> Dict[str, str]:
    return {k: str(v) for k, v in values.items() if v}


def _add(listing: Listing, child: NodeInfo, *aliases: str) -> None:
    listing.add(child, *(escape_name(a) for a in aliases if a))


def _record_node(
    node: NodeInfo,
    rec: Any,
    kind: Kind,
    name: str,
    attrs: Dict[str, str],
    mtime: Optional[float] = None,
    subject: Optional[str] = None,
) -> NodeInfo:
    """The directory of one XNAT record ``rec`` listed under ``node``: it keeps the node's
    project, subject and prearchive flag, and shows the record's time (else the node's)."""
    return NodeInfo(
        name=escape_name(name),
        kind=kind,
        is_dir=True,
        mtime=(rec.mtime or node.mtime) if mtime is None else mtime,
        uri=rec.uri,
        project=node.project,
        subject=node.subject if subject is None else subject,
        prearchive=node.prearchive,
        ref=Record(rec),
        attrs=attrs,
    )


def load_root(src: Source, node: NodeInfo) -> Listing:
    listing = Listing()
    for p in src.client.list_projects():
        _add(
            listing,
            NodeInfo(
                name=escape_name(p.id),
                kind=Kind.PROJECT,
                is_dir=True,
                mtime=p.mtime or src.epoch,
                uri=p.uri,
                project=p.id,
                ref=Record(p),
                attrs=_attrs(
                    id=p.id, label=p.id, uri=p.uri, xsi_type="xnat:projectData", name=p.name
                ),
            ),
        )
    _add(
        listing,
        NodeInfo(
            name=PREARCHIVE_NAME,
            kind=Kind.PREARCHIVE,
            is_dir=True,
            mtime=src.epoch,
            prearchive=True,
        ),
    )
    _add(listing, control_node(src.epoch))
    return listing


def control_node(epoch: float) -> NodeInfo:
    """``MNT/.xnatfs``: answers without the root listing (stats must answer while XNAT does
    not)."""
    return NodeInfo(name=CONTROL_NAME, kind=Kind.CONTROL, is_dir=True, mtime=epoch, private=True)


def control_listing(epoch: float) -> Listing:
    """``stats`` and ``metrics``, made at each open (size 0, direct I/O)."""
    listing = Listing()
    for what in (Gen.STATS, Gen.METRICS):
        listing.add(
            NodeInfo(
                name=what.value,
                kind=Kind.VIRTUAL,
                is_dir=False,
                mtime=epoch,
                ref=Generated(what, None, sized=False),
                # the cache directory, upload paths and their last errors, what the owner's
                # programs do: not for the other users an allow_other mount lets in
                private=True,
            )
        )
    return listing


def load_subjects(src: Source, node: NodeInfo) -> Listing:
    listing = Listing()
    for s in src.client.list_subjects(node.project):
        _add(
            listing,
            _record_node(
                node,
                s,
                Kind.SUBJECT,
                s.label or s.id,
                _attrs(
                    id=s.id,
                    label=s.label,
                    uri=s.uri,
                    project=s.project,
                    xsi_type="xnat:subjectData",
                ),
                subject=s.id,
            ),
            s.id,
        )
    return listing


def load_experiments(src: Source, node: NodeInfo) -> Listing:
    listing = Listing()
    for e in src.client.list_experiments(node.project, node.subject):
        _add(
            listing,
            _record_node(
                node,
                e,
                Kind.EXPERIMENT,
                e.label or e.id,
                _attrs(
                    id=e.id,
                    label=e.label,
                    uri=e.uri,
                    project=e.project,
                    xsi_type=e.xsi_type,
                    date=e.date,
                ),
            ),
            e.id,
        )
    return listing


def load_scans(src: Source, node: NodeInfo) -> Listing:
    listing = Listing()
    for s in src.endpoint(node, "scans")(node.uri):
        _add(
            listing,
            _record_node(
                node,
                s,
                Kind.SCAN,
                s.id,
                _attrs(
                    id=s.id,
                    label=s.id,
                    uri=s.uri,
                    xsi_type=s.xsi_type,
                    scan_type=s.type,
                    quality=s.quality,
                    series_description=s.series_description,
                ),
            ),
        )
    return listing


def load_assessors(src: Source, node: NodeInfo) -> Listing:
    listing = Listing()
    for a in src.client.list_assessors(node.uri):
        _add(
            listing,
            _record_node(
                node,
                a,
                Kind.ASSESSOR,
                a.label or a.id,
                _attrs(id=a.id, label=a.label, uri=a.uri, xsi_type=a.xsi_type),
            ),
            a.id,
        )
    return listing


def load_resources(
    src: Source, node: NodeInfo, rows: Optional[Callable[[], Any]] = None
) -> Listing:
    """``rows``: where the resources come from instead of the node's own listing (an
    experiment's ``resources?all=true``, ``bundle.ExperimentBundles``)."""
    listing = Listing()
    for r in (rows or functools.partial(src.endpoint(node, "resources"), node.uri))():
        _add(
            listing,
            _record_node(
                node,
                r,
                Kind.RESOURCE,
                r.label or r.id,
                _attrs(
                    id=r.id,
                    label=r.label,
                    uri=r.uri,
                    xsi_type="xnat:resourceCatalog",
                    format=r.format,
                    content=r.content,
                    tags=r.tags,
                ),
                mtime=node.mtime,  # a resource row has no time of its own
            ),
            r.id,
        )
    return listing


def load_prearchive(src: Source, node: NodeInfo) -> Listing:
    """Every project the user can see (an archive written into .prearchive/P is imported
    there), plus any other project that has sessions waiting."""
    listing = Listing()
    projects = [p.id for p in src.client.list_projects()]
    projects += [s.project for s in src.client.list_prearchive()]
    for project in dict.fromkeys(projects):
        _add(
            listing,
            NodeInfo(
                name=escape_name(project),
                kind=Kind.PRE_PROJECT,
                is_dir=True,
                mtime=src.epoch,
                project=project,
                prearchive=True,
            ),
        )
    return listing


def load_pre_project(src: Source, node: NodeInfo) -> Listing:
    listing = Listing()
    for s in src.client.list_prearchive(node.project):
        name = escape_name(s.timestamp)
        if name not in listing.children:
            _add(
                listing,
                NodeInfo(
                    name=name,
                    kind=Kind.PRE_TIMESTAMP,
                    is_dir=True,
                    mtime=s.mtime or src.epoch,
                    project=node.project,
                    prearchive=True,
                    ref=Timestamp(s.timestamp),
                ),
            )
    return listing


def load_pre_timestamp(src: Source, node: NodeInfo) -> Listing:
    listing = Listing()
    stamp = node.ref.value if isinstance(node.ref, Timestamp) else None
    for s in src.client.list_prearchive(node.project):
        if s.timestamp == stamp:
            _add(
                listing,
                _record_node(
                    node,  # a PRE_TIMESTAMP: prearchive, no subject
                    s,
                    Kind.PRE_SESSION,
                    s.folder_name or s.name,
                    _attrs(
                        label=s.name,
                        uri=s.uri,
                        status=s.status,
                        subject=s.subject,
                        timestamp=s.timestamp,
                    ),
                    mtime=s.mtime or src.epoch,
                    subject="",
                ),
            )
    return listing


#: listed kind -> its loader (one request; FILES is ``load_files``, a tree of listings)
LOADERS: Mapping[Kind, Callable[[Source, NodeInfo], Listing]] = {
    Kind.ROOT: load_root,
    Kind.SUBJECTS: load_subjects,
    Kind.EXPERIMENTS: load_experiments,
    Kind.SCANS: load_scans,
    Kind.ASSESSORS: load_assessors,
    Kind.RESOURCES: load_resources,
    Kind.PREARCHIVE: load_prearchive,
    Kind.PRE_PROJECT: load_pre_project,
    Kind.PRE_TIMESTAMP: load_pre_timestamp,
}


def load_listing(src: Source, node: NodeInfo) -> Listing:
    # ``kind`` is Hashable to the engine; this layout's nodes carry a Kind
    loader = LOADERS.get(node.kind) if isinstance(node.kind, Kind) else None
    if loader is None:  # pragma: no cover - every listed kind has a loader
        raise OSError(errno.EIO, f"cannot list a {node.kind}", node.name)
    return loader(src, node)


def load_files(src: Source, node: NodeInfo, rows: Optional[Callable[[], Any]] = None) -> FileTree:
    """All files of one resource in one request, folded into sub-folders (§1.8).  ``rows``:
    where the entries come from instead of the resource's own listing (an experiment's
    ``scans/ALL/files``, ``bundle.ExperimentBundles``)."""
    entries = (rows or functools.partial(src.endpoint(node, "files"), node.uri))()
    endpoints = ENDPOINTS[node.prearchive]
    times = catalog_times(src, node) if src.catalog_times and endpoints.catalog_times else {}
    tree = FileTree()
    tree.folders[()] = Listing()
    for entry in entries:
        parts = tuple(escape_name(p) for p in entry.path.split("/") if p)
        if not parts:
            continue
        for depth in range(1, len(parts)):
            folder, name = parts[: depth - 1], parts[depth - 1]
            sub = parts[:depth]
            if sub not in tree.folders:
                tree.folders[sub] = Listing()
                tree.folders.setdefault(folder, Listing()).children[name] = NodeInfo(
                    name=name,
                    kind=Kind.FILES,
                    is_dir=True,
                    mtime=node.mtime,
                    uri=node.uri,
                    project=node.project,
                    subject=node.subject,
                    subpath=sub,
                    prearchive=node.prearchive,
                )
        folder = parts[:-1]
        tree.folders.setdefault(folder, Listing()).children[parts[-1]] = NodeInfo(
            name=parts[-1],
            kind=Kind.FILE,
            is_dir=False,
            size=entry.size,
            mtime=entry.mtime or times.get(entry.path) or node.mtime,
            uri=entry.uri,
            project=node.project,
            subject=node.subject,
            subpath=parts,
            digest=entry.digest,
            prearchive=node.prearchive,
            ref=Record(entry),
            attrs=_attrs(
                uri=entry.uri,
                digest=entry.digest,
                format=entry.format,
                content=entry.content,
                tags=entry.tags,
                resource=entry.collection,
            ),
        )
    return tree


def catalog_times(src: Source, node: NodeInfo) -> Dict[str, float]:
    """Per-file times from the resource's catalog (``--catalog-times``, issue 15 §1): one
    more request per resource listing, none per file.  A server that cannot answer costs
    only the times (the object's time is shown), never the listing."""
    try:
        return src.client.catalog_times(node.uri)
    except Exception as exc:  # noqa: BLE001 - times are a nicety; the listing stands
        log.info(
            "catalog times of %s unavailable (%s): files show the object's time", node.uri, exc
        )
        return {}
