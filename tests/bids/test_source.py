"""The project plan and XNAT's BIDS map lookup, against a stub client (no server needed; the
same lookup against the emulator's config service: test_bids_xnatmap_mount.py)."""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from typing import Any, Dict, List

import pytest

from xnatfs import deadline
from xnatfs.bids.mapping import Mapper
from xnatfs.bids.names import label_hash
from xnatfs.bids.source import Source
from xnatfs.cache.content import ContentCache
from xnatfs.xnat.models import Experiment, FileEntry, Project, Resource, Scan, Subject


class StubClient:
    def __init__(self, scans: Dict[str, List[Scan]], maps: Dict[str, Any]) -> None:
        self.scans, self.maps, self.calls = scans, maps, []

    def config_json(self, tool: str, path: str, project: Any = None) -> Any:
        uri = (f"/data/projects/{project}" if project else "/data") + f"/config/{tool}/{path}"
        self.calls.append(uri)
        return self.maps.get(uri)

    def list_subjects(self, project: str) -> List[Subject]:
        return [
            Subject("S1", "A_1", project),
            Subject("S2", "A-1", project),
            Subject("S3", "B", project),
        ]

    def list_experiments(self, project: str, subject: str) -> List[Experiment]:
        label = {s.id: s.label for s in self.list_subjects(project)}[subject]
        return [
            Experiment(
                f"{subject}E{i}",
                f"{label}_V{i}",
                project,
                subject,
                "xnat:mrSessionData",
                f"2024-01-0{i}",
                f"/data/experiments/{subject}E{i}",
            )
            for i in ((1, 2) if subject == "S1" else (1,))
        ]

    def list_scans(self, uri: str) -> List[Scan]:
        return self.scans.get(uri.rsplit("/", 1)[1], [])


def scan(i: str, desc: str) -> Scan:
    return Scan(i, desc, desc, "xnat:mrScanData", "usable", f"/x/scans/{i}")


def test_plan_runs_sessions_labels_and_the_xnat_map() -> None:
    scans = {
        "S1E1": [scan("1", "MPRAGE"), scan("2", "BOLD"), scan("3", "BOLD"), scan("10", "MPRAGE")],
        "S1E2": [scan("1", "MPRAGE")],
        "S2E1": [scan("1", "MPRAGE")],
        "S3E1": [scan("1", "localizer")],
    }
    maps = {
        "/data/projects/P/config/bids/bidsmap": [
            {"series_description": "bold", "bidsname": "task-motor_bold"}
        ]
    }
    c = StubClient(scans, maps)
    plan = Source(c, None, Mapper()).plan(Project("P", "Proj", uri="/data/projects/P"))
    assert c.calls == ["/data/projects/P/config/bids/bidsmap", "/data/config/bids/bidsmap"]
    assert plan.sessions_shown  # S1 has two sessions with scans shown
    a1, a2 = (label_hash("A_1"), label_hash("A-1"))
    got = {
        (s.xnat_subject, s.xnat_session, s.scan_id): (s.stem, s.source)
        for f in plan.folders.values()
        for s in f
    }
    assert got == {
        ("A_1", "A_1_V1", "1"): (f"sub-A1{a1}_ses-V1_run-1_T1w", "heuristic"),
        ("A_1", "A_1_V1", "10"): (f"sub-A1{a1}_ses-V1_run-2_T1w", "heuristic"),  # scan order
        ("A_1", "A_1_V1", "2"): (f"sub-A1{a1}_ses-V1_task-motor_run-1_bold", "xnat-bidsmap"),
        ("A_1", "A_1_V1", "3"): (f"sub-A1{a1}_ses-V1_task-motor_run-2_bold", "xnat-bidsmap"),
        ("A_1", "A_1_V2", "1"): (f"sub-A1{a1}_ses-V2_T1w", "heuristic"),
        ("A-1", "A-1_V1", "1"): (f"sub-A1{a2}_ses-V1_T1w", "heuristic"),
    }
    # A_1 and A-1 both clean to A1: neither was valid, so both carry their hash
    subs = sorted({s.subject for f in plan.folders.values() for s in f})
    assert len(subs) == 2 and all(x.startswith("A1") and len(x) == 8 for x in subs)
    assert [r[2:] for r in plan.unmatched] == [("1", "localizer", "localizer/scout/report series")]
    assert [p for p, _ in plan.participants] == sorted(subs)


