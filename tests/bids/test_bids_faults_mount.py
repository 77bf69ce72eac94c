"""The BIDS view under faults and changes on XNAT: a derived file (a sidecar, a converted
image) is made from exactly the series XNAT lists now, or the read fails; nothing of a
conversion that failed or was cut short is kept or served (docs/BIDS.md "Faults")."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pydicom
import pytest
import requests

from tests.bids.conftest import FMAP_DESCRIPTION, GRE_FMAP_PARTS, add_series, series_files
from tests.conftest import ADMIN
from tests.helpers.waiting import wait_for
from tests.mount.helpers import put_file
from xnatfs.emulator.dicom import SeriesSpec
from xnatfs.emulator.seed import DemoSession, seed_session

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


@pytest.mark.parametrize(
    "refreshed",
    [".bids/DEMO1/sub-SUBJ01/ses-MR1/anat", "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1"],
)
def test_a_sidecar_follows_its_series_changed_on_xnat_after_a_refresh(
    make_emulator, make_mount, refreshed: str
) -> None:
    """A sidecar not yet merged with dcm2niix's is made from the first DICOM header; the
    header was kept in memory by scan, so after the series changed on XNAT and ``xnatfs
    refresh`` the sidecar kept the old values (3.2 s here) for the life of the mount, while
    the image was converted again from the new files: the two disagreed.

    Refreshed at the BIDS folder, or at the XNAT side's session (what a user who changed the
    series on XNAT refreshes): before, that did not reach ``.bids`` and the sidecar showed the
    old TR for a listing TTL."""
    emu = make_emulator()
    m = make_mount(emu.url)
    sidecar = m.path / (T2W + ".json")
    assert json.loads(sidecar.read_bytes())["RepetitionTime"] == 3.2
    scan_uri = os.getxattr(sidecar, "user.xnat.uri").decode()
    set_repetition_time(emu.url, scan_uri, 1234.0)
    refresh(m.path / refreshed)
    assert json.loads(sidecar.read_bytes())["RepetitionTime"] == 1.234
    # the listing's true size is of the new sidecar too
    refresh(m.path / refreshed)
    assert sidecar.stat().st_size == len(sidecar.read_bytes())


def test_a_conversion_cut_by_a_killed_daemon_leaves_no_folder_behind(
    make_emulator, make_mount, tmp_path: Path
) -> None:
    """A conversion copies its whole series into CACHE/bids/tmp; a daemon killed meanwhile
    left the copy there for good (outside every cache budget).  The next mount of the cache
    removes it (one INFO line) and converts again."""
    emu = make_emulator()
    cache = tmp_path / "cache"
    m = make_mount(emu.url, cache=cache)
    nii = m.path / (T2W + ".nii.gz")
    assert nii.stat().st_size > 0
    emu.faults.latency_ms = 300  # the series arrives slowly: the kill finds it half copied
    reader = subprocess.Popen(
        ["cat", str(nii)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    tmp = cache / "bids" / "tmp"
    wait_for(lambda: any(tmp.glob("xnatfs-bids-*/dicom/*.dcm")), 60, "a series being copied")
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait(timeout=10)
    reader.wait(timeout=60)
    m.cleanup()
    assert list(tmp.glob("xnatfs-bids-*")), "the conversion ended before the kill"
    emu.faults.latency_ms = 0
    m2 = make_mount(emu.url, cache=cache, name="again")
    assert not list(tmp.glob("xnatfs-bids-*"))
    assert (m2.path / (T2W + ".nii.gz")).read_bytes()[:2] == b"\x1f\x8b"
    # (the image is read before the rest of its bundle is streamed and the folder goes)
    wait_for(lambda: not list(tmp.glob("xnatfs-bids-*")), 30, "the conversion's folder gone")
    assert "left in" in m2.log_text() and "ended mid-conversion" in m2.log_text()


def test_two_scans_never_share_a_name_once_one_is_converted(make_emulator, make_mount) -> None:
    """A magnitude series of its own (scan 5, ``magnitude1`` by its description) beside a GRE
    field map series holding both magnitudes and the phase (scan 7, ``phasediff``; shown as
    ``magnitude1``, ``magnitude2`` and ``phasediff`` once converted): both scans named
    ``…_magnitude1`` and ``…_magnitude2`` files, and the folder's listing silently kept scan
    7's — scan 5 was gone from the dataset once both were read.  Now a converted scan whose
    images would take another scan's name shows its one image under its own name."""
    emu = make_emulator()
    store = emu.emu.store
    mag = SeriesSpec(5, "gre_field_mapping_magnitude", 4, rows=32, columns=32)
    both = SeriesSpec(7, FMAP_DESCRIPTION, 4, rows=32, columns=32)
    for series, parts in ((mag, GRE_FMAP_PARTS[:2]), (both, GRE_FMAP_PARTS)):
        files = series_files(f"xnatfs-test/{series.number}", series, parts, slices=4)
        add_series(store, "DEMO1", "SUBJ02_MR2", series, files)
    m = make_mount(emu.url)
    fmap = m.path / ".bids/DEMO1/sub-SUBJ02/ses-MR2/fmap"
    stem = "sub-SUBJ02_ses-MR2_"

    def sources() -> dict:
        return {
            p.name: os.getxattr(p, "user.xnat.scan").decode()
            for p in fmap.iterdir()
            if p.name.endswith(".nii.gz")
        }

    assert sources() == {stem + "magnitude1.nii.gz": "5", stem + "phasediff.nii.gz": "7"}
    for name in list(sources()):
        assert (fmap / name).read_bytes()[:2] == b"\x1f\x8b"  # both scans converted
    # a read ends as soon as its image is streamed; the conversion is stored (synced, indexed)
    # a moment later, and the listing shows the converted names and sizes only from then on
    # (docs/BIDS.md "Sizes before conversion"): a refresh before it lists the DICOM size
    for name in list(sources()):
        wait_for(
            lambda p=fmap / name: os.getxattr(p, "user.xnat.conversion") == b"cached",
            30,
            f"the conversion of {name} stored",
        )
    refresh(fmap)
    assert sources() == {
        stem + "magnitude1.nii.gz": "5",
        stem + "magnitude2.nii.gz": "5",
        stem + "phasediff.nii.gz": "7",
    }
    for name in sources():  # (a field map's sidecar shows 4096 until read: docs/BIDS.md)
        assert (fmap / name).stat().st_size == len((fmap / name).read_bytes()), name
    phase = json.loads((fmap / (stem + "phasediff.json")).read_bytes())
    assert phase["SeriesNumber"] == 7 and phase["ImageType"][2] == "P"
    lines = [ln for ln in m.log_text().splitlines() if "would share names" in ln]
    assert lines and "scans/7" in lines[0]


