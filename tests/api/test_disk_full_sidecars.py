"""A failed upload attempt whose journal record meets a full disk (integ10).

An attempt that fails rewrites its entry's sidecar (state, tries, the error, the MD5:
``Uploader._failed``).  On a full disk (ENOSPC, EDQUOT) that write failed and was only
logged: the sidecar kept the previous version, and so did the journal's index in memory,
which ``xnatfs status``, the rename and append paths and the next mount read.  Now the write
makes room first, as the other write paths do (the content cache evicts copies of XNAT's
files), and when the disk is still full the index holds the new version for this mount
(unsaved, written again at unmount).  The full disk is injected in the journal's ``os``
while XNAT answers the PUT.

A mount that starts on a full disk (journal replay) starts, keeps every entry and uploads
the pending ones (``test_a_mount_started_on_a_full_disk_keeps_and_resumes_its_uploads``).
"""

from __future__ import annotations

import errno
import os

import pytest

from tests.api.test_disk_full_writes import PROTOCOLS, _cache_one_file
from tests.api.test_journal_integrity import server_status, write_pending, xnat_refusing
from tests.helpers.crash import FullDiskOs
from tests.helpers.waiting import wait_for
from xnatfs.fs.errmap import errno_for
from xnatfs.uploads import journal as journal_mod
from xnatfs.uploads.journal import read_entries
from xnatfs.uploads.spool import SPOOL_SUFFIX


def _disk_full_during_put(monkeypatch, uploader, refusals, code=errno.ENOSPC):
    """The cache disk fills up while the PUT is on the wire: the journal's next
    ``refusals`` writes fail with ``code``."""
    put = uploader._put

    def put_on_a_filling_disk(entry):
        monkeypatch.setattr(journal_mod, "os", FullDiskOs(refusals=refusals, code=code))
        return put(entry)

    monkeypatch.setattr(uploader, "_put", put_on_a_filling_disk)


def _refused_close(rt, name):
    """``name`` written and closed while XNAT refuses the PUT for good (403): the close
    answers EACCES and the entry is kept as failed."""
    rt.tree.listdir(PROTOCOLS)
    out = rt.writer.create(f"{PROTOCOLS}/{name}")
    out.write(0, b"refused\n")
    rt.emu.faults.error_rate = 1.0
    rt.emu.faults.error_status = 403
    try:
        with pytest.raises(Exception) as info:  # XNAT refusal, errno below
            out.flush()
    finally:
        rt.emu.faults.error_rate = 0.0
    out.close()
    return info.value


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_failed_attempts_record_on_a_full_disk_makes_room(runtime, monkeypatch, code):
    """The failure's sidecar write meets a full disk once: cached files are evicted and the
    record written.  Before, nothing was evicted and the sidecar on disk still said
    ``pending``, 0 tries (the next mount sent the refused file again)."""
    _cache_one_file(runtime)
    evicted = runtime.content.stats["evictions"]
    writer = runtime.writer
    _disk_full_during_put(monkeypatch, writer.uploader, refusals=1, code=code)
    _refused_close(runtime, "refused_once.txt")
    monkeypatch.undo()
    assert runtime.content.stats["evictions"] > evicted
    on_disk = read_entries(writer.journal.directory)
    assert [(e.state, e.tries) for e in on_disk] == [("failed", 1)]
    assert "403" in on_disk[0].last_error


def test_a_failed_attempt_on_a_disk_still_full_is_shown_failed(make_runtime, monkeypatch):
    """Nothing to evict and the disk stays full: the sidecar keeps its last version, but
    this mount shows the failure (``xnatfs status``: failed, 1 try, XNAT's refusal), and
    the record is written at unmount once there is room, so the next mount shows it failed
    and sends nothing.  Before, status said ``pending``, 0 tries, no error, no retry
    scheduled, and the next mount sent the refused file to XNAT again."""
    rt = make_runtime()
    writer = rt.writer
    _disk_full_during_put(monkeypatch, writer.uploader, refusals=1000)
    err = _refused_close(rt, "refused_full.txt")
    assert errno_for(err) == errno.EACCES
    (item,) = writer.status()
    assert (item["state"], item["tries"]) == ("failed", 1), item
    assert "403" in item["last_error"], item
    assert writer.journal.entries()[0].state == "failed"
    monkeypatch.undo()  # room again before the unmount
    cache_dir = rt.options.cache_dir
    rt.close()
    journal_dir = writer.journal.directory
    on_disk = read_entries(journal_dir)
    assert [(e.state, e.tries) for e in on_disk] == [("failed", 1)], cache_dir


