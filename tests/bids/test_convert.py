"""Sidecars from one header, dcm2niix runs, bundles and the conversion cache
(xnatfs/bids/sidecar.py, convert.py), without a mount."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import pytest

from tests.helpers.filling import fill_up
from tests.helpers.tmpfs import small_tmpfs
from tests.helpers.waiting import wait_for
from xnatfs.bids import convert, sidecar
from xnatfs.cache.content import ContentCache, ContentKey
from xnatfs.emulator.dicom import SeriesSpec, StudySpec, iter_study_files

BOLD = SeriesSpec(4, "rest_fMRI", 32, rows=32, columns=32, volumes=4)


def write_series(dest: Path, series: SeriesSpec = BOLD) -> list:
    dest.mkdir(parents=True, exist_ok=True)
    files = list(iter_study_files(StudySpec("t", "P", "P1", series=(series,))))
    for g in files:
        (dest / g.name).write_bytes(g.data)
    return files


def test_sidecar_from_one_header_agrees_with_dcm2niix(tmp_path: Path) -> None:
    files = write_series(tmp_path / "dicom")
    ours = sidecar.from_bytes(files[0].data, task="rest")
    assert ours["RepetitionTime"] == 2.0 and ours["EchoTime"] == 0.03  # seconds
    assert ours["FlipAngle"] == 77.0 and ours["TaskName"] == "rest"
    (tmp_path / "out").mkdir()
    out = convert.run_dcm2niix(str(tmp_path / "dicom"), str(tmp_path / "out"), 60)
    theirs = json.loads(out["4.json"])
    # dcm2niix appends what it derived to ImageType (MAGNITUDE); every other key both write
    # has the same value and unit
    shared = (set(ours) & set(theirs)) - {"ImageType"}
    assert {
        "RepetitionTime",
        "EchoTime",
        "FlipAngle",
        "SeriesDescription",
        "PhaseEncodingAxis",
        "MagneticFieldStrength",
    } <= shared
    assert all(ours[k] == theirs[k] for k in shared), {
        k: (ours[k], theirs[k]) for k in shared if ours[k] != theirs[k]
    }
    merged = sidecar.merge(ours, theirs)
    assert merged["TaskName"] == "rest" and merged["ConversionSoftware"] == "dcm2niix"
    img = nib.load(str(tmp_path / "out" / "4.nii.gz"))
    assert img.shape == (32, 32, 8, 4) and img.header.get_zooms()[3] == 2.0


def test_bundle_round_trip() -> None:
    outputs = {"image.nii.gz": os.urandom(5000), "image.json": b"{}", "extra/x": b""}
    blob = convert.pack(outputs)
    index = convert.read_index(lambda o, n: blob[o : o + n])
    assert {k: blob[o : o + n] for k, (o, n) in index.items()} == outputs


def test_bundle_key_follows_files_and_converter() -> None:
    rows = [("a.dcm", 10, "d1"), ("b.dcm", 10, "d2")]
    k = convert.bundle_key_uri("/data/experiments/E/scans/1", rows)
    assert k == convert.bundle_key_uri("/data/experiments/E/scans/1", list(reversed(rows)))
    changed = [rows[0], ("b.dcm", 10, "d3")]
    assert k != convert.bundle_key_uri("/data/experiments/E/scans/1", changed)
    assert k != convert.bundle_key_uri("/data/experiments/E/scans/2", rows)
    assert convert.converter_version() not in ("", "unknown")


def _cache(tmp_path: Path, conv: convert.Converter) -> ContentCache:
    cache = ContentCache(tmp_path / "bundles", size_limit=1 << 30, fetch=conv.fetch)
    cache.start()
    return cache


def _read_all(cache: ContentCache, uri: str) -> bytes:
    h = cache.open(ContentKey(uri, None))
    try:
        out = bytearray()
        while True:
            chunk = h.read(len(out), 1 << 20, time.monotonic() + 60)
            if not chunk:
                return bytes(out)
            out += chunk
    finally:
        h.close()


def test_one_conversion_per_scan_however_many_readers(tmp_path: Path) -> None:
    write_series(tmp_path / "src")
    calls = []

    def fetch_dicom(dest: str) -> None:
        calls.append(dest)
        for name in os.listdir(tmp_path / "src"):
            os.link(tmp_path / "src" / name, os.path.join(dest, name))

    conv = convert.Converter(max_running=1, timeout=60, tmp_dir=str(tmp_path))
    conv.register("xnatfs-bids:/s#1", convert.Job("P/S/E/scans/4", fetch_dicom))
    cache = _cache(tmp_path, conv)
    try:
        got = []
        threads = [
            threading.Thread(target=lambda: got.append(_read_all(cache, "xnatfs-bids:/s#1")))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(got) == 6 and len(set(got)) == 1 and len(calls) == 1
        index = convert.read_index(lambda o, n: got[0][o : o + n])
        assert set(index) == {"4.nii.gz", "4.json"}  # dcm2niix's names, as it wrote them
        assert _read_all(cache, "xnatfs-bids:/s#1") == got[0] and len(calls) == 1
        assert conv.snapshot()["done"] == 1 and conv.snapshot()["failed"] == 0
        # the private temp dir is gone
        assert not [p for p in os.listdir(tmp_path) if p.startswith("xnatfs-bids-")]
    finally:
        cache.close()
    # a new cache object on the same directory (a remount): no conversion
    cache = _cache(tmp_path, conv)
    try:
        assert _read_all(cache, "xnatfs-bids:/s#1") == got[0] and len(calls) == 1
    finally:
        cache.close()


def test_failed_conversion_is_eio_with_dcm2niix_message(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="xnatfs.bids.convert")

    def not_dicom(dest: str) -> None:
        Path(dest, "junk.dcm").write_bytes(b"not a DICOM file" * 10)

    conv = convert.Converter(timeout=60, tmp_dir=str(tmp_path))
    conv.register("xnatfs-bids:/bad#1", convert.Job("P/S/E/scans/9", not_dicom))
    cache = _cache(tmp_path, conv)
    try:
        with pytest.raises(OSError) as info:
            _read_all(cache, "xnatfs-bids:/bad#1")
        assert info.value.errno == errno.EIO
        assert "P/S/E/scans/9" in str(info.value) and "dcm2niix" in str(info.value)
        assert conv.snapshot()["failed"] == 1 and conv.snapshot()["done"] == 0
    finally:
        cache.close()
    lines = [r for r in caplog.records if "P/S/E/scans/9" in r.getMessage() and r.levelno >= 20]
    assert len(lines) == 1 and "dcm2niix" in lines[0].getMessage()


def test_conversion_timeout(tmp_path: Path) -> None:
    write_series(tmp_path / "dicom")
    with pytest.raises(convert.ConversionError, match="longer than"):
        os.mkdir(tmp_path / "out")
        convert.run_dcm2niix(str(tmp_path / "dicom"), str(tmp_path / "out"), 0.0001)


def test_closing_the_view_ends_running_and_queued_conversions(tmp_path: Path, monkeypatch) -> None:
    """The old ``close`` left dcm2niix running on the conversion pool, whose threads the
    interpreter joins at exit without a bound: after an unmount the daemon lived on for as
    long as dcm2niix ran (up to --bids-conversion-timeout).  Here a dcm2niix that would run a
    minute, and a conversion queued behind it for the one slot."""
    from types import SimpleNamespace

    from xnatfs.bids.layout import BidsLayout

    mark = tmp_path / "dcm2niix-started"
    slow = tmp_path / "dcm2niix"
    slow.write_text(f'#!/bin/sh\ntouch "{mark}"\nexec sleep 60\n')
    slow.chmod(0o755)
    monkeypatch.setattr(convert, "dcm2niix_binary", lambda: str(slow))
    layout = BidsLayout(
        SimpleNamespace(), None, str(tmp_path / "bids"), cache_size=1 << 30, max_conversions=1
    )
    handles = []
    try:
        for n in (4, 5):  # 4 runs, 5 waits for the slot
            uri = f"xnatfs-bids:/s#{n}"
            layout.converter.register(uri, convert.Job(f"P/S/E/scans/{n}", lambda dest: None))
            handles.append(layout.bundles.open(ContentKey(uri, None)))
        wait_for(mark.exists, 30, "the slow dcm2niix to start")
        wait_for(lambda: layout.converter.snapshot()["queued"] == 1, 30, "the second to queue")
        started = time.monotonic()
        layout.close()
        assert all(h.wait(time.monotonic() + 5) for h in handles), "conversions still running"
        assert time.monotonic() - started < 9  # close() did not wait out its own bound
        with pytest.raises(OSError) as info:
            handles[0].read(0, 1, time.monotonic() + 5)
        assert "closing" in str(info.value) or info.value.errno == errno.ECANCELED
        snap = layout.converter.snapshot()
        assert snap["running"] == 0 and snap["queued"] == 0
    finally:
        for h in handles:
            h.close()
        layout.close()


@pytest.mark.parametrize("room", [True, False])
def test_dcm2niix_on_a_full_disk_makes_room_or_says_enospc(tmp_path: Path, room: bool) -> None:
    """The series fits in the temp dir, dcm2niix's output does not (the disk fills up
    meanwhile): dcm2niix exits 1, often without saying why; the free space left says it.
    The converter asks ``make_room`` and converts again (the image as on a roomy disk), or,
    nothing freed, fails with ENOSPC.  Before: EIO, and ``make_room`` was never asked."""
    write_series(tmp_path / "src")
    (tmp_path / "ref").mkdir()
    want = convert.run_dcm2niix(str(tmp_path / "src"), str(tmp_path / "ref"), 60)
    asked = []
    with small_tmpfs(tmp_path / "disk", "2m") as disk:

        def fetch(dest: str) -> None:
            for f in (tmp_path / "src").iterdir():
                Path(dest, f.name).write_bytes(f.read_bytes())
            if not asked:
                fill_up(disk)  # another writer takes the rest of the disk

        def make_room(path: str, need: int) -> int:
            asked.append((path, need))
            if not room:
                return 0
            (disk / "filler").unlink()
            return 1

        conv = convert.Converter(timeout=60, tmp_dir=str(disk), make_room=make_room)
        conv.register("xnatfs-bids:/full#1", convert.Job("P/S/E/scans/4", fetch, series_bytes=1000))
        cache = _cache(tmp_path, conv)
        try:
            if room:
                data = _read_all(cache, "xnatfs-bids:/full#1")
                got = convert.read_index(lambda o, n: data[o : o + n])
                assert {k: data[o : o + n] for k, (o, n) in got.items()} == want
            else:
                with pytest.raises(OSError) as info:
                    _read_all(cache, "xnatfs-bids:/full#1")
                assert info.value.errno == errno.ENOSPC, info.value
        finally:
            cache.close()
        assert [need for _, need in asked] == [2 * 1000 + (1 << 20)]
        left = sorted(p.name for p in disk.iterdir() if p.name != "owners")  # owners: locks
        assert left in ([], ["filler"])  # no temp dir left


def test_conversion_folders_of_a_gone_process_are_swept_a_live_ones_kept(
    tmp_path: Path,
) -> None:
    """A conversion's folder (its whole DICOM series) outlived a daemon killed mid-conversion;
    the next start removes it, but never one of a process still running on the same cache."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    live = convert.Converter(tmp_dir=str(tmp))
    held = Path(tempfile.mkdtemp(prefix=f"xnatfs-bids-{live._owners.tag}-", dir=tmp))
    (held / "dicom").mkdir()
    (held / "dicom" / "000000.dcm").write_bytes(b"x" * 1000)
    # an older version's folder (no owner tag) and a dead owner's (tag not locked)
    old = Path(tempfile.mkdtemp(prefix="xnatfs-bids-", dir=tmp))
    dead = Path(tempfile.mkdtemp(prefix="xnatfs-bids-0badc0de-", dir=tmp))
    other = convert.Converter(tmp_dir=str(tmp))  # a second mount of the cache starts
    try:
        assert held.exists() and not old.exists() and not dead.exists()
        live.close()  # the first process ends: its folder is free to go
        assert other.sweep() == 1 and not held.exists()
    finally:
        other.close()
    assert sorted(os.listdir(tmp)) == ["owners"] and os.listdir(tmp / "owners") == []


