"""The side stores on a really full cache disk (integ10): ``times.db``, the BIDS view, and a
mount started on it.

A small tmpfs holds the store; another file fills it to its last block (SQLite then answers
"database or disk is full" or "disk I/O error"), and the test gives the room back by removing
that file.  Each test says what it showed before its fix.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
from pathlib import Path

import pytest
import requests

from tests.conftest import needs_fuse
from tests.helpers.filling import fill_up
from tests.helpers.tmpfs import small_tmpfs
from tests.helpers.waiting import wait_for
from xnatfs.cache.times import TimesIndex

PROTOCOLS = "/DEMO1/resources/protocols/files"
URI = "/data/experiments/E1/resources/101/files/a{}.nii"
T0 = 1_600_000_000_123_456_789


def test_times_db_on_a_full_disk_is_kept_and_catches_up(tmp_path, caplog):
    """A mount that starts on a full disk keeps ``times.db`` as it is and starts; a time set
    while the disk is full holds in memory and is on disk once there is room (a write after
    it, or the unmount).  Before, the start took the full disk for a damaged file: it
    deleted ``times.db`` (every remembered time gone), then raised, so the mount failed."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        path = str(disk / "times.db")
        before = TimesIndex(path)
        before.start()
        for i in range(20):
            before.set(URI.format(i), 10, f"d{i}", T0 + i)
        before.close()
        filler = fill_up(disk)

        caplog.set_level(logging.WARNING, logger="xnatfs.cache.times")
        full = TimesIndex(path)
        full.start()  # before: sqlite3.OperationalError, times.db deleted
        full.set(URI.format("new"), 10, "dn", T0 - 1)  # while the disk is full
        assert full.get(URI.format("new"), 10, "dn") == T0 - 1  # this mount shows it
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and path in lines[0], lines
        filler.unlink()  # room again
        full.close()  # the time set while full is written now

        after = TimesIndex(path, max_rows=21)
        after.start()
        assert after.get(URI.format(3), 10, "d3") == T0 + 3  # before: None (file deleted)
        assert after.get(URI.format("new"), 10, "dn") == T0 - 1
        after.set(URI.format("next"), 10, "dx", T0 - 2)  # one too many: the oldest go
        assert after.get(URI.format(0), 10, "d0") is None
        # the time set while the disk was full is newer than the 20: kept (it was counted
        # from 0 in that mount, came first and went first)
        assert after.get(URI.format("new"), 10, "dn") == T0 - 1
        after.close()