def test_a_conversion_while_xnat_is_down_answers_as_its_files_do(make_emulator, make_mount) -> None:
    """XNAT going down while an image's series is fetched: the read is EHOSTDOWN, as a read of
    one of the series' files is (it was EIO, read as a disk fault, with an ERROR line per read
    besides the breaker's one line for the outage); nothing of it is kept, and the first read
    once XNAT is back converts the whole series: the same bytes as a conversion that never
    failed."""
    emu = make_emulator()
    clean = make_mount(emu.url, name="clean")
    want = (clean.path / (T2W + ".nii.gz")).read_bytes()
    clean.umount()
    m = make_mount(emu.url, "--timeout", "20")
    nii = m.path / (T2W + ".nii.gz")
    assert nii.stat().st_size > 0
    emu.stop()
    with pytest.raises(OSError) as info:
        nii.read_bytes()
    assert info.value.errno == errno.EHOSTDOWN, info.value
    assert not [ln for ln in m.log_text().splitlines() if " ERROR " in ln]
    assert "is down" in m.log_text()
    emu.restart()

    def read() -> bytes:
        try:
            return nii.read_bytes()
        except OSError:
            return b""

    wait_for(lambda: read() == want, 60, "the image converted once XNAT is back")
    wait_for(lambda: os.getxattr(nii, "user.xnat.conversion") == b"cached", 30, "the bundle kept")
    assert nii.read_bytes() == want


