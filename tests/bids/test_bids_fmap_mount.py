"""Multi-image series through FUSE: a GRE field map series (magnitude e1, e2 and phase in one
scan) shows every image dcm2niix made under its BIDS name once converted, each sidecar carries
``IntendedFor`` (and the phase difference ``EchoTime1``/``EchoTime2``), and pybids pairs the
field map with the bold run; a multi-echo bold shows its echoes (docs/BIDS.md "Multi-image
series", "Field maps")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.bids.conftest import (
    FMAP_AFTER,
    FMAP_BEFORE,
    GRE_FMAP_PARTS,
    add_gre_fieldmap,
    add_series,
    conversions,
    file_gets,
    series_files,
    tree,
    zip_gets,
)
from tests.helpers.waiting import wait_for
from xnatfs.bids import convert
from xnatfs.emulator.dicom import SeriesSpec
from xnatfs.emulator.seed import DemoSession, seed_session

pytestmark = pytest.mark.mount

T1 = SeriesSpec(1, "T1w", 3)
BOLD_URI = "bids::sub-SUBJ02/ses-MR2/func/sub-SUBJ02_ses-MR2_task-rest_bold.nii.gz"


def test_gre_fieldmap_every_image_echo_times_and_intended_for(
    make_emulator, make_mount, tmp_path: Path
) -> None:
    """The life of one field map scan: listed, its sidecar read, converted, every image shown.

    Long because: each step depends on the state the one before left (what is converted)."""
    emu = make_emulator()
    add_gre_fieldmap(emu.emu.store)
    m = make_mount(emu.url, "--listing-ttl", "1")
    root = m.path / ".bids" / "DEMO1"
    fmap = root / "sub-SUBJ02/ses-MR2/fmap"
    mark = emu.mark()
    # before the conversion: the scan's main image, named as the scan; listing fetches nothing
    before = [p for p in tree(root) if "/fmap/" in p]
    assert before == FMAP_BEFORE
    assert zip_gets(emu.since(mark)) == [] and file_gets(emu.since(mark)) == []
    # its sidecar: one DICOM header, no conversion, and IntendedFor from the plan
    early = json.loads((fmap / "sub-SUBJ02_ses-MR2_phasediff.json").read_bytes())
    assert early["IntendedFor"] == [BOLD_URI]
    assert "EchoTime" not in early and "ImageType" not in early  # not known per image yet
    assert conversions(m.path)["done"] == 0

    # the first read of the image converts the scan: the main image is the phase difference
    phasediff = (fmap / "sub-SUBJ02_ses-MR2_phasediff.nii.gz").read_bytes()
    assert conversions(m.path)["done"] == 1
    # then every image shows (from the next listing refresh), each with its sidecar
    wait_for(lambda: [p for p in tree(root) if "/fmap/" in p] == FMAP_AFTER, 30, "fmap images")

    # each image is what dcm2niix makes of the series locally
    local = tmp_path / "local"
    xnat = m.path / "DEMO1/subjects/SUBJ02/experiments/SUBJ02_MR2/scans/5/resources/DICOM/files"
    shutil.copytree(xnat, local / "dicom")
    (local / "out").mkdir()
    outputs = convert.run_dcm2niix(str(local / "dicom"), str(local / "out"), 120)
    assert sorted(n for n in outputs if n.endswith(".nii.gz")) == [
        "5_e1.nii.gz",
        "5_e2.nii.gz",
        "5_e2_ph.nii.gz",
    ]
    shown = {"magnitude1": "5_e1", "magnitude2": "5_e2", "phasediff": "5_e2_ph"}
    for kind, stem in shown.items():
        path = fmap / f"sub-SUBJ02_ses-MR2_{kind}.nii.gz"
        data = path.read_bytes()
        # the true size from a listing refresh on (docs/BIDS.md "Sizes before conversion")
        size = len(data)
        wait_for(lambda p=path, n=size: p.stat().st_size == n, 30, f"true size of {kind}")
        got, want = nib.load(str(path)), nib.load(str(local / "out" / f"{stem}.nii.gz"))
        assert got.shape == want.shape == (32, 32, 4), kind
        assert np.array_equal(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj)), kind
        meta = json.loads((fmap / f"sub-SUBJ02_ses-MR2_{kind}.json").read_bytes())
        theirs = json.loads(outputs[f"{stem}.json"])
        assert meta["EchoTime"] == theirs["EchoTime"] and meta["IntendedFor"] == [BOLD_URI]
    assert phasediff == (fmap / "sub-SUBJ02_ses-MR2_phasediff.nii.gz").read_bytes()
    diff = json.loads((fmap / "sub-SUBJ02_ses-MR2_phasediff.json").read_bytes())
    assert diff["EchoTime1"] == 0.00492 and diff["EchoTime2"] == 0.00738
    assert "P" in diff["ImageType"] or "PHASE" in diff["ImageType"]
    # stable: the same bytes on every read
    sidecar = fmap / "sub-SUBJ02_ses-MR2_phasediff.json"
    assert sidecar.read_bytes() == sidecar.read_bytes()
    assert os.getxattr(fmap / "sub-SUBJ02_ses-MR2_magnitude2.nii.gz", "user.xnat.scan") == b"5"
    assert conversions(m.path)["done"] == 1 and conversions(m.path)["failed"] == 0

    # pybids sees the field map, and (its index resolves IntendedFor's BIDS URIs) that each
    # of its images informs the bold run
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(str(root))
    assert "fmap" in layout.get_datatypes()
    assert sorted(layout.get_suffixes(datatype="fmap")) == ["magnitude1", "magnitude2", "phasediff"]
    bold = layout.get_file(
        str(root / "sub-SUBJ02/ses-MR2/func/sub-SUBJ02_ses-MR2_task-rest_bold.nii.gz")
    )
    informed_by = sorted(Path(f.path).name for f in bold.get_associations(kind="InformedBy"))
    assert informed_by == [f"sub-SUBJ02_ses-MR2_{k}.nii.gz" for k in shown], informed_by
    diff_file = layout.get(suffix="phasediff", extension=".nii.gz")[0]
    assert diff_file.get_metadata()["EchoTime2"] == 0.00738


CONFIG = {
    "descriptions": [
        {
            "id": "id_t1",
            "datatype": "anat",
            "suffix": "T1w",
            "criteria": {"SeriesDescription": "T1w_MPRAGE"},
        },
        {
            "id": "id_rest",
            "datatype": "func",
            "suffix": "bold",
            "custom_entities": "task-rest",
            "criteria": {"SeriesDescription": "rest_fMRI"},
        },
        {
            "datatype": "fmap",
            "suffix": "phasediff",
            "custom_entities": "acq-gre",
            "criteria": {"SeriesDescription": "gre_field_mapping*"},
            "sidecar_changes": {"IntendedFor": ["id_t1"]},
        },
    ]
}


def test_dcm2bids_config_intended_for_names_its_ids(
    make_emulator, make_mount, tmp_path: Path
) -> None:
    """With a dcm2bids config, ``sidecar_changes: {"IntendedFor": [ids]}`` decides (here the
    two T1w runs, not the bold the default rule would name)."""
    emu = make_emulator()
    add_gre_fieldmap(emu.emu.store)
    config = tmp_path / "dcm2bids.json"
    config.write_text(json.dumps(CONFIG))
    m = make_mount(emu.url, "--bids-config", str(config))
    fmap = m.path / ".bids/DEMO1/sub-SUBJ02/fmap"
    assert sorted(os.listdir(fmap)) == [
        "sub-SUBJ02_acq-gre_phasediff.json",
        "sub-SUBJ02_acq-gre_phasediff.nii.gz",
    ]
    doc = json.loads((fmap / "sub-SUBJ02_acq-gre_phasediff.json").read_bytes())
    assert doc["IntendedFor"] == [
        "bids::sub-SUBJ02/anat/sub-SUBJ02_run-1_T1w.nii.gz",
        "bids::sub-SUBJ02/anat/sub-SUBJ02_run-2_T1w.nii.gz",
    ]
    assert conversions(m.path)["done"] == 0


def test_multi_echo_bold_shows_each_echo_once_converted(
    make_emulator, make_mount, tmp_path: Path
) -> None:
    """A two-echo bold: before its conversion one ``…_bold`` (the first echo when read), then
    ``…_echo-1_bold`` and ``…_echo-2_bold``; the field map's IntendedFor follows the names."""
    emu = make_emulator()
    store = emu.emu.store
    store.create_project("MECHO", name="Multi-echo")
    seed_session(store, DemoSession("MECHO", "S1", "S1_MR1", "20240301", (T1,)))
    bold = SeriesSpec(2, "rest_ME_fMRI", 12, rows=32, columns=32, volumes=3)
    echoes = (("M", 1, "15"), ("M", 2, "35"))
    add_series(
        store, "MECHO", "S1_MR1", bold, series_files("t/me", bold, echoes, slices=4, volumes=3)
    )
    gre = SeriesSpec(3, "gre_field_mapping_phase", 4, rows=32, columns=32)
    add_series(store, "MECHO", "S1_MR1", gre, series_files("t/me", gre, GRE_FMAP_PARTS, 4))
    m = make_mount(emu.url, "--listing-ttl", "1")
    root = m.path / ".bids" / "MECHO"
    func = root / "sub-S1/func"
    fmap_json = root / "sub-S1/fmap/sub-S1_phasediff.json"
    assert sorted(os.listdir(func)) == [
        "sub-S1_task-rest_bold.json",
        "sub-S1_task-rest_bold.nii.gz",
    ]
    assert json.loads(fmap_json.read_bytes())["IntendedFor"] == [
        "bids::sub-S1/func/sub-S1_task-rest_bold.nii.gz"
    ]
    first = (func / "sub-S1_task-rest_bold.nii.gz").read_bytes()  # converts the scan
    after = [f"sub-S1_task-rest_echo-{e}_bold.{x}" for e in (1, 2) for x in ("json", "nii.gz")]
    wait_for(lambda: sorted(os.listdir(func)) == after, 30, "the echoes listed")
    assert first == (func / "sub-S1_task-rest_echo-1_bold.nii.gz").read_bytes()

    xnat = m.path / "MECHO/subjects/S1/experiments/S1_MR1/scans/2/resources/DICOM/files"
    shutil.copytree(xnat, tmp_path / "dicom")
    (tmp_path / "out").mkdir()
    convert.run_dcm2niix(str(tmp_path / "dicom"), str(tmp_path / "out"), 120)
    for echo, te in ((1, 0.015), (2, 0.035)):
        got = nib.load(str(func / f"sub-S1_task-rest_echo-{echo}_bold.nii.gz"))
        want = nib.load(str(tmp_path / "out" / f"2_e{echo}.nii.gz"))
        assert got.shape == want.shape == (32, 32, 4, 3)
        assert np.array_equal(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj))
        meta = json.loads((func / f"sub-S1_task-rest_echo-{echo}_bold.json").read_bytes())
        assert meta["EchoTime"] == te and meta["TaskName"] == "rest"
    assert json.loads(fmap_json.read_bytes())["IntendedFor"] == [
        f"bids::sub-S1/func/sub-S1_task-rest_echo-{e}_bold.nii.gz" for e in (1, 2)
    ]
    bids = pytest.importorskip("bids")
    assert bids.BIDSLayout(str(root)).get_echoes() == ["1", "2"]