def test_a_times_write_that_met_a_full_disk_is_written_with_the_next(tmp_path):
    """The file open, the disk fills: the failed write keeps its row, and the first write
    that succeeds once there is room writes it too; the connection works on (a failed
    SQLite write does not poison it).  Before, the row was in memory only: gone at the
    next mount."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        path = str(disk / "times.db")
        times = TimesIndex(path)
        times.start()
        times.set(URI.format(0), 10, "d0", T0)
        filler = fill_up(disk)
        for i in range(1, 40):  # enough rows to need a new page of the database
            times.set(URI.format(i), 10, f"d{i}" * 30, T0 + i)
        filler.unlink()
        times.set(URI.format("room"), 10, "dr", T0 - 5)
        # another process (the next mount) reads the file while this one still runs
        other = TimesIndex(path)
        other.start()
        assert other.get(URI.format("room"), 10, "dr") == T0 - 5
        assert [other.get(URI.format(i), 10, f"d{i}" * 30) for i in range(1, 40)] == [
            T0 + i for i in range(1, 40)
        ]
        other.close()
        times.close()


def _cat(path: Path) -> "tuple[int, str, bytes]":
    res = subprocess.run(["cat", str(path)], capture_output=True, timeout=120)
    return res.returncode, res.stderr.decode(errors="replace"), res.stdout


def _t2w(mnt: Path) -> list:
    return sorted((mnt / ".bids" / "DEMO1").glob("sub-*/ses-MR1/anat/*_T2w.nii.gz"))


@needs_fuse
def test_a_bids_image_on_a_disk_full_of_cached_files_is_converted(
    make_emulator, make_mount, tmp_path
):
    """The cache disk (64 MiB tmpfs) holds other scans' cached DICOM files and is then
    filled to its last block: the first read of a T2w image converts it, the conversion's
    copy of the series meets ENOSPC, cached files are evicted and it converts again; the
    reader gets the bytes a mount on a roomy disk gives.  Before: ``cat`` failed with EIO
    ("BIDS conversion ... failed: No space left on device"), nothing evicted."""
    emu = make_emulator()
    roomy = make_mount(emu.url, "--prefetch", "0")
    want = _t2w(roomy.path)[0].read_bytes()
    with small_tmpfs(tmp_path / "disk", "64m") as disk:
        m = make_mount(emu.url, "--prefetch", "0", cache=disk / "cache")
        for path in (m.path / "DEMO1").rglob("*.dcm"):
            if "SUBJ01" not in str(path):
                path.read_bytes()  # cached: copies of XNAT's files, free to evict
        filler = fill_up(disk)
        rc, err, got = _cat(_t2w(m.path)[0])
        assert rc == 0, err
        assert got == want
        assert json.loads((m.path / ".xnatfs" / "stats").read_text())["bids"]["done"] == 1
        filler.unlink()
        m.umount()


@needs_fuse
def test_a_bids_image_on_a_disk_full_with_nothing_to_evict_is_enospc(
    make_emulator, make_mount, tmp_path
):
    """Nothing cached to evict, the disk full: the read fails with ENOSPC (before: EIO),
    one ERROR line naming the path, no temp files and no bundle left; once there is room
    the same read gives the whole image."""
    emu = make_emulator()
    with small_tmpfs(tmp_path / "disk", "64m") as disk:
        m = make_mount(emu.url, "--prefetch", "0", cache=disk / "cache")
        image = _t2w(m.path)[0]
        filler = fill_up(disk)
        rc, err, got = _cat(image)
        assert rc != 0 and got == b"" and "No space left on device" in err, err
        lines = [ln for ln in m.log_tail(300).splitlines() if " ERROR " in ln]
        assert len(lines) == 1 and image.name in lines[0], lines
        # no conversion folder left ("owners" holds the mounts' locks on theirs)
        tmp = disk / "cache" / "bids" / "tmp"
        assert [p.name for p in tmp.iterdir() if p.name != "owners"] == []
        filler.unlink()
        rc, err, got = _cat(image)
        assert rc == 0, err
        assert gzip.decompress(got)  # a whole gzip stream: the image, not a cut one
        assert _cat(image)[2] == got  # from the cache now
        m.umount()


@needs_fuse
def test_a_mount_on_a_full_cache_disk_says_so_and_keeps_its_uploads(
    make_emulator, make_mount, tmp_path
):
    """A file written while XNAT refused it waits in the journal; the cache disk (8 MiB
    tmpfs) is then full to its last block and the mount started again: it cannot open the
    content cache's index (SQLite: "disk I/O error") and fails with one line that says the
    disk is full and that the upload is kept; once there is room the next mount sends it.
    Before: a Python traceback ending in ``sqlite3.OperationalError: disk I/O error``."""
    from tests.conftest import ADMIN
    from xnatfs.fs import mounting
    from xnatfs.options import Options
    from xnatfs.runtime import Runtime
    from xnatfs.xnat.auth import Credentials

    emu = make_emulator()
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        cache = disk / "cache"
        rt = Runtime(Options(url=emu.url, cache_dir=cache, prefetch=0), Credentials(*ADMIN))
        rt.start()
        try:
            rt.tree.listdir(PROTOCOLS)
            emu.faults.error_rate, emu.faults.error_status = 1.0, 503
            out = rt.writer.create(f"{PROTOCOLS}/waiting.txt")
            out.write(0, b"waiting\n")
            with pytest.raises(Exception):  # noqa: B017 - XNAT's 503: kept in the journal
                out.flush()
            out.close()
        finally:
            emu.faults.error_rate = 0.0
            rt.close()
        filler = fill_up(disk)
        mnt = tmp_path / "full-mnt"
        mnt.mkdir()
        argv = mounting.xnatfs_argv(emu.url, mnt, "--cache-dir", str(cache))
        daemon = mounting.MountDaemon(
            argv, mnt, tmp_path / "full.log", {"username": ADMIN[0], "password": ADMIN[1]}
        ).start()
        with pytest.raises(mounting.MountFailed) as info:
            daemon.wait(30, tail_lines=20)
        daemon.stop(grace=3)
        said = str(info.value)
        assert info.value.returncode == 1 and "Traceback" not in said, said
        assert "its disk is full" in said and "1 upload(s) not on XNAT yet" in said, said
        filler.unlink()
        make_mount(emu.url, "--prefetch", "0", cache=cache)  # room again: the upload goes
        wait_for(
            lambda: (
                requests.get(
                    f"{emu.url}/data/projects/DEMO1/resources/protocols/files/waiting.txt",
                    auth=ADMIN,
                    timeout=30,
                ).content
                == b"waiting\n"
            ),
            30,
            what="the upload kept in the journal",
        )