@pytest.mark.parametrize("refreshed", [".bids/DEMO1", "DEMO1"])
def test_dataset_documents_follow_a_refresh(make_emulator, make_mount, refreshed: str) -> None:
    """A subject added on XNAT, then ``xnatfs refresh`` of the dataset: its ``sub-`` folder
    was listed at once, but ``participants.tsv`` (a document the engine keeps by path for a
    listing TTL so that stat and read agree) kept the subjects from before.  A refresh of the
    XNAT side's project (``MNT/DEMO1``) refreshes its dataset too (before: neither the folder
    nor the document showed the subject for a listing TTL)."""
    emu = make_emulator()
    m = make_mount(emu.url)
    root = m.path / ".bids" / "DEMO1"
    tsv = root / "participants.tsv"
    assert "sub-NEW9" not in tsv.read_text().split() and "sub-NEW9" not in os.listdir(root)
    seed_session(
        emu.emu.store,
        DemoSession("DEMO1", "NEW9", "NEW9_MR1", "20240301", (SeriesSpec(1, "T1w", 3),)),
    )
    refresh(m.path / refreshed)
    assert "sub-NEW9" in os.listdir(root)
    rows = tsv.read_text().split()
    assert "sub-NEW9" in rows
    assert tsv.stat().st_size == len(tsv.read_bytes())


@pytest.mark.slow
def test_a_refresh_of_the_xnat_side_reaches_names_the_kernel_holds_longer_than_the_daemon(
    make_emulator, make_mount
) -> None:
    """The kernel keeps a name for a listing TTL from its own lookup: ``participants.tsv``
    looked up half a TTL after ``.bids/DEMO1`` outlives the daemon's entry for that folder.
    A refresh of ``MNT/DEMO1`` in that window made the kernel forget nothing below
    ``.bids/DEMO1`` (it asked whether the folder's entry was held): ``stat`` gave the old size
    while a read gave the new document (found in review; refreshing ``.bids/DEMO1`` itself
    was right).  The names now come from the listings held, fresh or last seen.  Timed by the
    TTL itself, so it sleeps: the kernel's entry cannot be waited for otherwise."""
    ttl = 10.0
    emu = make_emulator()
    m = make_mount(emu.url, "--listing-ttl", str(ttl))
    root = m.path / ".bids" / "DEMO1"
    tsv = root / "participants.tsv"
    t0 = time.monotonic()
    os.stat(root)  # the daemon's entry for .bids/DEMO1 lasts until t0 + ttl
    time.sleep(ttl / 2)
    before = tsv.stat().st_size  # the kernel holds this until about t0 + 1.5 ttl
    time.sleep(max(0.0, t0 + ttl + 0.5 - time.monotonic()))
    seed_session(
        emu.emu.store,
        DemoSession("DEMO1", "NEW9", "NEW9_MR1", "20240301", (SeriesSpec(1, "T1w", 3),)),
    )
    refresh(m.path / "DEMO1")
    size = tsv.stat().st_size
    assert time.monotonic() - t0 < 1.45 * ttl, "checked after the kernel's entry ended"
    text = tsv.read_bytes()
    assert b"sub-NEW9" in text
    assert size == len(text) != before  # before: the old size (48) against 57 bytes read


def test_a_series_zip_cut_mid_stream_converts_the_whole_series(make_emulator, make_mount) -> None:
    """The series' zip cut mid-stream (a proxy's reset): the members that did not arrive
    whole are fetched one by one, each checked against its listed MD5, so the image is the
    one a clean conversion makes — never one of a partial series."""
    emu = make_emulator()
    clean = make_mount(emu.url, name="clean")
    want = (clean.path / (T2W + ".nii.gz")).read_bytes()
    clean.umount()
    m = make_mount(emu.url)
    nii = m.path / (T2W + ".nii.gz")
    assert nii.stat().st_size > 0
    mark = emu.mark()
    emu.faults.update({"cut_next": 1, "cut_after": 3000})
    assert nii.read_bytes() == want
    records = emu.since(mark)
    zips = [r for r in records if "format=zip" in r[1]]
    singles = [r for r in records if "/files/" in r[1] and r[2] == 200]
    assert len(zips) == 1 and len(singles) >= 10, records  # most members came alone