class _HeldContent:
    """A content cache whose download never arrives: each read records its deadline and
    answers what a read answers at that deadline (ETIMEDOUT)."""

    def __init__(self) -> None:
        self.deadlines: List[float] = []

    def open(self, key: Any) -> Any:
        outer = self

        class Handle:
            def read(self, offset: int, size: int, deadline: float) -> bytes:
                outer.deadlines.append(deadline)
                raise TimeoutError(errno.ETIMEDOUT, "not there in time")

            def close(self) -> None:
                pass

        return Handle()


class _DicomClient(StubClient):
    def list_resources(self, uri: str) -> List[Resource]:
        return [Resource("1", "DICOM", format="DICOM", uri=f"{uri}/resources/1")]

    def list_files(self, uri: str) -> List[FileEntry]:
        return [FileEntry("a.dcm", 100, f"{uri}/files/a.dcm", digest="0" * 32)]


def test_a_header_a_mapping_criterion_reads_ends_with_the_listings_call() -> None:
    """A dcm2bids criterion on a DICOM field reads one header per scan while the project
    folder is listed: each read waited a fresh 60 s (the old code), so a listing of many
    scans went on long past its call's --timeout."""
    content = _HeldContent()
    src = Source(_DicomClient({}, {}), content, Mapper(config=None))
    with deadline.scope(2.0) as end:
        with pytest.raises(TimeoutError):
            src._header_fn("/data/experiments/E1/scans/1")()
    assert content.deadlines and content.deadlines[0] <= end
    content.deadlines.clear()
    outside = time.monotonic()
    with pytest.raises(TimeoutError):  # outside a filesystem call: its own bound
        src._header_fn("/data/experiments/E1/scans/1")()
    assert content.deadlines[0] >= outside + 30


class _SameLabels(StubClient):
    """Subject S01 has experiments ``S01_MR1`` and ``MR1`` (distinct XNAT labels, one session
    label after the subject's prefix is dropped); two subjects share the label ``DUP`` (XNAT
    forbids it, a hostile or broken server may list it)."""

    def list_subjects(self, project: str) -> List[Subject]:
        return [
            Subject("S1", "S01", project),
            Subject("X1", "DUP", project),
            Subject("X2", "DUP", project),
        ]

    def list_experiments(self, project: str, subject: str) -> List[Experiment]:
        if subject == "S1":
            labels = [("E1", "S01_MR1"), ("E2", "MR1")]
        else:
            labels = [(f"{subject}E", "DUP_MR1")]
        return [
            Experiment(
                eid,
                label,
                project,
                subject,
                "xnat:mrSessionData",
                "2024-01-01",
                f"/data/experiments/{eid}",
            )
            for eid, label in labels
        ]

    def list_scans(self, uri: str) -> List[Scan]:
        return [Scan("1", "MPRAGE", "MPRAGE", "xnat:mrScanData", "usable", f"{uri}/scans/1")]


