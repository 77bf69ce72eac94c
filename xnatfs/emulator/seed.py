"""The demo archive (``docs/ARCHITECTURE.md`` §11.2, "Demo seed"), generated at start into an empty
store.

Why generated: no binaries are committed, and every byte is a pure function of fixed seeds, so
two emulators serve identical files (sizes and MD5 digests) and tests can hard-code paths.
File mtimes are pinned to :data:`SEED_MTIME` for the same reason.

Contents::

    DEMO1  (alice is a member)          resource protocols/ (sub-folders, a name with a space,
    ├── SUBJ01  resource consent/        and "résumé – notes.txt")
    │   └── SUBJ01_MR1  resource notes/, assessor SUBJ01_MR1_FS (resource DATA)
    │       ├── scan 1 T1w   DICOM + NIFTI
    │       ├── scan 2 T2w   DICOM
    │       └── scan 3 fMRI  DICOM
    ├── SUBJ02 / SUBJ02_MR1 (same scans), SUBJ02_MR2 (BIDS protocol, below)
    ├── SUBJ03 / SUBJ03_MR1 (same scans), SUBJ03_MR2 (BIDS protocol)
    └── prearchive: SUBJ04_MR1 (READY)
    DEMO2  (alice is not a member)
    └── D2SUBJ01 / D2SUBJ01_MR1 (scans 1 T1w, 2 T2w)

The BIDS protocol of the ``_MR2`` sessions (issue 10: what a BIDS validator and dcm2niix need,
shown as ``MNT/.bids/DEMO1``): scan 1 ``localizer`` (the heuristic leaves it out), scans 2 and 3
``T1w_MPRAGE`` (two runs of one kind), scan 4 ``rest_fMRI`` (4-D: 8 slices x 4 volumes, TR 2 s).
The ``_MR1`` sessions' ``fMRI`` has no task name, so the heuristic leaves it out too.
"""

from __future__ import annotations

import gzip
import json
import logging
import struct
import time
import zlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from .dicom import SeriesSpec, StudySpec, iter_study_files, pixel_data
from .prearchive import Prearchive

log = logging.getLogger(__name__)

#: 2024-01-15 10:00:00 UTC: the mtime of every seeded file (deterministic Last-Modified)
SEED_MTIME = 1705312800.0

DEMO_USER = ("alice", "alice-pw")

#: the demo protocol: scan 1 T1w, 2 T2w, 3 fMRI (docs/ARCHITECTURE.md §11.2)
DEMO_SERIES = (
    SeriesSpec(1, "T1w", 16),
    SeriesSpec(2, "T2w", 12),
    SeriesSpec(3, "fMRI", 20, rows=32, columns=32),
)


@dataclass(frozen=True)
class DemoSession:
    project: str
    subject: str
    label: str
    date: str  # DICOM DA
    series: tuple[SeriesSpec, ...] = DEMO_SERIES

    def study(self) -> StudySpec:
        return StudySpec(
            seed=f"xnatfs-demo/{self.project}/{self.label}",
            patient_name=self.subject,
            patient_id=self.label,
            study_date=self.date,
            study_time="093000",
            study_description="Demo MR",
            series=self.series,
        )


#: the BIDS protocol of the second sessions (module docstring)
BIDS_SERIES = (
    SeriesSpec(1, "localizer", 3),
    SeriesSpec(2, "T1w_MPRAGE", 16),
    SeriesSpec(3, "T1w_MPRAGE", 16),
    SeriesSpec(4, "rest_fMRI", 32, rows=32, columns=32, volumes=4),
)

DEMO_SESSIONS = (
    DemoSession("DEMO1", "SUBJ01", "SUBJ01_MR1", "20240102"),
    DemoSession("DEMO1", "SUBJ02", "SUBJ02_MR1", "20240103"),
    DemoSession("DEMO1", "SUBJ03", "SUBJ03_MR1", "20240104"),
    DemoSession("DEMO1", "SUBJ02", "SUBJ02_MR2", "20240203", BIDS_SERIES),
    DemoSession("DEMO1", "SUBJ03", "SUBJ03_MR2", "20240204", BIDS_SERIES),
    DemoSession("DEMO2", "D2SUBJ01", "D2SUBJ01_MR1", "20240105", DEMO_SERIES[:2]),
)

