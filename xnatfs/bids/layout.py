"""The BIDS layout: ``MNT/.bids/<PROJECT>/…`` as a BIDS dataset, for the view engine.

Paths below the mount name (``parts`` here)::

    P/                              one per project the user can see
    P/dataset_description.json      generated (true size at lookup; no request beyond the plan)
    P/README, participants.tsv, participants.json
    P/.xnatfs-unmatched.tsv         unlisted: the scans left out, and why
    P/sub-X/[ses-Y/]<datatype>/<stem>.nii.gz|.json[|.bval|.bvec]

Listing costs (the engine caches each like any listing): the root is one ``projects`` request;
a project folder loads the project's *plan* (``source.Source.plan``) and every ``sub-``/``ses-``
folder below it is a view of that one cached value; a datatype folder lists each of its scans'
resources and files.  So ``ls -l``/``find``/``du`` download no DICOM and run no conversion.

Bytes (``open``): a NIfTI resource already on the scan is served as it is, through the content
cache like any XNAT file.  Otherwise the image is a member of the scan's conversion bundle
(``convert``) in the BIDS content cache, converted on first read; the sidecar is made from one
DICOM header (merged with dcm2niix's own once the scan is converted).

Multi-image series (docs/BIDS.md): a scan not converted yet shows one image, under the scan's
name; once its bundle is in the cache, every image dcm2niix made shows under the name
``images.bids_images`` gives it (``magnitude1``, ``phasediff``, ``echo-2``…).  A file's
``BidsFile.image`` names its dcm2niix image; "" (the scan's own name, listed before the
conversion) reads the scan's main image, found once converted.  A field map's sidecar gets
``IntendedFor`` (:meth:`BidsLayout.intended_for`), made on read: it lists other scans.

Sizes before conversion (docs/BIDS.md): a converted image whose bundle is not in the cache yet
shows the series' DICOM size (an upper bound: the gzipped image is smaller) and a sidecar not
yet made shows 4096; both are served with direct I/O, so every reader gets the whole file up
to its true end whatever stat said, and stat shows the true size at the first listing refresh
after it is known.  ``cp``, ``cat``, Python's ``read()``, nibabel and pybids read to EOF.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from xnatfs.bids import convert, dataset, images, sidecar
from xnatfs.bids.mapping import Dcm2BidsConfig, Mapper, unmatched_tsv
from xnatfs.bids.source import Plan, PlannedScan, ScanFiles, Source, parallel
from xnatfs.cache.content import ContentCache, ContentKey
from xnatfs.private import private_dir
from xnatfs.view.layout import BaseLayout, Children, Listing, Loaded, Opened, PathParts
from xnatfs.view.node import Generated, NodeInfo, Record, Ref
from xnatfs.view.paths import escape_name, unescape_name

log = logging.getLogger(__name__)

MOUNT_NAME = ".bids"
UNMATCHED_NAME = ".xnatfs-unmatched.tsv"
#: the size a sidecar shows before it is made (see the module docstring)
SIDECAR_SIZE_GUESS = 4096
_DOCS = ("dataset_description.json", "README", "participants.tsv", "participants.json")


class Kind(enum.Enum):
    ROOT = "bids-root"
    PROJECT = "bids-project"
    FOLDER = "bids-folder"  # sub-X, ses-Y
    DATATYPE = "bids-datatype"  # anat, func, dwi, fmap
    DOC = "bids-doc"  # dataset-level files
    FILE = "bids-file"  # image, sidecar, bval, bvec


@dataclass(frozen=True)
class BidsFile(Ref):
    """A file made from one scan: ``role`` is image / json / bval / bvec."""

    scan: PlannedScan
    files: ScanFiles
    role: str
    #: the conversion bundle's cache URI ("" when a NIfTI resource is served as is)
    bundle: str = ""
    #: dcm2niix's stem of the image this file is of (``5_e2_ph``); "" before the scan is
    #: converted: the scan's main image, found on read (``images.bids_images``)
    image: str = ""
    #: sidecar keys of this image dcm2niix does not write (``EchoTime1``/``EchoTime2``)
    extra: Tuple[Tuple[str, Any], ...] = ()

    @property
    def converted(self) -> bool:
        return bool(self.bundle)


@dataclass(frozen=True)
class _PlanView:
    """The cached value of a project folder: the plan and the listing of each folder in it."""

    plan: Plan
    listings: Mapping[Tuple[str, ...], Listing]


class BidsLayout(BaseLayout):
    """Read-only BIDS datasets of every project (mounted by the engine under ``.bids``)."""

    source = "XNAT (BIDS view)"
    follows_projects = True  # .bids/P is made from the XNAT side's P

    def __init__(
        self,
        client: Any,
        content: Any,
        cache_dir: str,
        *,
        cache_size: int,
        config_path: str = "",
        max_conversions: int = 2,
        conversion_timeout: float = 600.0,
        epoch: Optional[float] = None,
    ) -> None:
        config = Dcm2BidsConfig.load(config_path) if config_path else None
        self.src = Source(client, content, Mapper(config=config))
        self.source = getattr(client, "base_url", "XNAT") + " (BIDS view)"
        private_dir(cache_dir)  # ours and 0700, or refused (``xnatfs.private``)
        private_dir(os.path.join(cache_dir, "tmp"))
        self.converter = convert.Converter(
            max_running=max_conversions,
            timeout=conversion_timeout,
            tmp_dir=os.path.join(cache_dir, "tmp"),
            make_room=self._make_room,
        )
        #: conversion bundles, like downloads: single flight per key, LRU, kept across mounts
        self.bundles = ContentCache(
            os.path.join(cache_dir, "content"),
            size_limit=cache_size,
            fetch=self.converter.fetch,
            max_downloads=max(1, max_conversions) * 4,
        )
        self.bundles.start()
        self.epoch = time.time() if epoch is None else epoch
        self._root = NodeInfo(name="", kind=Kind.ROOT, is_dir=True, mtime=self.epoch)
        self._plans_lock = threading.Lock()
        #: project -> its last plan (for the unlisted report; the engine caches the listings)
        self._plans: Dict[str, Plan] = {}
        #: (bundle, scan name) -> its named images and index, once converted (bounded)
        self._named: Dict[
            Tuple[str, Any], Tuple[List[images.Named], Dict[str, Tuple[int, int]]]
        ] = {}

    def _make_room(self, path: str, need: int) -> int:
        """The converter's ``make_room``: a conversion met a full cache disk; the content
        cache (copies of XNAT's files) evicts, as for a user's write, and only when it had
        nothing to give the bundles (earlier conversions, dearer to make again) do
        (``ContentCache.make_room_for_write``: never an open or running entry)."""
        for cache in (self.src.content, getattr(self, "bundles", None)):
            make = getattr(cache, "make_room_for_write", None)
            evicted = int(make(path, need)) if make is not None else 0
            if evicted:
                return evicted
        return 0

    # ------------------------------------------------------------------ Layout
    def root(self) -> NodeInfo:
        return self._root

    def children(self, parts: PathParts, node: NodeInfo) -> Children:
        if node.kind is Kind.ROOT:
            return Loaded(key=(), load=self._load_projects)
        project = unescape_name(parts[0])
        if node.kind is Kind.DATATYPE:
            return Loaded(key=parts, load=lambda: self._load_datatype(parts, node))
        record = node.record if node.kind is Kind.PROJECT else None
        inner = tuple(parts[1:])

        def select(view: _PlanView) -> Listing:
            listing = view.listings.get(inner)
            if listing is None:
                raise OSError(errno.ENOENT, "no such folder in the BIDS dataset", "/".join(parts))
            return listing

        # keyed by the folder's name as shown (escaped), as every key is a path: under the raw
        # ID, a refresh of an escaped name (``a%2Fb``) missed the project's listing
        return Loaded(
            key=parts[:1], load=lambda: self._load_project(project, record), select=select
        )

    def lookup(self, parts: PathParts, parent: NodeInfo, name: str) -> Optional[NodeInfo]:
        if parent.kind is Kind.PROJECT and name == UNMATCHED_NAME:
            return NodeInfo(
                name=name,
                kind=Kind.DOC,
                is_dir=False,
                mtime=parent.mtime,
                project=parent.project,
                ref=Generated(what=("unmatched", parent.project), sized=True),
            )
        return None

    def open(self, node: NodeInfo, path: str) -> Opened:
        ref = node.ref
        if isinstance(ref, Generated):
            what: Any = ref.what  # ("doc", name, bytes) or ("unmatched", project)
            if what[0] == "doc":
                return Opened(data=what[2])
            if what[0] == "unmatched":
                return Opened(data=unmatched_tsv(self._plan_of(what[1]).unmatched))
        if not isinstance(ref, BidsFile):
            raise OSError(errno.EIO, "not a BIDS file", path)
        if ref.role == "json":
            return Opened(handle=_SidecarHandle(self, ref), direct_io=True)
        if not ref.converted:
            entry = (
                ref.files.nifti if ref.role == "image" else ref.files.companions.get("." + ref.role)
            )
            if entry is None:
                raise OSError(errno.EIO, f"{ref.role} missing from the scan's NIfTI resource", path)
            return Opened(key=self.src.file_key(entry))
        self._register(ref)
        return Opened(
            handle=_BundleMember(
                self.bundles,
                _bundle_key(ref.bundle),
                ".nii.gz" if ref.role == "image" else "." + ref.role,
                ref.scan,
                ref.image,
            ),
            direct_io=True,
        )

    def content_key(self, node: NodeInfo) -> Optional[ContentKey]:
        ref = node.ref
        if (
            isinstance(ref, BidsFile)
            and not ref.converted
            and ref.role == "image"
            and ref.files.nifti is not None
        ):
            return self.src.file_key(ref.files.nifti)
        return None

    def attributes(self, node: NodeInfo) -> Dict[str, str]:
        attrs = {k: v for k, v in node.attrs.items() if v}
        ref = node.ref
        if isinstance(ref, BidsFile) and ref.converted and ref.role != "json":
            attrs["conversion"] = self.bundles.state(_bundle_key(ref.bundle))
        return attrs

    def cacheable(self, node: NodeInfo) -> bool:
        return self.content_key(node) is not None

    def close(self) -> None:
        self.converter.close()  # first: running conversions end now, not after dcm2niix's
        self.bundles.close()

    def stats(self) -> Dict[str, Any]:
        """For ``.xnatfs/stats`` (``xnatfs status``): conversions done, running, failed."""
        return {"conversions": self.converter.snapshot(), "cache": dict(self.bundles.stats)}

    # ------------------------------------------------------------------ loaders
    def _load_projects(self) -> Listing:
        listing = Listing()
        for p in self.src.client.list_projects():
            # the path rule's escape, as in the XNAT view: a project listed as "..", "a/b" or
            # with a NUL was shown raw ("..", a name cut at the NUL) or half escaped (only "/":
            # "a/b" and "a%2Fb" shared a folder), and deeper folders looked the project up by
            # that name
            name = escape_name(p.id)
            listing.add(
                NodeInfo(
                    name=name,
                    kind=Kind.PROJECT,
                    is_dir=True,
                    mtime=p.mtime or self.epoch,
                    uri=p.uri,
                    project=p.id,
                    ref=Record(p),
                    attrs={"project": p.id, "uri": p.uri},
                )
            )
        return listing

    def _plan_of(self, project: str) -> Plan:
        with self._plans_lock:
            plan = self._plans.get(project)
        return plan if plan is not None else self._load_project(project, None).plan

    def _load_project(self, project: str, record: Any) -> _PlanView:
        if record is None:
            record = next((p for p in self.src.client.list_projects() if p.id == project), None)
            if record is None:
                raise OSError(errno.ENOENT, "no such project", project)
        plan = self.src.plan(record)
        with self._plans_lock:
            self._plans[project] = plan
        mtime = record.mtime or self.epoch
        listings: Dict[Tuple[str, ...], Listing] = {(): Listing()}
        top = listings[()]
        docs = {
            "dataset_description.json": dataset.dataset_description(
                project, plan.name, dataset.authors(getattr(record, "fields", {}) or {})
            ),
            "README": dataset.readme(project, plan.name, plan.description),
            "participants.tsv": dataset.participants_tsv(plan.participants),
            "participants.json": dataset.participants_json(plan.participants),
        }
        for name in _DOCS:
            top.add(
                NodeInfo(
                    name=name,
                    kind=Kind.DOC,
                    is_dir=False,
                    mtime=mtime,
                    project=project,
                    size=len(docs[name]),
                    ref=Generated(what=("doc", name, docs[name]), sized=True),
                    attrs={"project": project, "uri": record.uri},
                )
            )
        for folder, scans in plan.folders.items():
            for depth in range(1, len(folder) + 1):
                sub = folder[:depth]
                listing = listings.setdefault(sub[:-1], Listing())
                if sub[-1] not in listing.children:
                    first = scans[0]
                    kind = Kind.DATATYPE if depth == len(folder) else Kind.FOLDER
                    listing.add(
                        NodeInfo(
                            name=sub[-1],
                            kind=kind,
                            is_dir=True,
                            mtime=first.mtime or mtime,
                            project=project,
                            subject=first.xnat_subject,
                            attrs={
                                "project": project,
                                "subject": first.xnat_subject,
                                **(
                                    {"experiment": first.xnat_session}
                                    if sub[-1].startswith("ses-")
                                    else {}
                                ),
                            },
                        )
                    )
                listings.setdefault(sub, Listing())
        return _PlanView(plan, listings)

    def _load_datatype(self, parts: PathParts, node: NodeInfo) -> Listing:
        plan = self._plan_of(unescape_name(parts[0]))
        listing = Listing()
        scans = plan.folders.get(tuple(parts[1:]), [])
        shown: List[Tuple[PlannedScan, ScanFiles, List[NodeInfo]]] = []
        listed = parallel(lambda s: self.src.scan_files(s.scan_uri, s.mtime), scans)
        for scan, files in zip(scans, listed):
            if files.nifti is None and not files.dicom:
                log.info(
                    "BIDS: %s/%s scan %s has no NIfTI or DICOM resource: not shown",
                    scan.xnat_subject,
                    scan.xnat_session,
                    scan.scan_id,
                )
                continue
            shown.append((scan, files, self._file_nodes(scan, files)))
        for _scan, _files, nodes in self._distinct(shown):
            for child in nodes:
                listing.add(child)
        return listing

    def _distinct(
        self, shown: List[Tuple[PlannedScan, ScanFiles, List[NodeInfo]]]
    ) -> List[Tuple[PlannedScan, ScanFiles, List[NodeInfo]]]:
        """The scans of one folder with names no two share (docs/BIDS.md "Multi-image
        series").  Each scan's own name is unique (the plan's runs); the other names a
        converted scan's images take (``magnitude2``, ``echo-2``) may be another scan's: a
        GRE field map holding magnitudes and phase beside a magnitude series of its own both
        showed ``…_magnitude1``, and the listing silently kept one.  A scan whose images would
        take another scan's own name, or a name another scan's images take too, shows its one
        image under its own name instead, as before its conversion (one INFO line)."""
        own = {scan.stem for scan, _, _ in shown}
        stems = [{_stem(n.name) for n in nodes} for _, _, nodes in shown]
        single = {
            i
            for i, (scan, _, _) in enumerate(shown)
            if any(name != scan.stem and name in own for name in stems[i])
        }
        counts: Dict[str, int] = {}
        for i, names in enumerate(stems):
            for name in names if i not in single else ():
                counts[name] = counts.get(name, 0) + 1
        single |= {i for i, names in enumerate(stems) if any(counts.get(n, 0) > 1 for n in names)}
        out = []
        for i, (scan, files, nodes) in enumerate(shown):
            if i in single:
                log.info(
                    "BIDS: %s: the images of %s would share names with another scan's in "
                    "the same folder: shown as one image under %s",
                    "/".join(scan.folder()),
                    _scan_label(scan),
                    scan.stem,
                )
                nodes = self._file_nodes(scan, files, single=True)
            out.append((scan, files, nodes))
        return out

    def _file_nodes(
        self, scan: PlannedScan, files: ScanFiles, *, single: bool = False
    ) -> List[NodeInfo]:
        """The files of one scan: a NIfTI resource's image as it is; a DICOM scan's image
        under the scan's name until it is converted, then every image dcm2niix made under
        its own name (``images.bids_images``; docs/BIDS.md "Multi-image series") — or, with
        ``single``, its main image alone under the scan's name (``_distinct``)."""
        attrs = scan.attrs()
        if files.nifti is not None:
            ext = ".nii" if files.nifti.path.lower().endswith(".nii") else ".nii.gz"
            attrs["bids_source"] = "nifti-resource"
            attrs["source_uri"] = files.nifti.uri
            sizes = {"image": files.nifti.size}
            sizes.update({e[1:]: c.size for e, c in files.companions.items() if e != ".json"})
            return self._image_nodes(BidsFile(scan, files, "image"), ext, attrs, sizes)
        bundle = self._bundle_uri(scan, files)
        attrs["bids_source"] = "dicom"
        cached = self._bundle_images(bundle, scan)
        if cached is None:  # not converted yet: one image, the DICOM size as its bound
            sizes = {"image": files.dicom_bytes, "bval": 4096, "bvec": 4096}
            return self._image_nodes(
                BidsFile(scan, files, "image", bundle), ".nii.gz", attrs, sizes
            )
        named, index = cached
        out: List[NodeInfo] = []
        for n in named[:1] if single else named:
            stem = n.image.stem
            sizes = {
                role: index[stem + ext][1]
                for role, ext in (("image", ".nii.gz"), ("bval", ".bval"), ("bvec", ".bvec"))
                if stem + ext in index
            }
            shown = scan if single else scan.named(n.name)
            ref = BidsFile(shown, files, "image", bundle, stem, n.extra)
            out += self._image_nodes(ref, ".nii.gz", attrs, sizes)
        return out

    def _image_nodes(
        self, ref: BidsFile, ext: str, attrs: Dict[str, str], sizes: Mapping[str, int]
    ) -> List[NodeInfo]:
        """An image, its sidecar and (dwi) its bval/bvec; ``sizes`` by role (a role with no
        size is not there)."""
        scan, stem = ref.scan, ref.scan.stem

        def node(name: str, role: str, size: int) -> NodeInfo:
            one = dataclasses.replace(ref, role=role)
            if one.converted:
                self._register(one)
            return NodeInfo(
                name=name,
                kind=Kind.FILE,
                is_dir=False,
                size=size,
                mtime=scan.mtime,
                uri=scan.scan_uri,
                project=scan.project,
                subject=scan.xnat_subject,
                ref=one,
                attrs=attrs,
            )

        out = [node(stem + ext, "image", sizes["image"])]
        local = self._sidecar_if_local(dataclasses.replace(ref, role="json"))
        out.append(
            node(stem + ".json", "json", SIDECAR_SIZE_GUESS if local is None else len(local))
        )
        if scan.name.datatype == "dwi":
            out += [node(f"{stem}.{r}", r, sizes[r]) for r in ("bval", "bvec") if r in sizes]
        return out

    def _sidecar_if_local(self, ref: BidsFile) -> Optional[bytes]:
        """The sidecar when everything it is made of is already on this machine (its DICOM
        header in the content cache or in memory, the bundle or the resource's JSON cached):
        then ``ls -l`` shows its true size at no cost.  None otherwise (and for field maps,
        whose ``IntendedFor`` needs other scans' listings: made on read)."""
        if ref.scan.name.datatype == "fmap":
            return None
        content = self.src.content
        needed = []
        if ref.files.dicom and not self.src.has_header(ref.scan.scan_uri, ref.files):
            needed.append(self.src.file_key(ref.files.dicom[0]))
        if not ref.converted and ".json" in ref.files.companions:
            needed.append(self.src.file_key(ref.files.companions[".json"]))
        if any(content.state(key) != "cached" for key in needed):
            return None
        try:
            return _SidecarHandle(self, ref).read(0, 1 << 24, time.monotonic() + 5.0)
        except (OSError, ValueError) as exc:
            log.debug("sidecar of %s not made from the cache: %s", ref.scan.scan_uri, exc)
            return None

    def _bundle_uri(self, scan: PlannedScan, files: ScanFiles) -> str:
        # a series listed without MD5s is known by names, sizes and times only: the server is
        # then part of its bundle's key, as of its files' (``ContentKey.origin``)
        digestless = any(not f.digest for f in files.dicom)
        return convert.bundle_key_uri(
            scan.scan_uri, files.digests, extra=self.src.origin if digestless else ""
        )

    def _bundle_images(
        self, bundle: str, scan: PlannedScan
    ) -> Optional[Tuple[List[images.Named], Dict[str, Tuple[int, int]]]]:
        """The named images and the index of a bundle already in the cache (a local read of
        its index and dcm2niix's sidecars, kept in memory), else None."""
        key = _bundle_key(bundle)
        with self._plans_lock:
            known = self._named.get((bundle, scan.name))
        if known is not None:
            return known
        if self.bundles.state(key) != "cached":
            return None
        try:
            member = _BundleMember(self.bundles, key, "", scan, "")
            try:
                found = member.named(time.monotonic() + 5.0)
            finally:
                member.close()
        except (OSError, ValueError) as exc:
            log.debug("bundle %s: %s", bundle, exc)
            return None
        with self._plans_lock:
            if len(self._named) > 20_000:
                self._named.clear()
            self._named[(bundle, scan.name)] = found
        return found

    def intended_for(self, fmap: PlannedScan) -> List[str]:
        """``IntendedFor`` of a field map (docs/BIDS.md): BIDS URIs (``bids::sub-X/ses-Y/
        func/…``, the form of the BIDS version the view declares) of the images of its session
        that it corrects — those of the dcm2bids descriptions its ``IntendedFor`` names when the
        config names some, else every func and dwi image of the session — under the names the
        view shows now (one listing of each target scan's resources)."""
        plan = self._plan_of(fmap.project)
        wanted = fmap.intended_for
        targets = [
            s
            for scans in plan.folders.values()
            for s in scans
            if s.experiment_uri == fmap.experiment_uri
            and s.scan_uri != fmap.scan_uri
            and (
                s.config_id in wanted if wanted is not None else s.name.datatype in ("func", "dwi")
            )
        ]
        out: List[str] = []
        for target, files in zip(
            targets, parallel(lambda s: self.src.scan_files(s.scan_uri, s.mtime), targets)
        ):
            folder = "/".join(target.folder())
            for node in self._target_images(target, files):
                out.append(f"bids::{folder}/{node}")
        return sorted(set(out))

    def paired_echo_times(self, phase: PlannedScan) -> Tuple[Tuple[str, Any], ...]:
        """``EchoTime1``/``EchoTime2`` of a phase difference whose series holds no magnitudes
        (Siemens writes them as a series of their own) when dcm2niix wrote none: the echo
        times of the two magnitudes of the session's GRE field-map scan with the same
        entities and run, once that scan is converted (a sidecar read converts nothing)."""
        plan = self._plan_of(phase.project)
        for other in (
            s
            for scans in plan.folders.values()
            for s in scans
            if s.experiment_uri == phase.experiment_uri
            and s.scan_uri != phase.scan_uri
            and _gre_fieldmap(s)
            and s.name.entities == phase.name.entities
            and s.run == phase.run
        ):
            files = self.src.scan_files(other.scan_uri, other.mtime)
            if files.nifti is not None or not files.dicom:
                continue
            cached = self._bundle_images(self._bundle_uri(other, files), other)
            mags = sorted(
                (n.name.suffix, n.image.echo_time)
                for n in (cached[0] if cached is not None else ())
                if n.name.suffix in ("magnitude1", "magnitude2")
            )
            times = [t for _, t in mags if t is not None]
            if len(times) == 2:
                return (("EchoTime1", times[0]), ("EchoTime2", times[1]))
        return ()

    def _target_images(self, scan: PlannedScan, files: ScanFiles) -> List[str]:
        """The image file names a scan shows now (no conversion, no download)."""
        if files.nifti is not None:
            ext = ".nii" if files.nifti.path.lower().endswith(".nii") else ".nii.gz"
            return [scan.stem + ext]
        if not files.dicom:
            return []
        cached = self._bundle_images(self._bundle_uri(scan, files), scan)
        if cached is None:
            return [scan.stem + ".nii.gz"]
        return [scan.named(n.name).stem + ".nii.gz" for n in cached[0]]

    def _register(self, ref: BidsFile) -> None:
        files, label = ref.files, _scan_label(ref.scan)
        deadline_s = self.converter.timeout
        src = self.src
        self.converter.register(
            ref.bundle,
            convert.Job(
                scan=label,
                fetch_dicom=lambda dest: src.fetch_series(
                    files, dest, time.monotonic() + deadline_s
                ),
                series_bytes=files.dicom_bytes,
            ),
        )


#: sidecar keys one DICOM header gives that differ between the images of one series
_PER_IMAGE_KEYS = ("EchoTime", "ImageType")


def _gre_fieldmap(scan: PlannedScan) -> bool:
    return scan.name.datatype == "fmap" and scan.name.suffix in images.GRE_FMAP_SUFFIXES


def _stem(file_name: str) -> str:
    """A file's name without its extension (``.nii.gz``, ``.json``…): the image's name."""
    for ext in (".nii.gz", ".nii", ".json", ".bval", ".bvec"):
        if file_name.endswith(ext):
            return file_name[: -len(ext)]
    return file_name


def _scan_label(scan: PlannedScan) -> str:
    return f"{scan.project}/{scan.xnat_subject}/{scan.xnat_session}/scans/{scan.scan_id}"


def _bundle_key(uri: str) -> ContentKey:
    return ContentKey(uri=uri, size=None, digest="", mtime=None)


class _BundleMember:
    """A read handle on one file of a conversion bundle: image ``image`` (dcm2niix's stem; ""
    for the scan's main image, found once converted) with extension ``ext`` (".nii.gz",
    ".json", ".bval", ".bvec").  The conversion starts with the first open of the bundle's
    key (never in ``open``'s thread: the cache's worker runs it)."""

    def __init__(
        self, cache: ContentCache, key: ContentKey, ext: str, scan: PlannedScan, image: str
    ) -> None:
        self._handle: Any = cache.open(key)
        self._ext = ext
        self._scan = scan
        self._image = image
        self._span: Optional[Tuple[int, int]] = None
        self._index: Optional[Dict[str, Tuple[int, int]]] = None

    def _exact(self, offset: int, size: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = self._handle.read(offset + len(out), size - len(out), deadline)
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def index(self, deadline: float) -> Dict[str, Tuple[int, int]]:
        if self._index is None:
            self._index = convert.read_index(lambda o, n: self._exact(o, n, deadline))
        return self._index

    def whole(self, name: str, deadline: float) -> bytes:
        start, length = self.index(deadline)[name]
        return self._exact(start, length, deadline)

    def named(self, deadline: float) -> Tuple[List[images.Named], Dict[str, Tuple[int, int]]]:
        """The bundle's images with their BIDS names (dcm2niix's sidecars are read: small)."""
        index = self.index(deadline)
        outputs = {n: self.whole(n, deadline) if n.endswith(".json") else b"" for n in index}
        return images.bids_images(self._scan.name, images.from_outputs(outputs)), index

    def member(self, deadline: float) -> str:
        """The bundle member this handle reads (the main image's, for a scan's own name)."""
        stem = self._image
        if not stem:
            main = images.primary(self.named(deadline)[0])
            stem = main.image.stem if main is not None else ""
        return stem + self._ext

    def read(self, offset: int, size: int, deadline: float) -> bytes:
        if self._span is None:
            span = self.index(deadline).get(self.member(deadline))
            if span is None:
                raise OSError(
                    errno.EIO,
                    f"the conversion of {self._scan.scan_uri} wrote no {self._ext[1:]}"
                    + (f" for image {self._image}" if self._image else ""),
                )
            self._span = span
        start, length = self._span
        if offset >= length or size <= 0:
            return b""
        return self._exact(start + offset, min(size, length - offset), deadline)

    def span(self, offset: int, size: int, deadline: float) -> bytes:
        return self.read(offset, size, deadline)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _SidecarHandle:
    """The sidecar, made on first read: one DICOM header (pydicom), laid under dcm2niix's own
    sidecar of this image once the scan is converted, or under the NIfTI resource's JSON;
    then the keys only the view knows (``EchoTime1``/``EchoTime2`` of a phase difference,
    ``IntendedFor`` of a field map)."""

    def __init__(self, layout: BidsLayout, ref: BidsFile) -> None:
        self._layout = layout
        self._ref = ref
        self._data: Optional[bytes] = None

    def _make(self, deadline: float) -> bytes:
        ref, src = self._ref, self._layout.src
        ours: Dict[str, Any] = {}
        if ref.files.dicom:
            ours.update(src.header(ref.scan.scan_uri, ref.files, deadline, ref.scan.mtime))
        if ref.scan.task:
            ours["TaskName"] = ref.scan.task
        if ref.converted and not ref.image and _gre_fieldmap(ref.scan):
            # a GRE field map series holds several images (magnitudes, phase) and the one
            # header read is of any of them: its echo time and image type are not this
            # image's, so they wait for dcm2niix's sidecar of the image (docs/BIDS.md)
            for key in _PER_IMAGE_KEYS:
                ours.pop(key, None)
        theirs: Optional[Dict[str, Any]] = None
        if not ref.converted:
            entry = ref.files.companions.get(".json")
            if entry is not None and (entry.size or 0) > MAX_SIDECAR_BYTES:
                # read whole into memory to be merged: a listed 5 GB ".json" would be 5 GB
                log.warning(
                    "BIDS: %s is %s bytes, more than a sidecar (%d): left out of the sidecar",
                    entry.uri,
                    entry.size,
                    MAX_SIDECAR_BYTES,
                )
            elif entry is not None:
                theirs = _sidecar_object(src.read_whole(entry, deadline), entry.uri)
        elif self._layout.bundles.state(_bundle_key(ref.bundle)) == "cached":
            member = _BundleMember(
                self._layout.bundles, _bundle_key(ref.bundle), ".json", ref.scan, ref.image
            )
            try:
                name = member.member(deadline)
                if name in member.index(deadline):
                    theirs = _sidecar_object(member.whole(name, deadline), name)
            finally:
                member.close()
        doc = sidecar.merge(ours, theirs) if theirs is not None else ours
        for key, value in ref.extra:
            doc.setdefault(key, value)  # dcm2niix's own value, when it wrote one, stays
        if ref.image and ref.scan.name.suffix == "phasediff" and "EchoTime2" not in doc:
            for key, value in self._layout.paired_echo_times(ref.scan):
                doc.setdefault(key, value)
        if ref.scan.name.datatype == "fmap":
            targets = self._layout.intended_for(ref.scan)
            if targets:
                doc["IntendedFor"] = targets
        return sidecar.dumps(doc)

    def read(self, offset: int, size: int, deadline: float) -> bytes:
        if self._data is None:
            self._data = self._make(deadline)
        return self._data[offset : offset + size]

    def span(self, offset: int, size: int, deadline: float) -> bytes:
        return self.read(offset, size, deadline)

    def close(self) -> None:
        self._data = None


#: largest JSON sidecar on XNAT merged into ours (read whole into memory); dcm2niix's are a
#: few KiB, a slice-timing or a long ``ImageComments`` a few tens
MAX_SIDECAR_BYTES = 4 << 20


def _sidecar_object(raw: bytes, what: str) -> Optional[Dict[str, Any]]:
    """A JSON sidecar from XNAT (or a conversion) as a dict to merge into ours; None (left
    out, one line) when it is not a JSON object: a list, broken JSON or bytes that are not
    UTF-8 made the sidecar's read fail with an unexpected error (EIO and a traceback)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: valid JSON nested past the recursion limit, no ValueError
        log.warning("BIDS: %s is not JSON (%s): left out of the sidecar", what, exc)
        return None
    if not isinstance(doc, dict):
        log.warning("BIDS: %s is not a JSON object: left out of the sidecar", what)
        return None
    return doc
