"""Scan -> BIDS name: dcm2bids configs, XNAT's BIDS map, the heuristic (xnatfs/bids/mapping.py)."""

from __future__ import annotations

import pytest

from xnatfs.bids.mapping import (
    Dcm2BidsConfig,
    Mapper,
    ScanFacts,
    XnatBidsMap,
    heuristic,
    unmatched_tsv,
)
from xnatfs.bids.names import BidsName


def facts(desc: str, **kw) -> ScanFacts:
    return ScanFacts("1", type=desc, series_description=desc, **kw)


@pytest.mark.parametrize(
    "desc,want",
    [
        ("T1w", ("anat", "T1w", {})),
        ("MPRAGE_sag", ("anat", "T1w", {})),
        ("t2_spc_sag", ("anat", "T2w", {})),
        ("t2_tse_dark-fluid FLAIR", ("anat", "FLAIR", {})),
        ("rest_fMRI", ("func", "bold", {"task": "rest"})),
        ("task-nback_bold_AP", ("func", "bold", {"task": "nback", "dir": "AP"})),
        ("fMRI_stroop", ("func", "bold", {"task": "stroop"})),
        ("rest_SBRef", ("func", "sbref", {"task": "rest"})),
        ("DTI_64dir_PA", ("dwi", "dwi", {"dir": "PA"})),
        ("SE_fieldmap_AP", ("fmap", "epi", {"dir": "AP"})),
        ("gre_field_mapping phase", ("fmap", "phasediff", {})),
        ("SWI_Images", ("anat", "T2starw", {"acq": "SWI"})),
    ],
)
def test_heuristic_matches(desc: str, want) -> None:
    m = heuristic(facts(desc))
    assert m.name is not None, m.reason
    assert (m.name.datatype, m.name.suffix, dict(m.name.entities)) == want


@pytest.mark.parametrize(
    "desc,why",
    [
        ("localizer", "localizer"),
        ("AAHead_Scout", "localizer"),
        ("fMRI", "task"),
        ("ep2d_bold_MoCo", "derived"),
        ("DTI_ADC", "derived"),
        ("something odd", "knows no"),
    ],
)
def test_heuristic_leaves_out_with_a_reason(desc: str, why: str) -> None:
    m = heuristic(facts(desc))
    assert m.name is None and why in m.reason


def test_unusable_scans_are_left_out() -> None:
    assert Mapper().map(facts("T1w", quality="unusable")).name is None


CONFIG = {
    "descriptions": [
        {
            "datatype": "anat",
            "suffix": "T1w",
            "custom_entities": "acq-mprage",
            "criteria": {"SeriesDescription": "T1w*"},
        },
        {
            "datatype": "func",
            "suffix": "bold",
            "custom_entities": ["task-rest", "acq-fast"],
            "criteria": {"SeriesDescription": "*fMRI*", "RepetitionTime": {"le": 2.5}},
        },
        {
            "datatype": "anat",
            "suffix": "T2w",
            "criteria": {"ProtocolName": {"any": ["T2*", "t2*"]}},
        },
        {"datatype": "anat", "suffix": "FLAIR", "criteria": {"SeriesDescription": "T2*"}},
    ]
}


def test_dcm2bids_config_matches_like_dcm2bids() -> None:
    cfg = Dcm2BidsConfig.from_dict(CONFIG)
    headers = {"RepetitionTime": 2.0}
    m = Mapper(config=cfg)
    t1 = m.map(facts("T1w_MPRAGE"))
    assert t1.name == BidsName("anat", "T1w", (("acq", "mprage"),)) and t1.source == "config"
    bold = m.map(facts("rest_fMRI", header=lambda: headers))
    assert bold.name == BidsName("func", "bold", (("task", "rest"), ("acq", "fast")))
    headers["RepetitionTime"] = 3.0  # a criterion on a DICOM field
    assert m.map(facts("rest_fMRI", header=lambda: headers)).name is None
    both = m.map(facts("T2w"))  # T2w matches two descriptions
    assert both.name is None and "2 descriptions" in both.reason
    # case-sensitive fnmatch by default; the config can turn it off
    assert m.map(facts("t1w")).name is None
    loose = Dcm2BidsConfig.from_dict(dict(CONFIG, case_sensitive=False))
    assert Mapper(config=loose).map(facts("t1w")).name is not None
    # with a config, the heuristic is not consulted
    assert m.map(facts("DTI_AP")).reason.startswith("no description")


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        Dcm2BidsConfig.from_dict({"descriptions": [{"suffix": "T1w", "criteria": {}}]})


def test_xnat_bidsmap_then_heuristic() -> None:
    xmap = XnatBidsMap.from_lists(
        [
            {"series_description": "AX T1", "bidsname": "T1w"},
            {"series_description": "BOLD", "bidsname": "task-rest_acq-x_bold"},
        ],
        [{"series_description": "ax t1", "bidsname": "T2w"}],
    )  # site entry after project's
    m = Mapper(xnat_map=xmap)
    assert m.map(facts("ax t1")).name == BidsName("anat", "T1w")
    got = m.map(facts("BOLD"))
    assert got.name == BidsName("func", "bold", (("task", "rest"), ("acq", "x")))
    assert got.source == "xnat-bidsmap"
    assert m.map(facts("T2w")).source == "heuristic"


def test_unmatched_report_is_a_tsv() -> None:
    text = unmatched_tsv([("S1", "S1_MR1", "3", "fMRI\tx", "no task")]).decode()
    assert text.splitlines() == [
        "subject\tsession\tscan\tdescription\treason",
        "S1\tS1_MR1\t3\tfMRI x\tno task",
    ]


def test_xnat_text_cannot_add_a_row_or_a_column_to_the_tsv_files() -> None:
    """A CR (or another line or cell break) in an XNAT value: only tab and LF were replaced,
    and Python's csv, pandas and the BIDS validator end a line at a lone CR too, so
    ``M\\rsub-ghost`` in a subject's field listed a participant that does not exist."""
    import csv
    import io

    from xnatfs.bids.dataset import participants_tsv

    hostile = "M\rsub-ghost\x0bx\x0cy\x1cz\x85w\u2028v\tu"
    for data in (
        participants_tsv([("01", {"gender": hostile}), ("02", {"gender": "F"})]),
        unmatched_tsv([("S1", "S1_MR1", "3", hostile, "no task")]),
    ):
        text = data.decode()
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
        assert len(rows) == text.count("\n"), rows
        assert len({len(r) for r in rows}) == 1, rows
        assert len(text.splitlines()) == len(rows), text
        assert not any(r[0] == "sub-ghost" for r in rows), rows
