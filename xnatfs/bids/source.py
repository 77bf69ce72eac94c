"""The XNAT side of the BIDS view: what a project's dataset holds (its *plan*), a scan's files,
one DICOM header, and the whole series for a conversion.

Why one plan per project: BIDS names depend on the whole project — the session rule looks at
every subject, run numbers at every scan of a session, the label rule at every subject label —
so the project folder's listing loads them all at once (one request per listing: subjects, then
experiments per subject, then scans per experiment, plus XNAT's BIDS map), and the engine caches
it like any listing.  A datatype folder then costs one ``resources`` and one ``files`` listing
per scan in it.  Bytes come only on read: one DICOM file for a sidecar, the series (as one zip,
through the content cache's bulk path) for a conversion.
"""

from __future__ import annotations

import contextvars
import dataclasses
import io
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from xnatfs import deadline as call_deadline
from xnatfs.bids import names as N
from xnatfs.bids.mapping import Mapper, Match, ScanFacts, XnatBidsMap
from xnatfs.cache.content import ContentKey
from xnatfs.layouts.xnat.layout import _content_key

log = logging.getLogger(__name__)

#: the part of a zip member's name below its resource's ``files/`` (XNAT's default zip
#: structure, docs: ``{session}/scans/{id}-{type}/resources/{label}/files/{relpath}``)
_ZIP_MEMBER = re.compile(r"^(?:.*?/)?resources/[^/]+/files/(.+)$")
_NIFTI_EXT = (".nii.gz", ".nii")


@dataclass(frozen=True)
class PlannedScan:
    """One scan shown in the dataset."""

    project: str
    subject: str  # BIDS label
    session: str  # BIDS label, "" when sessions are not shown
    xnat_subject: str  # XNAT labels, for xattrs and the unmatched report
    xnat_session: str
    experiment_uri: str
    scan_id: str
    scan_uri: str
    scan_type: str
    series_description: str
    name: N.BidsName
    run: Optional[int]
    source: str  # config / xnat-bidsmap / heuristic
    mtime: float = 0.0
    #: from a dcm2bids config: its description's id, and the ids its IntendedFor names
    config_id: str = ""
    intended_for: Optional[Tuple[str, ...]] = None

    @property
    def stem(self) -> str:
        ents: Dict[str, str] = {"sub": self.subject}
        if self.session:
            ents["ses"] = self.session
        ents.update(dict(self.name.entities))
        if self.run is not None:
            ents["run"] = str(self.run)
        return N.file_stem(ents, self.name.suffix)

    def named(self, name: N.BidsName) -> "PlannedScan":
        """The same scan under another name (one image of a multi-image conversion)."""
        return dataclasses.replace(self, name=name)

    @property
    def task(self) -> str:
        return dict(self.name.entities).get("task", "")

    def folder(self) -> Tuple[str, ...]:
        return (
            (f"sub-{self.subject}",)
            + ((f"ses-{self.session}",) if self.session else ())
            + (self.name.datatype,)
        )

    def attrs(self) -> Dict[str, str]:
        return {
            "project": self.project,
            "subject": self.xnat_subject,
            "experiment": self.xnat_session,
            "scan": self.scan_id,
            "uri": self.scan_uri,
            "scan_type": self.scan_type,
            "series_description": self.series_description,
            "bids_rule": self.source,
        }


@dataclass
class Plan:
    """A project's dataset: the scans shown, by folder, and the ones left out."""

    project: str
    name: str
    description: str
    #: BIDS subject label -> XNAT subject fields (participants.tsv), in display order
    participants: List[Tuple[str, Mapping[str, str]]] = field(default_factory=list)
    #: folder parts (sub-X[, ses-Y], datatype) -> scans in it
    folders: Dict[Tuple[str, ...], List[PlannedScan]] = field(default_factory=dict)
    #: (subject, session, scan, description, reason)
    unmatched: List[Tuple[str, str, str, str, str]] = field(default_factory=list)
    sessions_shown: bool = False

    def subfolders(self, parts: Tuple[str, ...]) -> List[str]:
        n = len(parts)
        return sorted({k[n] for k in self.folders if len(k) > n and k[:n] == parts})


@dataclass(frozen=True)
class ScanFiles:
    """A scan's bytes as XNAT lists them: a NIfTI image (served as is) or the DICOM series."""

    nifti: Optional[Any] = None  # FileEntry of the image
    companions: Mapping[str, Any] = field(default_factory=dict)  # ".json"/".bval"/".bvec"
    dicom: Tuple[Any, ...] = ()  # FileEntry rows, by path
    dicom_resource_uri: str = ""

    @property
    def digests(self) -> List[Tuple[str, int, str]]:
        return [(f.path, f.size, f.digest or str(f.mtime or "")) for f in self.dicom]

    @property
    def dicom_bytes(self) -> int:
        return sum(f.size for f in self.dicom)