SIEMENS_CONFIG = {
    "descriptions": [
        {
            "datatype": "fmap",
            "suffix": "magnitude1",
            "criteria": {
                "SeriesDescription": "gre_field_mapping",
                "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
            },
        },
        {
            "datatype": "fmap",
            "suffix": "phasediff",
            "criteria": {
                "SeriesDescription": "gre_field_mapping",
                "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"],
            },
        },
        {
            "datatype": "func",
            "suffix": "bold",
            "custom_entities": "task-rest",
            "criteria": {"SeriesDescription": "rest_fMRI"},
        },
    ]
}


def test_siemens_two_series_fieldmap_with_an_image_type_config(
    make_emulator, make_mount, tmp_path: Path
) -> None:
    """Siemens writes the magnitudes and the phase difference as two series of one description:
    a config tells them apart by ImageType (docs/BIDS.md "Known limits"); once converted the
    magnitude series shows magnitude1 and magnitude2, and the phase difference takes its
    EchoTime1/EchoTime2 from them."""
    emu = make_emulator()
    store = emu.emu.store
    mags = SeriesSpec(5, "gre_field_mapping", 8, rows=32, columns=32)
    add_series(store, "DEMO1", "SUBJ02_MR2", mags, series_files("t/s", mags, GRE_FMAP_PARTS[:2], 4))
    phase = SeriesSpec(6, "gre_field_mapping", 4, rows=32, columns=32)
    add_series(
        store, "DEMO1", "SUBJ02_MR2", phase, series_files("t/s", phase, GRE_FMAP_PARTS[2:], 4)
    )
    config = tmp_path / "dcm2bids.json"
    config.write_text(json.dumps(SIEMENS_CONFIG))
    m = make_mount(emu.url, "--bids-config", str(config), "--listing-ttl", "1")
    fmap = m.path / ".bids/DEMO1/sub-SUBJ02/fmap"
    names = ["sub-SUBJ02_magnitude1", "sub-SUBJ02_phasediff"]
    assert sorted(os.listdir(fmap)) == [f"{n}.{e}" for n in names for e in ("json", "nii.gz")]
    for name in names:
        (fmap / f"{name}.nii.gz").read_bytes()
    names.insert(1, "sub-SUBJ02_magnitude2")
    after = [f"{n}.{e}" for n in names for e in ("json", "nii.gz")]
    wait_for(lambda: sorted(os.listdir(fmap)) == after, 30, "magnitude2 listed")
    for name in names:
        doc = json.loads((fmap / f"{name}.json").read_bytes())
        assert doc["IntendedFor"] == ["bids::sub-SUBJ02/func/sub-SUBJ02_task-rest_bold.nii.gz"]
    # dcm2niix wrote no EchoTime1/EchoTime2 for the phase-only series (no vendor header
    # here): they come from the magnitudes' series, converted
    diff = json.loads((fmap / "sub-SUBJ02_phasediff.json").read_bytes())
    assert diff["EchoTime1"] == 0.00492 and diff["EchoTime2"] == 0.00738
    assert "P" in diff["ImageType"] and diff["EchoTime"] == 0.00738
    assert conversions(m.path)["done"] == 2
