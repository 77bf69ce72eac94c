"""XNAT's own BIDS map, read from the emulator's config service (docs/BIDS.md, precedence 2):
set through XNAT's API as an admin, then the names under ``MNT/.bids/DEMO1`` follow it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests

from tests.bids.conftest import tree
from tests.bids.test_bids_names_mount import CONFIG
from tests.conftest import ADMIN

pytestmark = pytest.mark.mount

#: the project's map names the plain fMRI scans (the heuristic leaves them out: no task) and the
#: MPRAGEs; the site's map adds T2w and names fMRI too, but the project's entry wins
PROJECT_MAP = [
    {"series_description": "fMRI", "bidsname": "task-motor_bold"},
    {"series_description": "t1w_mprage", "bidsname": "acq-mprage_T1w"},
]
SITE_MAP = [
    {"series_description": "fMRI", "bidsname": "task-site_bold"},
    {"series_description": "T2w", "bidsname": "acq-site_T2w"},
]


def _put(url: str, doc: object) -> None:
    r = requests.put(url, params={"inbody": "true"}, data=json.dumps(doc), auth=ADMIN, timeout=30)
    assert r.status_code == 201, r.text


def _map_requests(records) -> list:
    return [unquote(p) for m, p, _s, _b in records if m == "GET" and "/config/" in p]


def test_names_follow_xnats_bids_map_and_a_config_overrides_it(
    make_emulator, make_mount, tmp_path: Path
) -> None:
    emu = make_emulator()
    _put(f"{emu.url}/data/projects/DEMO1/config/bids/bidsmap", PROJECT_MAP)
    _put(f"{emu.url}/data/config/bids/bidsmap", SITE_MAP)
    mark = emu.mark()
    m = make_mount(emu.url)
    root = m.path / ".bids" / "DEMO1"
    files = [p for p in tree(root) if p.startswith("sub-") and p.endswith(".nii.gz")]
    want = sorted(
        [
            f"sub-{s}/ses-MR1/{d}/sub-{s}_ses-MR1_{n}.nii.gz"
            for s in ("SUBJ01", "SUBJ02", "SUBJ03")
            for d, n in (
                ("anat", "T1w"),  # not in the map: the heuristic
                ("anat", "acq-site_T2w"),  # the site's map
                ("func", "task-motor_bold"),
            )
        ]  # the project's entry wins
        + [
            f"sub-{s}/ses-MR2/{d}/sub-{s}_ses-MR2_{n}.nii.gz"
            for s in ("SUBJ02", "SUBJ03")
            for d, n in (
                ("anat", "acq-mprage_run-1_T1w"),
                ("anat", "acq-mprage_run-2_T1w"),
                ("func", "task-rest_bold"),
            )
        ]
    )  # rest_fMRI: the heuristic
    assert files == want
    mr1 = "sub-SUBJ01/ses-MR1/{0}/sub-SUBJ01_ses-MR1_{1}.nii.gz"
    for path, rule in (
        (mr1.format("anat", "acq-site_T2w"), "xnat-bidsmap"),
        (mr1.format("func", "task-motor_bold"), "xnat-bidsmap"),
        (mr1.format("anat", "T1w"), "heuristic"),
    ):
        assert os.getxattr(root / path, "user.xnat.bids_rule").decode() == rule, path
    left = (root / ".xnatfs-unmatched.tsv").read_text().splitlines()[1:]
    assert len(left) == 2 and all("localizer" in row for row in left)
    # the project's entry first, then the site's (a listing refresh may ask again)
    asked = _map_requests(emu.since(mark))
    assert asked[:2] == [
        "/data/projects/DEMO1/config/bids/bidsmap?format=json&contents=true",
        "/data/config/bids/bidsmap?format=json&contents=true",
    ]
    assert set(asked) == set(asked[:2])

    # with a dcm2bids config, XNAT's map is not even asked for
    config = tmp_path / "dcm2bids.json"
    config.write_text(json.dumps(CONFIG))
    mark = emu.mark()
    m2 = make_mount(emu.url, "--bids-config", str(config))
    files = [
        p
        for p in tree(m2.path / ".bids" / "DEMO1")
        if p.startswith("sub-") and p.endswith(".nii.gz")
    ]
    assert files == sorted(
        f"sub-{s}/{d}/sub-{s}_{n}.nii.gz"
        for s in ("SUBJ02", "SUBJ03")
        for d, n in (
            ("anat", "acq-mprage_run-1_T1w"),
            ("anat", "acq-mprage_run-2_T1w"),
            ("func", "task-rest_acq-fast_bold"),
        )
    )
    assert _map_requests(emu.since(mark)) == []