def file_key(entry: Any, origin: str) -> ContentKey:
    """The content-cache key the XNAT layout gives the same file, so both views share one
    cached copy (with a digest: uri+MD5 parameter, size, digest; without: the listed mtime
    and the server, ``origin``: ``ContentKey.origin``)."""
    if entry.digest:
        return _content_key(entry.uri, entry.size, entry.digest, None, "")
    return _content_key(entry.uri, entry.size, "", entry.mtime or 0.0, origin)


def _timed(entry: Any, mtime: float) -> Any:
    """``entry`` with the scan's time when it has neither an MD5 nor a time (``scan_files``)."""
    if entry.digest or entry.mtime or not mtime:
        return entry
    return dataclasses.replace(entry, mtime=mtime)


def _scan_order(scan_id: str) -> Tuple[int, Any]:
    return (0, int(scan_id)) if scan_id.isdigit() else (1, scan_id)


class Source:
    """Listings and bytes from XNAT for the BIDS layout (``client``: ``xnat.client.XnatClient``,
    ``content``: the main ``ContentCache``)."""

    def __init__(
        self, client: Any, content: Any, mapper: Mapper, *, use_xnat_map: bool = True
    ) -> None:
        self.client = client
        self.content = content
        self.mapper = mapper
        #: the server, part of the cache key of a file listed without an MD5
        self.origin: str = getattr(client, "base_url", "")
        self.use_xnat_map = use_xnat_map and mapper.config is None
        self._headers_lock = threading.Lock()
        #: scan uri -> (content key of the DICOM file read, sidecar keys from its header);
        #: bounded.  The file's key (URI, size, MD5) is kept so that a series changed on XNAT
        #: (a file replaced, a slice added that sorts first) is read again once its listing
        #: shows the change: keyed by the scan alone, the sidecar kept the first header's
        #: values for the life of the mount, after ``xnatfs refresh`` and after the image
        #: was converted again from the new files
        self._headers: Dict[str, Tuple[str, Mapping[str, Any]]] = {}

    def file_key(self, entry: Any) -> ContentKey:
        """``file_key`` of a file of this server."""
        return file_key(entry, self.origin)

    # ------------------------------------------------------------------ plan
    def xnat_map(self, project: str) -> Optional[XnatBidsMap]:
        """XNAT's BIDS map: the project's config entry, then the site's; None when neither
        exists (404) or the server refuses (the client logged that call's failure)."""
        docs = []
        for where in (project, None):
            try:
                docs.append(self.client.config_json("bids", "bidsmap", where))
            except Exception as exc:  # noqa: BLE001 - an unreadable map is no map
                log.debug("BIDS map of %s: %s", where or "the site", exc)
        found = XnatBidsMap.from_lists(*docs)
        return found if found.entries else None

    def plan(self, project: Any) -> Plan:
        """Every subject, experiment and scan of ``project`` mapped to BIDS names."""
        mapper = self.mapper
        if self.use_xnat_map:
            xmap = self.xnat_map(project.id)
            if xmap is not None:
                mapper = Mapper(config=None, xnat_map=xmap)
        plan = Plan(
            project.id,
            getattr(project, "name", "") or project.id,
            getattr(project, "description", "") or "",
        )
        subjects = sorted(self.client.list_subjects(project.id), key=lambda s: s.label or s.id)
        # by subject: XNAT keeps labels unique in a project, a hostile listing need not
        sub_labels = N.distinct_originals({s.id: [s.label or s.id, s.id] for s in subjects})
        sub_map = N.LabelMap(sub_labels[s.id] for s in subjects)
        found = self._scans(project, subjects, mapper)
        plan.sessions_shown, ses_maps = _session_labels(found)
        runs = _run_numbers(found, plan.sessions_shown)
        shown_subjects = set()
        for i, (subj, _ses, exp, scan, match) in enumerate(found):
            s_label = subj.label or subj.id
            if match.name is None:
                plan.unmatched.append(
                    (
                        s_label,
                        exp.label or exp.id,
                        scan.id,
                        scan.series_description or scan.type,
                        match.reason,
                    )
                )
                continue
            planned = PlannedScan(
                project=project.id,
                subject=sub_map[sub_labels[subj.id]],
                session=ses_maps[subj.id][exp.id] if plan.sessions_shown else "",
                xnat_subject=s_label,
                xnat_session=exp.label or exp.id,
                experiment_uri=exp.uri,
                scan_id=scan.id,
                scan_uri=scan.uri,
                scan_type=scan.type,
                series_description=scan.series_description,
                name=match.name,
                run=runs.get(i),
                source=match.source,
                mtime=scan.mtime or exp.mtime or subj.mtime or 0.0,
                config_id=match.config_id,
                intended_for=match.intended_for,
            )
            plan.folders.setdefault(planned.folder(), []).append(planned)
            shown_subjects.add(subj.id)
        plan.participants = sorted(
            (sub_map[sub_labels[s.id]], dict(s.fields)) for s in subjects if s.id in shown_subjects
        )
        return plan

    def _scans(self, project: Any, subjects: List[Any], mapper: Mapper) -> List["Found"]:
        """(subject, raw session label, experiment, scan, match) of every scan of the project,
        in subject, session and scan order."""
        # one request per subject (experiments), then one per experiment (scans): run
        # ``_PLAN_THREADS`` at a time (the client's limiter still bounds the total)
        exps_of = parallel(
            lambda subj: sorted(
                (
                    e
                    for e in self.client.list_experiments(project.id, subj.id)
                    if not e.xsi_type or e.xsi_type.endswith("SessionData")
                ),
                key=lambda e: (e.date or "", e.label or e.id),
            ),
            subjects,
        )
        pairs = [(subj, exp) for subj, exps in zip(subjects, exps_of) for exp in exps]
        scans_of = parallel(
            lambda pair: sorted(
                self.client.list_scans(pair[1].uri), key=lambda s: _scan_order(s.id)
            ),
            pairs,
        )
        found: List[Found] = []
        for (subj, exp), scans in zip(pairs, scans_of):
            s_label = subj.label or subj.id
            for scan in scans:
                facts = ScanFacts(
                    scan.id,
                    scan.type,
                    scan.series_description,
                    scan.xsi_type,
                    scan.quality,
                    modality=_modality(scan.xsi_type),
                    header=self._header_fn(scan.uri, scan.mtime or exp.mtime or subj.mtime or 0.0),
                )
                found.append(
                    (
                        subj,
                        N.session_label(s_label, exp.label or exp.id),
                        exp,
                        scan,
                        mapper.map(facts),
                    )
                )
        return found

    # ------------------------------------------------------------------ scan files
    def scan_files(self, scan_uri: str, mtime: float = 0.0) -> ScanFiles:
        """A NIfTI resource's image (and its .json/.bval/.bvec) and the DICOM resource's files
        (for the sidecar's header, and to convert when there is no NIfTI): one ``resources``
        listing and one ``files`` listing per resource used.

        ``mtime``: the scan's time as the plan has it (``PlannedScan.mtime``: the scan's, else
        its experiment's, else its subject's), given to each file listed with neither an MD5
        nor a time of its own, as the XNAT view gives its files their object's time: with
        checksums off that time is what changes when XNAT gets other bytes, so both views key
        such a file alike (``file_key``), and a same-size replacement is a new cache entry.
        Before, the BIDS view keyed it with time 0: it kept serving the first bytes it cached
        (a review finding), and it never shared the XNAT view's copy."""
        resources = self.client.list_resources(scan_uri)
        found: Dict[str, Any] = {}
        for res in resources:
            if not (
                (res.label or "").upper() in ("NIFTI", "BIDS")
                or (res.format or "").upper() == "NIFTI"
            ):
                continue
            # a row the client marked (a URI outside its resource, a bad size) is never read
            entries = sorted(
                (
                    _timed(e, mtime)
                    for e in self.client.list_files(res.uri)
                    if not getattr(e, "problem", "")
                ),
                key=lambda e: e.path,
            )
            images = [e for e in entries if e.path.lower().endswith(_NIFTI_EXT)]
            if images:
                stem = _strip_ext(images[0].path)
                found = {
                    "nifti": images[0],
                    "companions": {
                        ext: e
                        for e in entries
                        for ext in (".json", ".bval", ".bvec")
                        if e.path == stem + ext
                    },
                }
                break
        dicom = [
            r
            for r in resources
            if (r.label or "").upper() == "DICOM" or (r.format or "").upper() == "DICOM"
        ]
        if dicom:
            entries = [
                _timed(e, mtime)
                for e in self.client.list_files(dicom[0].uri)
                if not getattr(e, "problem", "")
            ]
            found["dicom"] = tuple(sorted(entries, key=lambda e: e.path))
            found["dicom_resource_uri"] = dicom[0].uri
        return ScanFiles(**found)

    # ------------------------------------------------------------------ bytes
    def read_whole(self, entry: Any, deadline: float) -> bytes:
        """One XNAT file through the main content cache (downloaded once, kept), whole in
        memory: for small files only (a JSON sidecar, capped by its caller)."""
        out = bytearray()
        self._copy(entry, out.extend, deadline)
        return bytes(out)

    def _copy(self, entry: Any, write: Callable[[bytes], Any], deadline: float) -> None:
        """One XNAT file through the main content cache into ``write``, 1 MiB at a time."""
        handle = self.content.open(self.file_key(entry))
        try:
            offset = 0
            while True:
                chunk = handle.read(offset, _CHUNK, deadline)
                if not chunk:
                    return
                write(chunk)
                offset += len(chunk)
        finally:
            handle.close()

    def _known_header(self, scan_uri: str, entry: Any) -> Optional[Mapping[str, Any]]:
        """The header kept for ``scan_uri`` when it was read from ``entry`` as listed now (the
        same URI, size and MD5); None otherwise.  ``entry`` None: whichever was read."""
        with self._headers_lock:
            known = self._headers.get(scan_uri)
        if known is None or (entry is not None and known[0] != self.file_key(entry).hexname()):
            return None
        return known[1]

    def has_header(self, scan_uri: str, files: ScanFiles) -> bool:
        """Is the header of ``files``' first DICOM file (as listed now) in memory?"""
        return bool(files.dicom) and self._known_header(scan_uri, files.dicom[0]) is not None

    def header(
        self, scan_uri: str, files: Optional[ScanFiles], deadline: float, mtime: float = 0.0
    ) -> Mapping[str, Any]:
        """Sidecar keys from the scan's first DICOM file (one download, cached on disk by the
        content cache and here in memory); {} when the scan has no DICOM.  Returned once the
        file's size and MD5 check passed (EIO when it fails; nothing kept), so that no value
        of unverified bytes reaches a sidecar or a mapping criterion.  With ``files`` (a
        sidecar's read) the header kept in memory serves only if it was read from the first
        file as ``files`` lists it; without (a mapping criterion while the plan loads) any
        header kept serves, so that listing a project costs no listing per scan."""
        from xnatfs.bids import sidecar

        if files is None:
            known = self._known_header(scan_uri, None)
            if known is not None:
                return known
            files = self.scan_files(scan_uri, mtime)
        if not files.dicom:
            return {}
        known = self._known_header(scan_uri, files.dicom[0])
        if known is not None:
            return known
        entry = files.dicom[0]
        handle = self.content.open(self.file_key(entry))
        try:
            # read as pydicom asks, up to the pixel data: the whole file in memory was the
            # size of an enhanced (multi-frame) DICOM, hundreds of MB, for a few KiB of header
            raw = _HandleReader(handle, entry.size, deadline, entry.uri)
            reader = io.BufferedReader(raw, _CHUNK)
            doc = sidecar.from_file(reader)
            # then its verdict: a header parsed from bytes that fail their size or MD5 check
            # must neither be used nor kept.  A read of the last byte waits for it (EIO when
            # bad, and when this handle served bytes of a failed attempt); the download runs
            # to the end anyway, so this costs the wait, not the bytes
            handle.read(max(entry.size - 1, 0), 1, deadline)
        finally:
            handle.close()
        with self._headers_lock:
            if len(self._headers) > 20_000:
                self._headers.clear()
            self._headers[scan_uri] = (self.file_key(entry).hexname(), doc)
        return doc

    def _header_fn(self, scan_uri: str, mtime: float = 0.0) -> Callable[[], Mapping[str, Any]]:
        def get() -> Mapping[str, Any]:
            # within the listing's filesystem call when there is one (a config criterion on a
            # DICOM field reads a header per scan while the project folder is listed): a fresh
            # 60 s per header held that call far past --timeout (issue 17 §1)
            end = time.monotonic() + _HEADER_WAIT
            outer = call_deadline.current()
            return self.header(scan_uri, None, end if outer is None else min(end, outer), mtime)

        return get

    def fetch_series(self, files: ScanFiles, dest: str, deadline: float) -> None:
        """Every DICOM file of the scan into ``dest``: the resource as one zip through the
        content cache's bulk path when several files are missing, then each from the cache."""
        keys = {f.path: self.file_key(f) for f in files.dicom}

        def key_of(member: str) -> Optional[ContentKey]:
            m = _ZIP_MEMBER.match(member)
            return keys.get(m.group(1)) if m else None

        if len(keys) > 1 and files.dicom_resource_uri:
            try:
                self.content.bulk(
                    files.dicom_resource_uri.rstrip("/") + "/files?format=zip",
                    list(keys.values()),
                    key_of,
                    min_files=2,
                )
            except RuntimeError:  # the cache is closing
                raise OSError(5, "content cache closing") from None
        for i, f in enumerate(files.dicom):
            with open(os.path.join(dest, f"{i:06d}.dcm"), "wb") as fh:
                self._copy(f, fh.write, deadline)  # not whole in memory: a file may be GBs