#: waiting in DEMO1's prearchive
DEMO_PREARCHIVE = DemoSession("DEMO1", "SUBJ04", "SUBJ04_MR1", "20240110", DEMO_SERIES[:2])

#: the protocol notes: a UTF-8 name and content
_NOTES = "Résumé – notes on the protocol (UTF-8 name and content: ü, ß, –).\n"

#: project resource ``protocols`` of DEMO1: relpath -> bytes
PROTOCOL_FILES: Mapping[str, bytes] = MappingProxyType(
    {
        "README.txt": b"Acquisition protocols of the DEMO1 study (synthetic data from xnatfs).\n",
        "mri/T1w protocol.txt": b"T1-weighted MPRAGE\nTR=2300 ms TE=2.98 ms TI=900 ms\n"
        b"voxel 1x1x1 mm\n",
        "mri/T2w protocol.txt": b"T2-weighted SPACE\nTR=3200 ms TE=409 ms\n",
        "mri/fmri/task-rest_bold.json": json.dumps(
            {
                "TaskName": "rest",
                "RepetitionTime": 2.0,
                "EchoTime": 0.03,
                "SliceTiming": [0.0, 1.0, 0.5, 1.5],
            },
            indent=2,
        ).encode()
        + b"\n",
        "mri/fmri/events.tsv": b"onset\tduration\ttrial_type\n0.0\t20.0\trest\n20.0\t20.0\ttask\n",
        "résumé – notes.txt": _NOTES.encode(),
    }
)


def seed_demo(store: Any, *, with_prearchive: bool = True) -> None:
    """Fill an empty ``store`` with the demo archive.  Does nothing if DEMO1 already exists
    (the emulator restarted on a seeded data dir)."""
    if store.get_project("DEMO1") is not None:
        log.debug("demo seed already present")
        return
    t0 = time.monotonic()
    from .store import Parent

    store.create_project(
        "DEMO1",
        name="Demo project 1",
        description="Synthetic MR sessions for xnatfs",
        fields={"pi_firstname": "Ada", "pi_lastname": "Lovelace"},
    )
    store.create_project("DEMO2", name="Demo project 2", description="A project alice may not see")
    store.add_user(DEMO_USER[0], DEMO_USER[1], projects=["DEMO1"])

    rid, _ = store.create_resource(
        Parent(project="DEMO1"),
        "protocols",
        format="TXT",
        content="PROTOCOL",
        description="Acquisition protocols",
    )
    _put_all(store, rid, PROTOCOL_FILES.items())
    rid, _ = store.create_resource(Parent(project="DEMO1"), "figures", format="PNG")
    _put_all(store, rid, [("phantom.png", png_bytes(_phantom_gray(64, 64)))])

    n_files = 0
    for demo in DEMO_SESSIONS:
        n_files += _seed_session(store, demo)

    _seed_attached(store)

    if with_prearchive:
        seed_prearchive(store)
    log.info("demo seed: %d DICOM files in %.2f s", n_files, time.monotonic() - t0)


def _seed_attached(store: Any) -> None:
    """The resources of DEMO1 that hang on a subject, a session and an assessor."""
    from .store import Parent

    subj = store.find_subject("DEMO1", "SUBJ01")
    rid, _ = store.create_resource(
        Parent(project="DEMO1", subject=subj.id), "consent", format="TXT", content="CONSENT"
    )
    _put_all(store, rid, [("consent_form.txt", b"Signed consent on file (synthetic).\n")])

    sess = store.find_experiment("DEMO1", "SUBJ01_MR1")
    rid, _ = store.create_resource(
        Parent(project="DEMO1", experiment=sess.id), "notes", format="TXT"
    )
    _put_all(
        store,
        rid,
        [
            ("session_notes.txt", b"Subject tolerated the scan well.\n"),
            (
                "qc/qc_report.json",
                json.dumps({"T1w": "pass", "T2w": "pass", "fMRI": "motion"}, indent=2).encode()
                + b"\n",
            ),
        ],
    )
    aid, _ = store.create_assessor(
        sess.id, "SUBJ01_MR1_FS", "xnat:qcAssessmentData", fields={"date": "2024-01-20"}
    )
    rid, _ = store.create_resource(
        Parent(project="DEMO1", experiment=sess.id, assessor=aid),
        "DATA",
        format="FREESURFER",
        content="RESULTS",
    )
    _put_all(store, rid, _freesurfer_files())