def test_two_objects_with_one_label_never_share_a_folder() -> None:
    """Experiments ``S01_MR1`` and ``MR1`` of one subject both showed as ``ses-MR1``: both T1w
    were planned as ``sub-S01_ses-MR1_T1w``, one hiding the other; two subjects listed with one
    label shared ``sub-DUP``."""
    plan = Source(_SameLabels({}, {}), None, Mapper()).plan(
        Project("P", "P", uri="/data/projects/P")
    )
    stems = [s.stem for f in plan.folders.values() for s in f]
    assert len(stems) == 4 and len(set(stems)) == 4, stems
    by_exp = {
        s.experiment_uri.rsplit("/", 1)[1]: (s.subject, s.session)
        for f in plan.folders.values()
        for s in f
    }
    assert by_exp["E1"] == ("S01", "S01MR1") and by_exp["E2"] == ("S01", "MR1"), by_exp
    assert by_exp["X1E"][0] != by_exp["X2E"][0], by_exp
    assert len({p for p, _ in plan.participants}) == 3
    # listing order changes nothing
    again = Source(_Reversed({}, {}), None, Mapper()).plan(
        Project("P", "P", uri="/data/projects/P")
    )
    assert sorted(s.stem for f in again.folders.values() for s in f) == sorted(stems)


class _Reversed(_SameLabels):
    def list_subjects(self, project: str) -> List[Subject]:
        return list(reversed(super().list_subjects(project)))

    def list_experiments(self, project: str, subject: str) -> List[Experiment]:
        return list(reversed(super().list_experiments(project, subject)))


def test_a_marked_file_row_is_never_the_image_nor_a_companion() -> None:
    """A files row the client marked (``problem``: a URI of another project, a size outside
    0..2^63) was taken as the scan's NIfTI image or its JSON by the BIDS view, which then read
    it through the content cache: the cross-project file the main view refuses was fetched
    here.  Marked rows are left out as they are for the DICOM series."""
    from xnatfs.xnat import parse

    res_uri = "/data/experiments/E1/scans/1/resources/7"
    rows = [
        {"Name": "a.nii.gz", "Size": "10", "URI": "/data/projects/B/resources/9/files/a.nii.gz"},
        {"Name": "a.json", "Size": "10", "URI": "/data/projects/B/resources/9/files/a.json"},
        {"Name": "b.nii.gz", "Size": "10", "URI": f"{res_uri}/files/b.nii.gz"},
        {"Name": "b.json", "Size": "-5", "URI": f"{res_uri}/files/b.json"},
    ]

    class Client:
        def list_resources(self, uri: str) -> List[Resource]:
            return [Resource("7", "NIFTI", "NIFTI", "", "", 4, 40, res_uri)]

        def list_files(self, uri: str) -> List[FileEntry]:
            return [parse.file_from_row(r, uri) for r in rows]

    files = Source(Client(), None, Mapper()).scan_files("/data/experiments/E1/scans/1")
    assert files.nifti is not None and files.nifti.path == "b.nii.gz"
    assert dict(files.companions) == {}


class _ServedContent:
    """A content cache holding one file's bytes; counts the bytes its handles hand out."""

    def __init__(self, data: bytes) -> None:
        self.data, self.served = data, 0

    def open(self, key: Any) -> Any:
        outer = self

        class Handle:
            def read(self, offset: int, size: int, deadline: float) -> bytes:
                chunk = outer.data[offset : offset + size]
                outer.served += len(chunk)
                return chunk

            def close(self) -> None:
                pass

        return Handle()


def test_a_dicom_header_is_read_up_to_the_pixel_data_not_whole() -> None:
    """The header of a scan's first DICOM file (the BIDS sidecar's keys, mapping criteria) was
    read by loading the whole file into memory: an enhanced (multi-frame) DICOM is hundreds of
    MB, for a few KiB of header. Now pydicom reads through the cache's handle and stops at
    the pixel data."""
    from xnatfs.bids import sidecar
    from xnatfs.emulator import dicom

    study = dicom.StudySpec(
        seed="HDR", patient_name="P", patient_id="P", series=(dicom.SeriesSpec(1, "T1w", 1),)
    )
    ds = dicom.make_dataset(study, study.series[0], 0)
    ds.PixelData = bytes(32 << 20)  # 32 MiB of frames
    data = dicom.dataset_bytes(ds)
    content = _ServedContent(data)

    class Client(_DicomClient):
        def list_files(self, uri: str) -> List[FileEntry]:
            return [FileEntry("a.dcm", len(data), f"{uri}/files/a.dcm", digest="0" * 32)]

    src = Source(Client({}, {}), content, Mapper(config=None))
    doc = src.header("/data/experiments/E1/scans/1", None, time.monotonic() + 30)
    assert doc == sidecar.from_bytes(data) and doc["SeriesDescription"] == "T1w", doc
    assert content.served < 2 << 20, content.served


