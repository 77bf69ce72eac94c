"""The BIDS view through FUSE against the emulator (issue 10 "How we will know")."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.bids.conftest import (
    DEMO1_FILES,
    FMAP_BEFORE,
    conversions,
    file_gets,
    per_scan,
    tree,
    zip_gets,
)

pytestmark = pytest.mark.mount


def test_listing_the_view_downloads_nothing_and_converts_nothing(bids_mount) -> None:
    emu, m = bids_mount
    mark = emu.mark()
    root = m.path / ".bids" / "DEMO1"
    # the field map is not converted yet: its main image only (docs/BIDS.md)
    files = sorted(DEMO1_FILES + FMAP_BEFORE)
    assert tree(root) == files
    sizes = {p: (root / p).stat().st_size for p in files}
    assert all(s > 0 for s in sizes.values()), sizes
    du = subprocess.run(["du", "-s", str(root)], capture_output=True, text=True, timeout=60)
    assert du.returncode == 0, du.stderr
    found = subprocess.run(
        ["find", str(root), "-type", "f"], capture_output=True, text=True, timeout=60
    )
    assert sorted(str(Path(p).relative_to(root)) for p in found.stdout.split()) == files
    records = emu.since(mark)
    assert file_gets(records) == [] and zip_gets(records) == []
    assert conversions(m.path)["done"] == 0 and conversions(m.path)["running"] == 0
    # the source of every file, as xattrs
    bold = root / "sub-SUBJ02/ses-MR2/func/sub-SUBJ02_ses-MR2_task-rest_bold.nii.gz"
    attrs = {k: os.getxattr(bold, k).decode() for k in os.listxattr(bold)}
    assert attrs["user.xnat.subject"] == "SUBJ02" and attrs["user.xnat.experiment"] == "SUBJ02_MR2"
    assert attrs["user.xnat.scan"] == "4" and attrs["user.xnat.uri"].endswith("/scans/4")
    assert attrs["user.xnat.conversion"] == "absent"
    assert ".bids" in os.listdir(m.path)


def test_unmatched_report_is_unlisted(bids_mount) -> None:
    _, m = bids_mount
    root = m.path / ".bids" / "DEMO1"
    assert ".xnatfs-unmatched.tsv" not in os.listdir(root)
    rows = [line.split("\t") for line in (root / ".xnatfs-unmatched.tsv").read_text().splitlines()]
    assert rows[0] == ["subject", "session", "scan", "description", "reason"]
    left = {(r[0], r[1], r[2]): r[4] for r in rows[1:]}
    assert set(left) == {
        ("SUBJ01", "SUBJ01_MR1", "3"),
        ("SUBJ02", "SUBJ02_MR1", "3"),
        ("SUBJ03", "SUBJ03_MR1", "3"),
        ("SUBJ02", "SUBJ02_MR2", "1"),
        ("SUBJ03", "SUBJ03_MR2", "1"),
    }
    assert "task" in left[("SUBJ01", "SUBJ01_MR1", "3")]
    assert "localizer" in left[("SUBJ02", "SUBJ02_MR2", "1")]


def test_writes_are_erofs(bids_mount) -> None:
    _, m = bids_mount
    root = m.path / ".bids" / "DEMO1"
    nii = root / "sub-SUBJ01/ses-MR1/anat/sub-SUBJ01_ses-MR1_T2w.nii.gz"
    attempts = [
        lambda: (root / "new.txt").write_bytes(b"x"),
        lambda: (root / "sub-SUBJ09").mkdir(),
        lambda: nii.unlink(),
        lambda: os.rename(nii, nii.with_name("x.nii.gz")),
        lambda: open(nii, "r+b").close(),
        lambda: os.truncate(root / "README", 0),
        lambda: (root / "sub-SUBJ01").rmdir(),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, info.value


def test_dataset_files(bids_mount) -> None:
    _, m = bids_mount
    root = m.path / ".bids" / "DEMO1"
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["Name"] == "Demo project 1" and desc["DatasetType"] == "raw"
    assert desc["BIDSVersion"] and desc["GeneratedBy"][0]["Name"] == "xnatfs"
    assert desc["Authors"] == ["Ada Lovelace"]  # the project's PI
    assert (root / "participants.tsv").read_text().splitlines() == [
        "participant_id",
        "sub-SUBJ01",
        "sub-SUBJ02",
        "sub-SUBJ03",
    ]
    assert "participant_id" in json.loads((root / "participants.json").read_text())
    assert "DEMO1" in (root / "README").read_text()


def test_pybids_indexes_the_view_with_one_header_per_scan(bids_mount) -> None:
    bids = pytest.importorskip("bids")
    emu, m = bids_mount
    root = m.path / ".bids" / "DEMO1"
    mark = emu.mark()
    layout = bids.BIDSLayout(str(root))
    assert sorted(layout.get_subjects()) == ["SUBJ01", "SUBJ02", "SUBJ03"]
    assert sorted(layout.get_sessions()) == ["MR1", "MR2"]
    assert sorted(layout.get_datatypes()) == ["anat", "fmap", "func"]
    assert sorted(layout.get_suffixes(datatype=["anat", "func"])) == ["T1w", "T2w", "bold"]
    assert sorted(layout.get_runs()) == [1, 2]
    assert layout.get_tasks() == ["rest"]
    bold = layout.get(suffix="bold", extension=".nii.gz")
    assert len(bold) == 2
    for f in bold:
        meta = f.get_metadata()
        assert meta["RepetitionTime"] == 2.0 and meta["TaskName"] == "rest", meta
    for f in layout.get(extension=".nii.gz", datatype=["anat", "func"]):
        assert "EchoTime" in f.get_metadata(), f.path
    # the field map, before its conversion: named as its scan, IntendedFor the session's bold;
    # no EchoTime/ImageType yet (the one header read is of one of its images, any of them)
    (fmap,) = layout.get(datatype="fmap", extension=".nii.gz")
    assert fmap.entities["suffix"] == "phasediff"
    assert "EchoTime" not in fmap.get_metadata() and "ImageType" not in fmap.get_metadata()
    assert fmap.get_metadata()["RepetitionTime"] > 0
    assert fmap.get_metadata()["IntendedFor"] == [
        "bids::sub-SUBJ02/ses-MR2/func/sub-SUBJ02_ses-MR2_task-rest_bold.nii.gz"
    ]
    informed = layout.get_file(bold[0].path if "SUBJ02" in bold[0].path else bold[1].path)
    assert [f.path for f in informed.get_associations(kind="InformedBy")] == [fmap.path]
    records = emu.since(mark)
    assert zip_gets(records) == []
    # one DICOM file per scan (its header); a NIfTI resource's own JSON is read too
    counts = per_scan(p for p in file_gets(records) if p.endswith(".dcm"))
    assert len(counts) == 13 and max(counts.values()) <= 1, counts  # 13 scans shown
    assert conversions(m.path)["done"] == 0