def _put_all(
    store: Any,
    resource_id: int,
    files: Iterable[tuple[str, bytes]],
    *,
    format: str = "",
    content: str = "",
) -> None:
    import io

    for relpath, data in files:
        store.put_file(
            resource_id,
            relpath,
            io.BytesIO(data),
            overwrite=True,
            format=format,
            content=content,
            mtime=SEED_MTIME,
        )


def seed_session(store: Any, demo: DemoSession, *, nifti: bool = False) -> int:
    """Add one session of generated DICOM (and with ``nifti``, a NIFTI resource on its first
    scan) to an existing project; the subject is made if needed.  Returns the DICOM count.
    Used by tests that need sessions of their own (e.g. hostile labels)."""
    return _seed_session(store, demo, nifti=nifti)


def _seed_session(store: Any, demo: DemoSession, *, nifti: bool = True) -> int:
    study = demo.study()
    iso = f"{demo.date[:4]}-{demo.date[4:6]}-{demo.date[6:]}"
    eid, _ = store.create_experiment(
        demo.project,
        demo.subject,
        demo.label,
        "xnat:mrSessionData",
        fields={"date": iso, "time": "09:30:00", "modality": "MR", "UID": study.study_instance_uid},
    )
    n = 0
    by_series: dict[int, list] = {}
    for gen in iter_study_files(study):
        by_series.setdefault(gen.series.number, []).append(gen)
    for series in demo.series:
        files = by_series.get(series.number, [])
        add_dicom_series(store, demo.project, eid, series, [(g.name, g.data) for g in files])
        n += len(files)
    if demo.series is BIDS_SERIES or not nifti:
        return n
    _seed_nifti(store, demo, eid, study)
    return n


def add_dicom_series(
    store: Any, project: str, eid: str, series: Any, files: Sequence[tuple[str, bytes]]
) -> None:
    """Scan ``series.number`` of experiment ``eid``, typed by ``series.description``, with a
    DICOM resource holding ``files`` (name, bytes): the demo's sessions, and tests that add
    a series of their own (tests/bids)."""
    from .store import Parent

    store.create_scan(
        eid,
        str(series.number),
        "xnat:mrScanData",
        fields={
            "type": series.description,
            "series_description": series.description,
            "quality": "usable",
            "frames": str(len(files)),
        },
    )
    rid, _ = store.create_resource(
        Parent(project=project, experiment=eid, scan=str(series.number)),
        "DICOM",
        format="DICOM",
        content="RAW",
    )
    _put_all(store, rid, files, format="DICOM", content="RAW")


def _seed_nifti(store: Any, demo: DemoSession, eid: str, study: StudySpec) -> None:
    """A NIFTI resource on scan 1 of experiment ``eid`` (image + BIDS sidecar)."""
    from .store import Parent

    t1 = demo.series[0]
    rid, _ = store.create_resource(
        Parent(project=demo.project, experiment=eid, scan="1"),
        "NIFTI",
        format="NIFTI",
        content="NIFTI_RAW",
    )
    _put_all(
        store,
        rid,
        [
            (
                f"{demo.label}_{t1.description}.nii.gz",
                gzip.compress(nifti1_bytes(study.seed, t1), mtime=0),
            ),
            (
                f"{demo.label}_{t1.description}.json",
                json.dumps(
                    {
                        "Modality": "MR",
                        "SeriesDescription": t1.description,
                        "SeriesNumber": t1.number,
                        "EchoTime": 0.03,
                    },
                    indent=2,
                ).encode()
                + b"\n",
            ),
        ],
        format="NIFTI",
    )


def seed_prearchive(store: Any) -> None:
    """One READY session (``SUBJ04_MR1``) in DEMO1's prearchive."""
    demo = DEMO_PREARCHIVE
    study = demo.study()
    iso = f"{demo.date[:4]}-{demo.date[4:6]}-{demo.date[6:]}"
    # a pinned clock: uploaded, lastmod and the folder timestamp are the same on every run
    with Prearchive.for_store(store, clock=lambda: SEED_MTIME) as pa:
        s = pa.create_session(
            demo.project,
            demo.label,
            subject=demo.subject,
            tag=study.study_instance_uid,
            scan_date=iso,
            scan_time="09:30:00",
            modality="MR",
            source="demo-seed",
        )
        for gen in iter_study_files(study):
            pa.put_scan_file(
                s, str(gen.series.number), "DICOM", gen.name, gen.data, mtime=SEED_MTIME
            )
        pa.record_scans(
            s,
            [
                (str(x.number), x.description, x.description, "MR", _series_uid(study, x.number))
                for x in demo.series
            ],
        )
        pa.build(s)