def _dicom_file(desc: str, pixels: int) -> bytes:
    from xnatfs.emulator import dicom

    study = dicom.StudySpec(
        seed="HDR", patient_name="P", patient_id="P", series=(dicom.SeriesSpec(1, desc, 1),)
    )
    ds = dicom.make_dataset(study, study.series[0], 0)
    ds.PixelData = bytes(pixels)
    return dicom.dataset_bytes(ds)


class _FirstReadGate:
    """A content cache whose handles set ``read`` once a reader got bytes."""

    def __init__(self, cache: Any) -> None:
        self.cache, self.read = cache, threading.Event()

    def open(self, key: Any) -> Any:
        handle, gate = self.cache.open(key), self.read

        class Handle:
            def read(self, offset: int, size: int, deadline: float) -> bytes:
                data: bytes = handle.read(offset, size, deadline)
                if data:
                    gate.set()
                return data

            def close(self) -> None:
                handle.close()

        return Handle()


def test_a_header_is_never_taken_from_bytes_that_fail_their_md5(tmp_path, caplog) -> None:
    """A scan's first DICOM file is 3 MiB; XNAT lists the MD5 of a "T1w" file and the server
    sends a file of the same size whose SeriesDescription is "EVIL".  The header was parsed
    from the bytes up to the pixel data, before the download's size and MD5 verdict (only a
    read of the last byte waits for it), and kept: ``header()`` answered "EVIL" before and
    after the file itself read as EIO, for the sidecar and the mapping criteria.  Now it waits
    for the verdict: EIO, and nothing kept."""
    listed = _dicom_file("T1w", 3 << 20)
    served = _dicom_file("EVIL", 3 << 20)
    assert len(listed) == len(served)
    gets: List[str] = []

    def fetch(uri: str, sink: Any) -> None:
        # the first MiB (the whole header) at once; the rest once a reader got bytes
        gets.append(uri)
        sink(served[: 1 << 20])
        assert gate.read.wait(30)
        sink(served[1 << 20 :])

    class Client(_DicomClient):
        def list_files(self, uri: str) -> List[FileEntry]:
            digest = hashlib.md5(listed).hexdigest()
            return [FileEntry("a.dcm", len(listed), f"{uri}/files/a.dcm", digest=digest)]

    cache = ContentCache(str(tmp_path / "c"), size_limit=1 << 30, fetch=fetch)
    cache.start()
    gate = _FirstReadGate(cache)
    scan_uri = "/data/experiments/E1/scans/1"
    try:
        src = Source(Client({}, {}), gate, Mapper(config=None))
        with pytest.raises(OSError) as refused:
            src.header(scan_uri, None, time.monotonic() + 30)
        assert refused.value.errno == errno.EIO, refused.value
        files = src.scan_files(scan_uri)
        assert not src.has_header(scan_uri, files)  # nothing kept
        handle = cache.open(src.file_key(files.dicom[0]))
        try:
            with pytest.raises(OSError):  # the file itself: EIO as well
                handle.read(0, len(listed) + 1, time.monotonic() + 30)
        finally:
            handle.close()
        with pytest.raises(OSError) as again:
            src.header(scan_uri, files, time.monotonic() + 30)
        assert again.value.errno == errno.EIO, again.value
        assert not src.has_header(scan_uri, files)
    finally:
        cache.close()
    assert len(gets) >= 2  # asked the server again each time: nothing of it cached
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors and all("a.dcm" in r.getMessage() for r in errors), errors