def test_a_bundle_is_streamed_not_held_whole_in_memory(tmp_path: Path) -> None:
    """A conversion's peak memory was three times its bundle (every output read whole, then
    joined): 150 MB of the daemon for a 50 MB bold, 6 GB for a 2 GB multiband one.  The
    bundle is now streamed from dcm2niix's files, the same bytes as ``pack`` makes."""
    write_series(tmp_path / "src", SeriesSpec(3, "T1w", 96, rows=256, columns=256))

    def fetch_dicom(dest: str) -> None:
        for name in os.listdir(tmp_path / "src"):
            os.link(tmp_path / "src" / name, os.path.join(dest, name))

    conv = convert.Converter(tmp_dir=str(tmp_path))
    conv.register("u", convert.Job("P/S/E/scans/3", fetch_dicom))
    got = bytearray()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        conv.fetch("u", lambda chunk: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    conv.fetch("u", got.extend)
    assert len(got) > 4 << 20  # a bundle of several MB (an 8 MB T1w)
    assert peak < len(got) // 3, (peak, len(got))
    (tmp_path / "out").mkdir()
    outputs = convert.run_dcm2niix(str(tmp_path / "src"), str(tmp_path / "out"), 60)
    assert bytes(got) == convert.pack(outputs)
    conv.close()


def test_a_series_dcm2niix_hangs_on_holds_a_slot_once_not_at_every_read(
    tmp_path: Path, monkeypatch
) -> None:
    """dcm2niix hanging on a series (here: a dcm2niix that never ends) is killed at the
    timeout, EIO; every read ran it again, holding one of the conversion slots for the whole
    timeout each time.  The failure of these files is now answered at once for a while
    (``FAILURE_MEMORY``); a failure to fetch the series is not remembered."""
    runs = tmp_path / "runs"
    fake = tmp_path / "dcm2niix"
    fake.write_text(f"#!/bin/sh\necho run >> {runs}\nexec sleep 120\n")
    fake.chmod(0o755)
    monkeypatch.setattr(convert, "dcm2niix_binary", lambda: str(fake))
    write_series(tmp_path / "src")

    def fetch_dicom(dest: str) -> None:
        for name in os.listdir(tmp_path / "src"):
            os.link(tmp_path / "src" / name, os.path.join(dest, name))

    conv = convert.Converter(timeout=1.0, tmp_dir=str(tmp_path))
    conv.register("u", convert.Job("P/S/E/scans/4", fetch_dicom))
    with pytest.raises(OSError, match="longer than") as first:
        conv.fetch("u", lambda chunk: None)
    assert first.value.errno == errno.EIO and runs.read_text().count("run") == 1
    t0 = time.monotonic()
    for _ in range(3):
        with pytest.raises(OSError, match="longer than .*these same files") as again:
            conv.fetch("u", lambda chunk: None)
        assert again.value.errno == errno.EIO
    assert time.monotonic() - t0 < 0.5 and runs.read_text().count("run") == 1
    monkeypatch.setattr(convert, "FAILURE_MEMORY", 0.0)  # remembered for a while only
    with pytest.raises(OSError, match="longer than"):
        conv.fetch("u", lambda chunk: None)
    assert runs.read_text().count("run") == 2

    calls = []

    def unreachable(dest: str) -> None:
        calls.append(dest)
        raise OSError(errno.EHOSTDOWN, "XNAT is down")

    monkeypatch.setattr(convert, "FAILURE_MEMORY", 600.0)
    conv.register("v", convert.Job("P/S/E/scans/5", unreachable))
    for _ in range(2):
        with pytest.raises(OSError) as down:
            conv.fetch("v", lambda chunk: None)
        assert down.value.errno == errno.EHOSTDOWN
    assert len(calls) == 2  # tried again at each read: the server may be back
    conv.close()


def test_a_series_larger_than_the_free_disk_is_refused_before_it_is_fetched(
    tmp_path: Path,
) -> None:
    """A series the conversion folder's disk cannot hold twice (its copy, then dcm2niix's
    outputs) is ENOSPC at once: it was fetched and copied until that disk was full (every
    other writer there failing meanwhile), then failed anyway."""
    write_series(tmp_path / "src", SeriesSpec(3, "T1w", 24, rows=256, columns=256))
    size = sum(p.stat().st_size for p in (tmp_path / "src").iterdir())  # ~3 MB
    fetched = []

    def fetch_dicom(dest: str) -> None:
        fetched.append(dest)
        for name in os.listdir(tmp_path / "src"):
            shutil.copyfile(tmp_path / "src" / name, os.path.join(dest, name))

    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        conv = convert.Converter(tmp_dir=str(disk))
        conv.register("u", convert.Job("P/S/E/scans/3", fetch_dicom, series_bytes=size))
        with pytest.raises(OSError) as info:
            conv.fetch("u", lambda chunk: None)
        assert info.value.errno == errno.ENOSPC and "needs" in str(info.value)
        assert fetched == [] and not list(disk.glob("xnatfs-bids-*"))
        # size unknown: copied, then dcm2niix fails on the full disk — a failure of the disk,
        # not of the series, so not remembered (``Converter._remember``): tried at each read
        conv.register("w", convert.Job("P/S/E/scans/3", fetch_dicom))
        for _ in range(2):
            with pytest.raises(OSError):
                conv.fetch("w", lambda chunk: None)
        assert len(fetched) == 2 and not list(disk.glob("xnatfs-bids-*"))
        fetched.clear()
        conv.close()
    # with room: converted
    conv = convert.Converter(tmp_dir=str(tmp_path))
    conv.register("u", convert.Job("P/S/E/scans/3", fetch_dicom, series_bytes=size))
    got = bytearray()
    conv.fetch("u", got.extend)
    assert len(fetched) == 1 and got[:8] == b"XNATFSB1"
    conv.close()
