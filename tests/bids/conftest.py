"""Shared pieces of the BIDS view tests: the expected demo dataset, a GRE field map added to it
(synthetic DICOM: two magnitude echoes and a phase image in one series) and access-log
helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple
from urllib.parse import unquote

import pytest

from tests.helpers.optional import sdcflows_python
from xnatfs.emulator.dicom import (
    SeriesSpec,
    StudySpec,
    dataset_bytes,
    dicom_file_name,
    make_dataset,
    uid_for,
)
from xnatfs.emulator.seed import add_dicom_series


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """The SDCFlows check (test_sdcflows_mount.py) needs SDCFlows, not a dependency of
    xnatfs: without it the check is deselected, and the run says so in one line (the report
    header, ``tests/conftest.py``; the suite skips only where /dev/fuse is missing)."""
    drop = [it for it in items if Path(str(it.fspath)).name == "test_sdcflows_mount.py"]
    if not drop or sdcflows_python():
        return
    config.hook.pytest_deselected(items=drop)
    items[:] = [it for it in items if it not in drop]


#: the field map scan added to SUBJ02_MR2 by :func:`add_series` (``bids_mount``): the
#: heuristic names it ``phasediff`` ("phase" in the description)
FMAP_SCAN = "5"
FMAP_DESCRIPTION = "gre_field_mapping_phase"
#: (ImageType part, echo number, echo time in ms) of each image of a GRE field map series
GRE_FMAP_PARTS: Tuple[Tuple[str, int, str], ...] = (
    ("M", 1, "4.92"),
    ("M", 2, "7.38"),
    ("P", 2, "7.38"),
)

#: every file of MNT/.bids/DEMO1 with the demo seed and the heuristic (xnatfs/emulator/seed.py)
DEMO1_FILES = sorted(
    ["dataset_description.json", "README", "participants.json", "participants.tsv"]
    + [
        f"sub-{s}/ses-MR1/anat/sub-{s}_ses-MR1_{k}.{e}"
        for s in ("SUBJ01", "SUBJ02", "SUBJ03")
        for k in ("T1w", "T2w")
        for e in ("nii.gz", "json")
    ]
    + [
        f"sub-{s}/ses-MR2/{f}"
        for s in ("SUBJ02", "SUBJ03")
        for f in (
            f"anat/sub-{s}_ses-MR2_run-1_T1w.nii.gz",
            f"anat/sub-{s}_ses-MR2_run-1_T1w.json",
            f"anat/sub-{s}_ses-MR2_run-2_T1w.nii.gz",
            f"anat/sub-{s}_ses-MR2_run-2_T1w.json",
            f"func/sub-{s}_ses-MR2_task-rest_bold.nii.gz",
            f"func/sub-{s}_ses-MR2_task-rest_bold.json",
        )
    ]
)


#: the files of the field map before its scan is converted (its main image, named as the scan)
FMAP_BEFORE = sorted(
    f"sub-SUBJ02/ses-MR2/fmap/sub-SUBJ02_ses-MR2_phasediff.{e}" for e in ("nii.gz", "json")
)
#: and once converted: every image dcm2niix made, under its BIDS name
FMAP_AFTER = sorted(
    f"sub-SUBJ02/ses-MR2/fmap/sub-SUBJ02_ses-MR2_{k}.{e}"
    for k in ("magnitude1", "magnitude2", "phasediff")
    for e in ("nii.gz", "json")
)


def series_files(
    seed: str,
    series: SeriesSpec,
    parts: Sequence[Tuple[str, int, str]],
    slices: int,
    volumes: int = 1,
) -> List[Tuple[str, bytes]]:
    """Synthetic DICOM of one series holding several images: for each (ImageType part "M"/"P",
    EchoNumbers, EchoTime ms) of ``parts``, ``slices`` slices (times ``volumes``, 4-D) — what
    a GRE field map (or a multi-echo series) is on the scanner.  (file name, bytes), XNAT's
    naming."""
    study = StudySpec(seed=seed, patient_name="S", patient_id="S_MR")
    one = SeriesSpec(
        series.number,
        series.description,
        slices * volumes,
        series.rows,
        series.columns,
        volumes=volumes,
    )
    out = []
    for k, (part, echo, te) in enumerate(parts):
        for sl in range(slices * volumes):
            ds = make_dataset(study, one, sl)
            idx = k * slices * volumes + sl
            ds.SOPInstanceUID = uid_for(seed, "sop", series.number, idx)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = idx + 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", part, "ND"]
            ds.EchoNumbers = echo
            ds.EchoTime = te
            name = dicom_file_name(
                study.study_instance_uid, series.number, idx + 1, ds.SOPInstanceUID
            )
            out.append((name, dataset_bytes(ds)))
    return out


def add_series(
    store: Any,
    project: str,
    experiment: str,
    series: SeriesSpec,
    files: Sequence[Tuple[str, bytes]],
) -> None:
    """A scan of ``files`` (its DICOM resource) on an experiment of the emulator's store."""
    eid = store.find_experiment(project, experiment).id
    add_dicom_series(store, project, eid, series, files)


def add_gre_fieldmap(store: Any) -> None:
    """DEMO1's SUBJ02_MR2 gets scan 5, a GRE field map (magnitude e1, e2 and phase)."""
    series = SeriesSpec(int(FMAP_SCAN), FMAP_DESCRIPTION, 4, rows=32, columns=32)
    files = series_files("xnatfs-test/fmap", series, GRE_FMAP_PARTS, slices=4)
    add_series(store, "DEMO1", "SUBJ02_MR2", series, files)


def tree(root: Path) -> List[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            out.append(str(Path(dirpath, name).relative_to(root)))
    return sorted(out)


def file_gets(records: Iterable[tuple]) -> List[str]:
    """Single-file downloads (``.../files/<name>``), decoded paths."""
    out = []
    for method, path_qs, status, _ in records:
        path = unquote(path_qs.split("?", 1)[0])
        if method == "GET" and "/files/" in path and status == 200:
            out.append(path)
    return out


def zip_gets(records: Iterable[tuple]) -> List[str]:
    return [unquote(p) for m, p, s, _ in records if m == "GET" and "format=zip" in p]


def per_scan(paths: Iterable[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for p in paths:
        scan = p.split("/resources/", 1)[0]
        out[scan] = out.get(scan, 0) + 1
    return out


def conversions(mnt: Path) -> Dict[str, int]:
    return json.loads((mnt / ".xnatfs" / "stats").read_text())["bids"]


@pytest.fixture
def bids_mount(make_emulator, make_mount):
    """A demo emulator with a GRE field map in SUBJ02_MR2 (:func:`add_gre_fieldmap`) and a
    mount of it (fresh cache)."""
    emu = make_emulator()
    add_gre_fieldmap(emu.emu.store)
    m = make_mount(emu.url)
    return emu, m
