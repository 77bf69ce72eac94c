"""Conversion on first read through FUSE: whole files on the first try, equal to dcm2niix on a
local copy, once per scan version, kept across mounts (issue 10 "How we will know")."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.bids.conftest import conversions, file_gets, per_scan, zip_gets
from tests.helpers.waiting import wait_for
from tests.mount.helpers import put_file
from xnatfs.bids import convert

pytestmark = pytest.mark.mount


def xnat_folder(mnt: Path, nii: Path, resource: str) -> Path:
    """The scan's resource folder on the XNAT side of the same mount, from the file's xattrs."""
    a = {k[len("user.xnat.") :]: os.getxattr(nii, k).decode() for k in os.listxattr(nii)}
    return (
        mnt
        / a["project"]
        / "subjects"
        / a["subject"]
        / "experiments"
        / a["experiment"]
        / "scans"
        / a["scan"]
        / "resources"
        / resource
        / "files"
    )


def local_dcm2niix(dicom_dir: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir(parents=True)
    outputs = convert.run_dcm2niix(str(dicom_dir), str(out), 120)
    image = sorted(n for n in outputs if n.endswith(".nii.gz"))[0]
    return nib.load(str(out / image))


@pytest.mark.slow
def test_first_read_converts_once_and_matches_dcm2niix(
    make_emulator, make_mount, tmp_path: Path
) -> None:
    emu = make_emulator()
    cache = tmp_path / "cache"
    m = make_mount(emu.url, cache=cache)
    subject = m.path / ".bids" / "DEMO1" / "sub-SUBJ02"
    listed = {p: p.stat().st_size for p in subject.rglob("*") if p.is_file()}
    mark = emu.mark()
    # the first access of anything in the subject is cp -r: whole files on the first try
    copy = tmp_path / "copy"
    res = subprocess.run(
        ["cp", "-r", str(subject), str(copy)], capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr
    records = emu.since(mark)
    images = sorted(subject.rglob("*.nii.gz"))
    assert len(images) == 5
    # one conversion per DICOM scan (MR1 T2w, MR2 T1w x2, bold); MR1's T1w is a NIfTI resource
    assert conversions(m.path)["done"] == 4 and conversions(m.path)["failed"] == 0
    # each DICOM file came once: one zip per converted scan, single files only for the header
    assert len(zip_gets(records)) <= 4
    singles = file_gets(records)
    dicom = [p for p in singles if p.endswith(".dcm")]
    assert len(singles) == len(set(singles)) and max(per_scan(dicom).values(), default=0) <= 1
    for path, size_before in listed.items():
        data = (copy / path.relative_to(subject)).read_bytes()
        assert size_before > 0, path
        if path.suffix != ".json":
            assert data == path.read_bytes(), path  # cp == a later plain read
            continue
        # cp read the sidecar before its image was converted (one DICOM header); now it is
        # dcm2niix's merged with ours: every key shown before keeps its value
        before, after = json.loads(data), json.loads(path.read_bytes())
        assert {k: v for k, v in before.items() if after.get(k) != v} in (
            {},
            {"ImageType": before.get("ImageType")},
        ), path
        assert "RepetitionTime" in before and after["RepetitionTime"] == before["RepetitionTime"]
    # every image of the dataset (the other subjects' are converted here, on this read)
    everything = sorted((m.path / ".bids" / "DEMO1").rglob("*.nii.gz"))
    assert len(everything) == 12
    for nii in everything:
        got = nib.load(str(nii))
        if os.getxattr(nii, "user.xnat.bids_source") == b"nifti-resource":
            src = xnat_folder(m.path, nii, "NIFTI")
            want_bytes = next(src.glob("*.nii.gz")).read_bytes()
            assert nii.read_bytes() == want_bytes
            continue
        local = tmp_path / "local" / nii.name
        assert not local.exists()
        shutil.copytree(xnat_folder(m.path, nii, "DICOM"), local / "dicom")
        want = local_dcm2niix(local / "dicom", local / "out")
        assert got.shape == want.shape, nii
        assert np.allclose(got.affine, want.affine, atol=1e-4), nii
        assert np.array_equal(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj)), nii
    status = subprocess.run(
        [sys.executable, "-m", "xnatfs", "status", str(m.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 'bids: {"done": 9, "failed": 0' in status.stdout, status.stdout + status.stderr
    bold = subject / "ses-MR2/func/sub-SUBJ02_ses-MR2_task-rest_bold.nii.gz"
    assert nib.load(str(bold)).shape == (32, 32, 8, 4)
    # stored a moment after its read ends (docs/BIDS.md "Sizes before conversion")
    wait_for(lambda: os.getxattr(bold, "user.xnat.conversion") == b"cached", 30, "bold stored")
    converted_bold = bold.read_bytes()
    m.umount()

    # a second mount of the same cache: no DICOM download, no conversion
    m2 = make_mount(emu.url, cache=cache, name="again")
    subject2 = m2.path / ".bids" / "DEMO1" / "sub-SUBJ02"
    mark = emu.mark()
    for path in sorted(subject2.rglob("*")):
        if path.is_file():
            if path.suffix != ".json":
                assert path.read_bytes() == (copy / path.relative_to(subject2)).read_bytes()
            assert path.stat().st_size == len(path.read_bytes()), path  # true sizes now
    records = emu.since(mark)
    assert file_gets(records) == [] and zip_gets(records) == []
    assert conversions(m2.path)["done"] == 0
    m2.umount()
    # `xnatfs cache` sees the conversions too (their own store, docs/BIDS.md)
    usage = _cache_cmd("usage", cache)
    bids_line = next(ln for ln in usage.stdout.splitlines() if "BIDS-converted files" in ln)
    assert int(bids_line.split(": ", 1)[1].split()[0]) > 0, usage.stdout
    verify = _cache_cmd("verify", cache)
    assert "BIDS-converted files checked" in verify.stdout and ", 0 bad" in verify.stdout

    # a re-upload of one file of the bold scan: a fresh conversion of that scan only
    m3 = make_mount(emu.url, cache=cache, name="third")
    bold3 = m3.path / bold.relative_to(m.path)
    uri = os.getxattr(bold3, "user.xnat.uri").decode()
    folder = xnat_folder(m3.path, bold3, "DICOM")
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(io.BytesIO(first.read_bytes()))
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 7
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    resource = first.parent.parent.name
    put_file(emu.url, f"{uri}/resources/{resource}/files/{first.name}", buf.getvalue())
    m3.umount()
    m4 = make_mount(emu.url, cache=cache, name="fourth")
    bold4 = m4.path / bold.relative_to(m.path)
    again = bold4.read_bytes()
    assert again != converted_bold
    assert conversions(m4.path)["done"] == 1
    t1 = next((m4.path / ".bids/DEMO1/sub-SUBJ02/ses-MR2/anat").glob("*run-1_T1w.nii.gz"))
    assert t1.read_bytes() == (copy / "ses-MR2/anat" / t1.name).read_bytes()
    assert conversions(m4.path)["done"] == 1
    m4.umount()
    cleared = _cache_cmd("clear", cache)
    assert "BIDS-converted files from" in cleared.stdout, cleared.stdout
    assert ": 0 BIDS-converted files" in cleared.stdout and ": 0 files" in cleared.stdout


def _cache_cmd(command: str, cache: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "cache", command, "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res
