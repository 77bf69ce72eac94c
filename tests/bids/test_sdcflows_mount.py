"""fMRIPrep's field-map finder, SDCFlows ``find_estimators``, on the view: the GRE field map
(read once, as docs/BIDS.md says) is found as a phase-difference estimator for the bold run.

SDCFlows is not a dependency of xnatfs (it pulls in nipype and niworkflows): the test runs
when it imports in the test interpreter, or with ``XNATFS_SDCFLOWS_PYTHON`` naming an
interpreter that has it (``python -m venv V && V/bin/pip install sdcflows``); else it is
deselected, with a line saying so (tests/bids/conftest.py), never skipped."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.bids.conftest import FMAP_AFTER, add_gre_fieldmap, tree
from tests.helpers.optional import sdcflows_python
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.mount

#: what fMRIPrep does: find the estimators, then ask which one a bold run is meant for
#: (``get_identifier`` reads the registry SDCFlows fills from ``IntendedFor``, keyed by
#: subject-relative path: fMRIPrep's ``get_estimator`` asks with the bold's path so)
SCRIPT = r"""
import json, sys
from bids import BIDSLayout
from sdcflows.fieldmaps import get_identifier
from sdcflows.utils.wrangler import find_estimators
layout = BIDSLayout(sys.argv[1])
found = find_estimators(layout=layout, subject="SUBJ02", fmapless=False)
print(json.dumps({
    "estimators": [
        {"id": e.bids_id, "method": str(e.method),
         "sources": sorted(str(s.path.name) for s in e.sources)}
        for e in found
    ],
    "bold": list(get_identifier(sys.argv[2])),
}))
"""


def test_sdcflows_finds_the_phasediff_estimator(make_emulator, make_mount) -> None:
    python = sdcflows_python()
    assert python, "selected without SDCFlows (tests/bids/conftest.py deselects it then)"
    emu = make_emulator()
    add_gre_fieldmap(emu.emu.store)
    m = make_mount(emu.url, "--listing-ttl", "1")
    root = m.path / ".bids" / "DEMO1"
    (root / "sub-SUBJ02/ses-MR2/fmap/sub-SUBJ02_ses-MR2_phasediff.nii.gz").read_bytes()
    wait_for(lambda: [p for p in tree(root) if "/fmap/" in p] == FMAP_AFTER, 30, "fmap images")
    bold = "ses-MR2/func/sub-SUBJ02_ses-MR2_task-rest_bold.nii.gz"
    res = subprocess.run(
        [python, "-c", SCRIPT, str(root), bold], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads(res.stdout.strip().splitlines()[-1])
    (estimator,) = found["estimators"]
    assert estimator["method"] == "EstimatorType.PHASEDIFF" and estimator["sources"] == [
        "sub-SUBJ02_ses-MR2_magnitude1.nii.gz",
        "sub-SUBJ02_ses-MR2_magnitude2.nii.gz",
        "sub-SUBJ02_ses-MR2_phasediff.nii.gz",
    ], found
    # the bold run is the field map's IntendedFor target
    assert found["bold"] == [estimator["id"]], found
