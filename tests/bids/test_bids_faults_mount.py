"""The BIDS view under faults and changes on XNAT: a derived file (a sidecar, a converted
image) is made from exactly the series XNAT lists now, or the read fails; nothing of a
conversion that failed or was cut short is kept or served (docs/BIDS.md "Faults")."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pydicom
import pytest
import requests

from tests.conftest import ADMIN
from tests.mount.helpers import put_file

pytestmark = pytest.mark.mount

#: the demo's T2w of SUBJ01_MR1: a DICOM scan (12 files) with no NIfTI resource
T2W = ".bids/DEMO1/sub-SUBJ01/ses-MR1/anat/sub-SUBJ01_ses-MR1_T2w"


def refresh(*paths: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "refresh", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def dicom_files(url: str, scan_uri: str) -> List[Dict[str, Any]]:
    """The scan's DICOM files as XNAT lists them (straight from the emulator)."""
    r = requests.get(f"{url}{scan_uri}/resources/DICOM/files?format=json", auth=ADMIN, timeout=30)
    r.raise_for_status()
    return sorted(r.json()["ResultSet"]["Result"], key=lambda row: row["Name"])


def set_repetition_time(url: str, scan_uri: str, tr_ms: float) -> None:
    """Another client rewrites every file of the series on XNAT with another TR."""
    for row in dicom_files(url, scan_uri):
        got = requests.get(url + row["URI"], auth=ADMIN, timeout=30)
        got.raise_for_status()
        ds = pydicom.dcmread(io.BytesIO(got.content))
        ds.RepetitionTime = tr_ms
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        put_file(url, f"{scan_uri}/resources/DICOM/files/{row['Name']}", buf.getvalue())


def test_a_sidecar_follows_its_series_changed_on_xnat_after_a_refresh(
    make_emulator, make_mount
) -> None:
    """A sidecar not yet merged with dcm2niix's is made from the first DICOM header; the
    header was kept in memory by scan, so after the series changed on XNAT and ``xnatfs
    refresh`` the sidecar kept the old values (3.2 s here) for the life of the mount, while
    the image was converted again from the new files: the two disagreed."""
    emu = make_emulator()
    m = make_mount(emu.url)
    sidecar = m.path / (T2W + ".json")
    assert json.loads(sidecar.read_bytes())["RepetitionTime"] == 3.2
    scan_uri = os.getxattr(sidecar, "user.xnat.uri").decode()
    set_repetition_time(emu.url, scan_uri, 1234.0)
    refresh(sidecar.parent)
    assert json.loads(sidecar.read_bytes())["RepetitionTime"] == 1.234
    # the listing's true size is of the new sidecar too
    refresh(sidecar.parent)
    assert sidecar.stat().st_size == len(sidecar.read_bytes())
