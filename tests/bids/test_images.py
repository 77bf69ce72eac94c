"""Naming the images of a multi-image conversion (xnatfs/bids/images.py), the IntendedFor ids
of a dcm2bids config (mapping.py), and what dcm2niix really makes of the synthetic GRE field
map of tests/bids/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from tests.bids.conftest import GRE_FMAP_PARTS, series_files
from xnatfs.bids import convert
from xnatfs.bids.images import Image, bids_images, classify, from_outputs, primary
from xnatfs.bids.mapping import Dcm2BidsConfig, ScanFacts
from xnatfs.bids.names import BidsName, file_stem
from xnatfs.emulator.dicom import SeriesSpec


def sidecar(**keys: Any) -> bytes:
    return json.dumps(keys).encode()


def stems(scan: BidsName, outputs: Dict[str, bytes]) -> List[str]:
    named = bids_images(scan, from_outputs(outputs))
    return [f"{n.image.stem}->{file_stem(dict(n.name.entities), n.name.suffix)}" for n in named]


def test_classify_reads_dcm2niix_suffixes_then_the_sidecar() -> None:
    assert classify("_e2_ph", {}) == Image("_e2_ph", 2, "phase")
    assert classify("_e1", {"EchoTime": 0.00492}) == Image("_e1", 1, "mag", 0.00492)
    assert classify("_real", {}).part == "real" and classify("_imaginary", {}).part == "imag"
    # no suffix: the sidecar says (Philips/GE write phase in one series with no _ph)
    assert classify("", {"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"], "EchoNumber": 2}) == (
        Image("", 2, "phase")
    )
    assert classify("_c3", {}).unknown  # a coil image: not a name this rule gives


GRE = {
    "5_e1.nii.gz": b"",
    "5_e1.json": sidecar(EchoNumber=1, EchoTime=0.00492, ImageType=["M"]),
    "5_e2.nii.gz": b"",
    "5_e2.json": sidecar(EchoNumber=2, EchoTime=0.00738, ImageType=["M"]),
    "5_e2_ph.nii.gz": b"",
    "5_e2_ph.json": sidecar(EchoNumber=2, EchoTime=0.00738, ImageType=["P", "PHASE"]),
}


def test_gre_fieldmap_magnitudes_and_phase_difference() -> None:
    scan = BidsName("fmap", "phasediff", (("acq", "gre"),))
    named = bids_images(scan, from_outputs(GRE))
    assert [(n.image.stem, n.name.suffix, dict(n.name.entities), dict(n.extra)) for n in named] == [
        ("5_e2_ph", "phasediff", {"acq": "gre"}, {"EchoTime1": 0.00492, "EchoTime2": 0.00738}),
        ("5_e1", "magnitude1", {"acq": "gre"}, {}),
        ("5_e2", "magnitude2", {"acq": "gre"}, {}),
    ]
    # the scan's own name stays on the same image before and after the conversion
    main = primary(named)
    assert main is not None and main.name == scan and main.image.stem == "5_e2_ph"
    # the same series mapped as a magnitude: the names follow the images, not the mapping
    assert stems(BidsName("fmap", "magnitude1"), GRE) == [
        "5_e1->magnitude1",
        "5_e2->magnitude2",
        "5_e2_ph->phasediff",
    ]


def test_two_phases_are_phase1_phase2_and_a_magnitude_only_series() -> None:
    outputs = {
        "7_e1.nii.gz": b"",
        "7_e2.nii.gz": b"",
        "7_e1_ph.nii.gz": b"",
        "7_e2_ph.nii.gz": b"",
    }
    assert stems(BidsName("fmap", "phasediff"), outputs) == [
        "7_e1->magnitude1",
        "7_e2->magnitude2",
        "7_e1_ph->phase1",
        "7_e2_ph->phase2",
    ]
    # Siemens writes magnitudes and phase as two series: each is named by what it holds
    mags = {k: v for k, v in GRE.items() if "_ph" not in k}
    assert stems(BidsName("fmap", "magnitude1"), mags) == ["5_e1->magnitude1", "5_e2->magnitude2"]
    phase = {"6_ph.nii.gz": b"", "6_ph.json": sidecar(EchoNumber=2, EchoTime=0.00738)}
    named = bids_images(BidsName("fmap", "phasediff"), from_outputs(phase))
    assert [(n.image.stem, n.name.suffix, n.extra) for n in named] == [("6_ph", "phasediff", ())]


def test_multi_echo_gets_echo_and_part_entities_in_bids_order() -> None:
    scan = BidsName("func", "bold", (("task", "rest"), ("dir", "AP")))
    outputs = {f"4_e{e}.nii.gz": b"" for e in (1, 2, 3)}
    assert stems(scan, outputs) == [
        "4_e1->task-rest_dir-AP_echo-1_bold",
        "4_e2->task-rest_dir-AP_echo-2_bold",
        "4_e3->task-rest_dir-AP_echo-3_bold",
    ]
    # magnitude and phase of each echo: part- too (a BIDS entity placed after echo)
    outputs = {n: b"" for n in ("9_e1.nii.gz", "9_e1_ph.nii.gz", "9_e2.nii.gz", "9_e2_ph.nii.gz")}
    assert stems(BidsName("anat", "T2starw", (("acq", "ME"),)), outputs) == [
        "9_e1->acq-ME_echo-1_part-mag_T2starw",
        "9_e1_ph->acq-ME_echo-1_part-phase_T2starw",
        "9_e2->acq-ME_echo-2_part-mag_T2starw",
        "9_e2_ph->acq-ME_echo-2_part-phase_T2starw",
    ]


def test_what_cannot_be_named_distinctly_shows_the_first_image_only() -> None:
    one = {"3.nii.gz": b"", "3.json": b"{}"}
    assert stems(BidsName("anat", "T1w"), one) == ["3->T1w"]
    coils = {"3_c1.nii.gz": b"", "3_c2.nii.gz": b""}
    assert stems(BidsName("anat", "T1w"), coils) == ["3_c1->T1w"]
    # two images of one echo and part (e.g. dcm2niix split a series by orientation)
    same = {"3.nii.gz": b"", "3a.nii.gz": b""}
    assert stems(BidsName("anat", "T1w"), same) == ["3->T1w"]
    three = {f"5_e{e}.nii.gz": b"" for e in (1, 2, 3)}
    assert stems(BidsName("fmap", "magnitude1"), three) == ["5_e1->magnitude1"]
    assert bids_images(BidsName("anat", "T1w"), []) == []


def test_dcm2bids_intended_for_ids() -> None:
    config = Dcm2BidsConfig.from_dict(
        {
            "descriptions": [
                {
                    "id": "id_rest",
                    "datatype": "func",
                    "suffix": "bold",
                    "custom_entities": "task-rest",
                    "criteria": {"SeriesDescription": "rest*"},
                },
                {
                    "datatype": "fmap",
                    "suffix": "phasediff",
                    "criteria": {"SeriesDescription": "gre*"},
                    "sidecar_changes": {"IntendedFor": "id_rest"},
                },
                {  # dcm2bids 2: an index into descriptions
                    "datatype": "fmap",
                    "suffix": "epi",
                    "criteria": {"SeriesDescription": "se*"},
                    "intendedFor": [0],
                },
            ]
        }
    )
    bold = config.map(ScanFacts("4", "rest_fMRI", "rest_fMRI"))
    assert bold.config_id == "id_rest" and bold.intended_for is None
    gre = config.map(ScanFacts("5", "gre_fmap", "gre_fmap"))
    assert gre.config_id == "#1" and gre.intended_for == ("id_rest",)
    assert config.map(ScanFacts("6", "se_AP", "se_AP")).intended_for == ("#0",)


def test_dcm2niix_makes_three_images_of_the_synthetic_gre_fieldmap(tmp_path: Path) -> None:
    """conftest's GRE field map really is a multi-image series for dcm2niix."""
    dicom, out = tmp_path / "dicom", tmp_path / "out"
    dicom.mkdir()
    out.mkdir()
    series = SeriesSpec(5, "gre_field_mapping_phase", 4, rows=32, columns=32)
    for name, data in series_files("t/fmap", series, GRE_FMAP_PARTS, slices=4):
        (dicom / name).write_bytes(data)
    outputs = convert.run_dcm2niix(str(dicom), str(out), 60)
    assert sorted(n for n in outputs if n.endswith(".nii.gz")) == [
        "5_e1.nii.gz",
        "5_e2.nii.gz",
        "5_e2_ph.nii.gz",
    ]
    assert stems(BidsName("fmap", "phasediff"), outputs) == [
        "5_e2_ph->phasediff",
        "5_e1->magnitude1",
        "5_e2->magnitude2",
    ]


def test_dcm2niix_multi_echo_series_is_named_by_echo(tmp_path: Path) -> None:
    """A three-echo series (synthetic, like conftest's field map) makes ``_e1``..``_e3``."""
    dicom, out = tmp_path / "dicom", tmp_path / "out"
    dicom.mkdir()
    out.mkdir()
    series = SeriesSpec(7, "T2star_ME", 4, rows=32, columns=32)
    parts = (("M", 1, "5"), ("M", 2, "15"), ("M", 3, "25"))
    for name, data in series_files("t/me", series, parts, slices=4):
        (dicom / name).write_bytes(data)
    outputs = convert.run_dcm2niix(str(dicom), str(out), 60)
    assert stems(BidsName("anat", "T2starw", (("acq", "ME"),)), outputs) == [
        "7_e1->acq-ME_echo-1_T2starw",
        "7_e2->acq-ME_echo-2_T2starw",
        "7_e3->acq-ME_echo-3_T2starw",
    ]