def _series_uid(study: StudySpec, number: int) -> str:
    from .dicom import uid_for

    return uid_for(study.seed, "series", number)


# --------------------------------------------------------------------------------------------
# Tiny writers for other formats (no numpy / nibabel / PIL)
# --------------------------------------------------------------------------------------------


def nifti1_bytes(seed: str, series: SeriesSpec) -> bytes:
    """A valid single-file NIfTI-1 (``.nii``) image of ``series``: uint16, 1 mm voxels
    (3 mm slices), the same phantom as the DICOM, written with :mod:`struct`.

    Long because: the 348-byte header is one ``struct.pack`` listing every field in the
    standard's order (the formatter puts one value a line)."""
    rows, cols, n = series.rows, series.columns, series.n_images
    data = b"".join(pixel_data(seed, series, i) for i in range(n))  # little-endian uint16
    header = struct.pack(
        "<i10s18sihcB8h3f4h8f3fhBB4f2i80s24s2h6f12f16s4s",
        348,
        b"",
        b"",
        0,
        0,
        b"r",
        0,
        3,
        cols,
        rows,
        n,
        1,
        1,
        1,
        1,  # dim
        0.0,
        0.0,
        0.0,  # intent_p1..3
        0,
        512,
        16,
        0,  # intent_code, datatype=UINT16, bitpix, slice_start
        1.0,
        1.0,
        1.0,
        3.0,
        0.0,
        0.0,
        0.0,
        0.0,  # pixdim (qfac=1)
        352.0,
        1.0,
        0.0,  # vox_offset, scl_slope, scl_inter
        n - 1,
        0,
        2 | 8,  # slice_end, slice_code, xyzt_units (mm, s)
        0.0,
        0.0,
        0.0,
        0.0,  # cal_max, cal_min, slice_duration, toffset
        0,
        0,  # glmax, glmin
        f"xnatfs demo {series.description}".encode()[:80],
        b"",
        1,
        1,  # qform_code, sform_code (scanner)
        0.0,
        0.0,
        0.0,
        -cols / 2.0,
        -rows / 2.0,
        0.0,
        1.0,
        0.0,
        0.0,
        -cols / 2.0,
        0.0,
        1.0,
        0.0,
        -rows / 2.0,
        0.0,
        0.0,
        3.0,
        0.0,
        b"",
        b"n+1\x00",
    )
    return header + b"\x00\x00\x00\x00" + data


def _phantom_gray(rows: int, cols: int) -> bytes:
    """8-bit grey ramp with a disc, row-major."""
    out = bytearray()
    for y in range(rows):
        for x in range(cols):
            inside = (x - cols / 2) ** 2 + (y - rows / 2) ** 2 < (min(rows, cols) / 3) ** 2
            out.append(220 if inside else (x * 255 // max(cols - 1, 1)) // 3)
    return bytes(out)


def png_bytes(gray: bytes, width: int = 64, height: int = 64) -> bytes:
    """A valid 8-bit greyscale PNG."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    raw = b"".join(b"\x00" + gray[y * width : (y + 1) * width] for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _freesurfer_files() -> list[tuple[str, bytes]]:
    aseg = (
        "# Title Segmentation Statistics\n# ColHeaders Index SegId NVoxels Volume_mm3 "
        "StructName\n  1   4  6512  6512.0  Left-Lateral-Ventricle\n"
        "  2  17  4210  4210.0  Left-Hippocampus\n  3  53  4302  4302.0  "
        "Right-Hippocampus\n"
    )
    aparc = (
        "# Table of FreeSurfer cortical parcellation anatomical statistics\n"
        "# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg\n"
        "bankssts 1417 948 2279 2.571\nprecentral 7012 4638 13201 2.560\n"
    )
    return [
        ("stats/aseg.stats", aseg.encode()),
        ("stats/lh.aparc.stats", aparc.encode()),
        ("stats/rh.aparc.stats", aparc.replace("1417", "1390").encode()),
        ("scripts/recon-all.log", b"recon-all -s SUBJ01_MR1 finished without error\n"),
    ]
