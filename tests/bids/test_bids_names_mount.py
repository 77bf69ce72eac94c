"""Names in the view: hostile XNAT labels, and a dcm2bids config with custom entities."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.bids.conftest import tree
from xnatfs.bids.names import LabelMap, is_label
from xnatfs.emulator.dicom import SeriesSpec
from xnatfs.emulator.seed import DemoSession, seed_session

pytestmark = pytest.mark.mount

HOSTILE = ["sub.01", "SUBJ_01", "SUBJ-01", "SUBJ01", "Zoë 2", "ÉÈ", "..", "a b"]


def test_hostile_subject_labels(make_emulator, make_mount) -> None:
    emu = make_emulator()
    store = emu.emu.store
    store.create_project("HOSTILE", name="Hostile labels")
    for i, label in enumerate(HOSTILE):
        seed_session(
            store,
            DemoSession(
                "HOSTILE", label, f"{label}_MR1", f"202402{i + 10}", (SeriesSpec(1, "T1w", 3),)
            ),
        )
    m = make_mount(emu.url)
    root = m.path / ".bids" / "HOSTILE"
    want = LabelMap(HOSTILE)
    subjects = sorted(n for n in os.listdir(root) if n.startswith("sub-"))
    assert subjects == sorted(f"sub-{want[label]}" for label in HOSTILE)
    assert all(is_label(s[4:]) for s in subjects) and len(set(subjects)) == len(HOSTILE)
    for label in HOSTILE:
        sub = want[label]
        files = tree(root / f"sub-{sub}")
        assert files == [f"anat/sub-{sub}_T1w.json", f"anat/sub-{sub}_T1w.nii.gz"], files
        nii = root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
        assert os.getxattr(nii, "user.xnat.subject").decode() == label
        assert os.getxattr(nii, "user.xnat.experiment").decode() == f"{label}_MR1"
    tsv = (root / "participants.tsv").read_text().splitlines()
    assert tsv[0] == "participant_id" and sorted(tsv[1:]) == subjects


CONFIG = {
    "descriptions": [
        {
            "datatype": "anat",
            "suffix": "T1w",
            "custom_entities": "acq-mprage",
            "criteria": {"SeriesDescription": "T1w_MPRAGE"},
        },
        {
            "datatype": "func",
            "suffix": "bold",
            "custom_entities": ["task-rest", "acq-fast"],
            "criteria": {"SeriesDescription": "rest_*", "RepetitionTime": {"le": 2.5}},
        },
    ]
}


def test_dcm2bids_config_with_custom_entities(make_emulator, make_mount, tmp_path: Path) -> None:
    emu = make_emulator()
    config = tmp_path / "dcm2bids.json"
    config.write_text(json.dumps(CONFIG))
    m = make_mount(emu.url, "--bids-config", str(config))
    root = m.path / ".bids" / "DEMO1"
    files = tree(root)
    subjects = [p for p in files if p.startswith("sub-")]
    # only what the config names, named as dcm2bids would; MR1 sessions have nothing left, so
    # each subject has one session: no ses- level (the session rule)
    assert subjects == sorted(
        f"sub-{s}/{d}/sub-{s}_{n}.{e}"
        for s in ("SUBJ02", "SUBJ03")
        for d, n in (
            ("anat", "acq-mprage_run-1_T1w"),
            ("anat", "acq-mprage_run-2_T1w"),
            ("func", "task-rest_acq-fast_bold"),
        )
        for e in ("nii.gz", "json")
    )
    bold = json.loads(
        (root / "sub-SUBJ02/func/sub-SUBJ02_task-rest_acq-fast_bold.json").read_text()
    )
    assert bold["TaskName"] == "rest" and bold["RepetitionTime"] == 2.0
    left = (root / ".xnatfs-unmatched.tsv").read_text().splitlines()[1:]
    assert len(left) == 3 * 3 + 2 and all(
        "no description of the dcm2bids config" in r for r in left
    )