#: bytes read from the content cache at a time
_CHUNK = 1 << 20


class _HandleReader(io.RawIOBase):
    """A content-cache handle as a read-only, seekable raw file of ``size`` bytes: reads only
    what its reader asks for, each within ``deadline``."""

    def __init__(self, handle: Any, size: int, deadline: float, name: str = "") -> None:
        super().__init__()
        self._handle, self._size, self._deadline = handle, size, deadline
        self._pos = 0
        #: what pydicom names the dataset's file (``io.BufferedReader.name`` asks the raw file)
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(self._pos, len(buffer), self._deadline)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


#: listings a plan loads at once
_PLAN_THREADS = 8
#: longest wait for one DICOM header a mapping criterion needs (outside a filesystem call)
_HEADER_WAIT = 60.0


def parallel(fn: Callable[[Any], Any], items: Sequence[Any]) -> List[Any]:
    """``[fn(x) for x in items]``, ``_PLAN_THREADS`` at a time; each worker runs in a copy of
    the caller's context, so the filesystem call's deadline (``xnatfs.deadline``) bounds it."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(
        min(_PLAN_THREADS, len(items)), thread_name_prefix="xnatfs-bids-plan"
    ) as pool:
        futures = [pool.submit(contextvars.copy_context().run, fn, x) for x in items]
        return [f.result() for f in futures]


def _modality(xsi_type: str) -> str:
    low = (xsi_type or "").lower()
    for key, mod in (("mr", "MR"), ("pet", "PT"), ("ct", "CT")):
        if low.startswith(f"xnat:{key}"):
            return mod
    return "MR" if not low else low.split(":")[-1][:2].upper()


def _strip_ext(path: str) -> str:
    low = path.lower()
    for ext in _NIFTI_EXT:
        if low.endswith(ext):
            return path[: -len(ext)]
    return path


#: one scan of a plan: (subject, raw session label, experiment, scan, match)
Found = Tuple[Any, str, Any, Any, Match]


def _session_labels(found: List[Found]) -> Tuple[bool, Dict[str, Dict[str, str]]]:
    """Whether ``ses-`` folders are shown (the session rule needs every subject's count of
    sessions with a mapped scan) and, per subject, experiment ID -> BIDS session label."""
    per_subject: Dict[str, set] = {}
    for subj, _, exp, _, match in found:
        if match.name is not None:
            per_subject.setdefault(subj.id, set()).add(exp.id)
    shown = N.sessions_shown({k: len(v) for k, v in per_subject.items()})
    ses_maps: Dict[str, Dict[str, str]] = {}
    for sid in per_subject:
        # experiment -> its session label, distinct per experiment (``distinct_originals``):
        # the part after the subject's label, else the whole experiment label, else its ID
        labels = N.distinct_originals(
            {
                exp.id: [ses, exp.label or exp.id, exp.id]
                for subj, ses, exp, _, m in found
                if subj.id == sid and m.name is not None
            }
        )
        names = N.LabelMap(labels.values())
        ses_maps[sid] = {eid: names[label] for eid, label in labels.items()}
    return shown, ses_maps


def _run_numbers(found: List[Found], sessions_shown: bool) -> Dict[int, Optional[int]]:
    """Run numbers per subject, session and kind, in scan order (index in ``found`` -> run)."""
    groups: Dict[Tuple[str, str], List[int]] = {}
    kinds: Dict[int, Tuple[Any, ...]] = {}
    for i, (subj, _ses, exp, _, match) in enumerate(found):
        if match.name is not None:
            kinds[i] = match.name.kind()
            groups.setdefault((subj.id, exp.id if sessions_shown else ""), []).append(i)
    runs: Dict[int, Optional[int]] = {}
    for idxs in groups.values():
        for i, run in zip(idxs, N.number_runs([kinds[i] for i in idxs])):
            runs[i] = run
    return runs
