"""First reads through the view: every tool gets the whole file whatever size stat showed, one
conversion however many readers, and a failed conversion is EIO with one log line."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import pytest

from tests.bids.conftest import conversions

pytestmark = pytest.mark.mount


def test_every_reader_gets_the_whole_file_on_first_read(
    make_emulator, make_mount, tmp_path: Path
) -> None:
    emu = make_emulator()
    m = make_mount(emu.url)
    root = m.path / ".bids" / "DEMO1"
    t2w = sorted(root.glob("sub-*/ses-MR1/anat/*_T2w.nii.gz"))
    bold = sorted(root.glob("sub-*/ses-MR2/func/*_bold.nii.gz"))
    assert len(t2w) == 3 and len(bold) == 2
    shown = {p: p.stat().st_size for p in t2w + bold}
    # each file is read first by a different tool, before anything of its scan is converted
    first = {}
    first[t2w[0]] = subprocess.run(
        ["cat", str(t2w[0])], capture_output=True, check=True, timeout=120
    ).stdout
    first[t2w[1]] = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())",
            str(t2w[1]),
        ],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    shutil.copyfile(t2w[2], tmp_path / "copied.nii.gz")
    first[t2w[2]] = (tmp_path / "copied.nii.gz").read_bytes()
    img = nib.load(str(bold[0]))
    assert img.get_fdata().shape == (32, 32, 8, 4)  # nibabel read it to the end
    # four readers of one file at once: one conversion
    got = []
    readers = [threading.Thread(target=lambda: got.append(bold[1].read_bytes())) for _ in range(4)]
    for r in readers:
        r.start()
    for r in readers:
        r.join(120)
    assert len(got) == 4 and len(set(got)) == 1
    first[bold[1]] = got[0]
    assert conversions(m.path)["done"] == 5
    for path, data in first.items():
        assert data[:2] == b"\x1f\x8b" and len(data) == len(path.read_bytes()), path
        assert data == path.read_bytes(), path
        assert shown[path] > 0
    assert conversions(m.path)["done"] == 5  # later reads: from the cache


def test_failed_conversion_is_eio_with_one_log_line(make_emulator, make_mount) -> None:
    from xnatfs.emulator.store import Parent

    emu = make_emulator()
    store = emu.emu.store
    eid, _ = store.create_experiment(
        "DEMO1", "SUBJ01", "SUBJ01_BAD", "xnat:mrSessionData", fields={"date": "2024-05-01"}
    )
    store.create_scan(
        eid, "5", "xnat:mrScanData", fields={"type": "T2w", "series_description": "T2w"}
    )
    rid, _ = store.create_resource(
        Parent(project="DEMO1", experiment=eid, scan="5"), "DICOM", format="DICOM", content="RAW"
    )
    for i in range(3):
        store.put_file(
            rid,
            f"junk{i}.dcm",
            io.BytesIO(b"not DICOM at all " * 50),
            overwrite=True,
            format="DICOM",
            content="RAW",
        )
    m = make_mount(emu.url)
    nii = m.path / ".bids/DEMO1/sub-SUBJ01/ses-BAD/anat/sub-SUBJ01_ses-BAD_T2w.nii.gz"
    assert nii.stat().st_size > 0
    with pytest.raises(OSError) as info:
        nii.read_bytes()
    assert info.value.errno == errno.EIO
    assert conversions(m.path)["failed"] >= 1
    lines = [
        ln
        for ln in m.log_text().splitlines()
        if "SUBJ01_BAD" in ln and (" ERROR " in ln or " WARNING " in ln)
    ]
    assert len(lines) == 1, "\n".join(lines)
    assert "dcm2niix" in lines[0] and "scans/5" in lines[0]
    # the rest of the dataset reads
    assert (
        m.path / ".bids/DEMO1/sub-SUBJ01/ses-MR1/anat/sub-SUBJ01_ses-MR1_T2w.nii.gz"
    ).read_bytes()[:2] == b"\x1f\x8b"
    assert os.path.exists(m.path / ".bids/DEMO1/participants.tsv")


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]\n",
        b"{not json\n",
        b'"\xff"\n',
        # valid JSON nested past the recursion limit: RecursionError, no ValueError
        b"[" * 100_000 + b"]" * 100_000,
        # a valid object larger than any sidecar (read whole into memory to be merged)
        b'{"ImageComments": "' + b"x" * (5 << 20) + b'"}',
    ],
    ids=["list", "broken", "not-utf8", "nested", "too-large"],
)
def test_a_sidecar_on_xnat_that_is_not_a_json_object_is_left_out(
    make_emulator, make_mount, body: bytes
) -> None:
    """The JSON beside a NIfTI resource's image is merged into the BIDS sidecar; when it was
    not a JSON object (a list, broken JSON, bytes that are not UTF-8) the sidecar's read failed
    with an unexpected error (EIO, a traceback).  Now that file is left out, with one line; so
    is one nested past the recursion limit, and one larger than ``MAX_SIDECAR_BYTES``."""
    from tests.mount.helpers import put_file

    emu = make_emulator()
    put_file(
        emu.url,
        "/data/projects/DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1/resources/NIFTI"
        "/files/SUBJ01_MR1_T1w.json",
        body,
    )
    m = make_mount(emu.url)
    sidecar = m.path / ".bids/DEMO1/sub-SUBJ01/ses-MR1/anat/sub-SUBJ01_ses-MR1_T1w.json"
    doc = json.loads(sidecar.read_bytes())
    assert isinstance(doc, dict) and doc, doc
    text = m.log_text()
    assert "Traceback" not in text
    assert [ln for ln in text.splitlines() if "SUBJ01_MR1_T1w.json" in ln and "left out" in ln]