def test_a_mount_started_on_a_full_disk_keeps_and_resumes_its_uploads(runtimes, monkeypatch):
    """A mount starts with an upload pending in the journal and a spool file a crash left,
    the journal's disk full (every write refused): the mount starts, lists both (the
    leftover as a failed entry), the pending upload lands, and the leftover's record is
    written at unmount once there is room.  Before, the leftover's sidecar write raised
    ENOSPC out of the start: the mount failed, and its pending upload with it."""
    rt = runtimes()
    with xnat_refusing(rt):
        write_pending(rt.writer, f"{PROTOCOLS}/resumed.txt", b"resumed\n")
    spool_dir, journal_dir = rt.writer.spool.directory, rt.writer.journal.directory
    rt.close()
    with open(os.path.join(spool_dir, "crashed" + SPOOL_SUFFIX), "wb") as fh:
        fh.write(b"left by a crash\n")
    monkeypatch.setattr(journal_mod, "os", FullDiskOs(refusals=10_000))
    rt = runtimes()  # before: OSError ENOSPC
    wait_for(
        lambda: server_status(rt.emu, "resumed.txt") == (200, b"resumed\n"),
        30,
        what="the resumed upload",
    )
    # XNAT has the bytes a moment before the uploader's check drops their entry
    wait_for(lambda: len(rt.writer.status()) == 1, 30, what="the resumed upload's entry gone")
    (left,) = rt.writer.status()
    assert left["state"] == "failed" and "left by a crash" in left["last_error"], left
    monkeypatch.undo()  # room again before the unmount
    rt.close()
    (kept,) = read_entries(journal_dir)
    assert kept.state == "failed" and kept.size == len(b"left by a crash\n")


def test_a_time_set_on_a_pending_file_on_a_full_disk_makes_room(runtime, monkeypatch):
    """``touch -d``/``cp -p`` of a file waiting in the journal, its record's write meeting a
    full disk once: cached files are evicted and the time is in the record (it survives a
    restart).  Before, the time was kept in memory only, with a WARNING, nothing evicted."""
    _cache_one_file(runtime)
    evicted = runtime.content.stats["evictions"]
    writer = runtime.writer
    path = f"{PROTOCOLS}/dated_full.txt"
    with xnat_refusing(runtime):
        write_pending(writer, path, b"dated\n")
    monkeypatch.setattr(journal_mod, "os", FullDiskOs(refusals=1))
    writer.set_mtime(path, 1_500_000_000_123_456_789)
    monkeypatch.undo()
    assert runtime.content.stats["evictions"] > evicted
    (entry,) = read_entries(writer.journal.directory)
    assert entry.mtime_ns == 1_500_000_000_123_456_789


def test_an_import_whose_record_meets_a_full_disk_makes_room(runtime, monkeypatch, tmp_path):
    """An import records that its POST goes out before the first byte (``mark_sent``); that
    write meeting a full disk once now evicts and the import goes on: close returns 0 and
    XNAT has the session.  Before, the close failed with ENOSPC (retried later), nothing
    evicted."""
    from tests.api.test_journal_integrity import prearchive_sessions
    from tests.mount.helpers import dicom_zip

    _cache_one_file(runtime)
    evicted = runtime.content.stats["evictions"]
    writer = runtime.writer
    zpath = tmp_path / "study.zip"
    dicom_zip(zpath, "FULLDISK")
    before = prearchive_sessions(runtime.emu)
    runtime.tree.listdir("/.prearchive/DEMO1")
    _disk_full_during_put(monkeypatch, writer.uploader, refusals=1)
    handle = writer.create("/.prearchive/DEMO1/study.zip")
    handle.write(0, zpath.read_bytes())
    handle.flush()  # before: OSError ENOSPC
    handle.close()
    monkeypatch.undo()
    assert runtime.content.stats["evictions"] > evicted
    assert len(prearchive_sessions(runtime.emu)) == len(before) + 1
