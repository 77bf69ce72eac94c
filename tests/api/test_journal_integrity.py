"""Integrity of the journal across restarts (review8i), through the runtime API (no mount)
against the emulator, like ``test_tree.py``: each test says what it showed failing before its
fix.  A "crash" here is a runtime closed without its uploads done, or the journal's state on
disk as a kill -9 at a given step leaves it; the next ``Runtime`` on the same cache resumes."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN
from tests.helpers.crash import Crash, CrashingOs
from tests.mount.helpers import dicom_zip, wait_for
from xnatfs.fs.errmap import errno_for
from xnatfs.tree.uploading import _import_not_taken
from xnatfs.uploads import journal as journal_mod
from xnatfs.uploads.journal import Journal
from xnatfs.uploads.retry import classify_text
from xnatfs.xnat.errors import BadRequest, ServerError, Unreachable, XnatTimeout

PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"
#: a time in the past, to the nanosecond (rsync and make compare nanoseconds)
SET_NS = 1_500_000_000_123_456_789


def server_status(emu, name):
    r = requests.get(f"{emu.url}{PROTOCOLS_URI}/{name}", auth=ADMIN, timeout=30)
    return r.status_code, r.content


@contextlib.contextmanager
def xnat_refusing(rt):
    """XNAT answers 503 to everything while the block runs (the folder's listing is loaded
    first); it answers again when the block ends."""
    rt.tree.listdir(PROTOCOLS)
    rt.emu.faults.error_rate = 1.0
    rt.emu.faults.error_status = 503
    try:
        yield
    finally:
        rt.emu.faults.error_rate = 0.0


def write_pending(writer, path, data):
    """``path`` written and closed while XNAT refuses it: a version pending in the journal."""
    handle = writer.create(path)
    handle.write(0, data)
    with pytest.raises(Exception):  # noqa: B017 - the 503's error; kept pending
        handle.flush()
    handle.close()


def test_a_time_set_on_a_pending_file_survives_a_restart_and_its_upload(runtimes):
    """``cp -p`` (or ``touch -d``, ``rsync -a``) of a file while XNAT is down: the time was
    kept in memory only (``LocalFile.mtime_ns``); after a restart the file showed the time it
    was journalled, and kept that one once uploaded (rsync and make saw it changed)."""
    make = runtimes
    rt = make()
    path = f"{PROTOCOLS}/dated.txt"
    with xnat_refusing(rt):
        write_pending(rt.writer, path, b"dated\n")
        rt.writer.set_mtime(path, SET_NS)  # utimens of the pending file
        assert rt.tree.mtime_ns(rt.tree.lookup(path)) == SET_NS
    rt.close()  # stopped with the upload pending; XNAT answers again
    rt = make()  # the next mount on the same cache: the upload resumes
    wait_for(lambda: not rt.writer.status(), 30, what="the resumed upload")
    assert server_status(rt.emu, "dated.txt") == (200, b"dated\n")
    rt.tree.invalidate(PROTOCOLS)
    assert rt.tree.mtime_ns(rt.tree.lookup(path)) == SET_NS


def test_a_time_set_while_the_uploader_holds_the_entry_is_not_reverted(runtimes):
    """The uploader writes its own copy of an entry (state, tries) after each attempt; a
    time set on the file meanwhile must not be overwritten on disk by that older copy."""
    make = runtimes
    rt = make()
    path = f"{PROTOCOLS}/dated2.txt"
    with xnat_refusing(rt):
        write_pending(rt.writer, path, b"dated too\n")
        entry = rt.writer.journal.pending_for(path)
        rt.writer.set_mtime(path, SET_NS)
        rt.writer.journal.update(entry)  # the uploader's copy, taken before the utimens
    rt.close()
    rt = make()
    wait_for(lambda: not rt.writer.status(), 30, what="the resumed upload")
    rt.tree.invalidate(PROTOCOLS)
    assert rt.tree.mtime_ns(rt.tree.lookup(path)) == SET_NS


def crashed_at(monkeypatch, k, action) -> bool:
    """Run ``action`` with the journal's k-th mutating call killed; True if it was."""
    monkeypatch.setattr(journal_mod, "os", CrashingOs(k))
    try:
        action()
        return False
    except Crash:
        return True
    finally:
        monkeypatch.setattr(journal_mod, "os", os)


def after_restart(writer, tmp_path, k):
    """What the next mount finds: a copy of the journal as the crash left it, reloaded (the
    live runtime goes on beside it, its retries far off)."""
    copy = tmp_path / f"journal-after-crash-{k}"
    shutil.copytree(writer.journal.directory, copy)
    journal = Journal(copy)
    journal.reload()
    return {
        path: [Path(e.data_path).read_bytes() for e in journal.versions_for(path)]
        for path in journal.by_path()
    }


def held_back(writer):
    """Closed files of temporary names wait for their rename, here for an hour: versions
    pending in the journal while XNAT answers (its listings keep working)."""
    writer.temp_delay = 3600.0


def write_version(writer, path, data):
    handle = writer.create(path)
    handle.write(0, data)
    handle.close()  # a temporary name: journalled, its upload held back


def test_a_crash_at_any_step_of_rm_never_brings_an_older_version_back(
    make_runtime, tmp_path, monkeypatch
):
    """rm of a file with two versions pending, killed at each step of the journal's work in
    turn.  rm dropped the newest version first, then the older ones: killed in between, the
    next mount showed the name again with the FIRST version's bytes, a version the user had
    overwritten and then removed.  Now the older versions go first: a kill leaves the name
    as it was (rm not done: its newest bytes) or gone, never older bytes."""
    rt = make_runtime()
    writer = rt.writer
    held_back(writer)
    bad, points = [], 0
    for k in range(1, 40):
        path = f"{PROTOCOLS}/rm{k}.tmp"
        write_version(writer, path, b"first version\n")
        write_version(writer, path, b"second version\n")
        if not crashed_at(monkeypatch, k, lambda path=path: writer.unlink(path)):
            break
        points += 1
        found = after_restart(writer, tmp_path, k).get(path, [])
        if found and found[-1] != b"second version\n":  # the name shows its newest
            bad.append((k, found))
    assert points >= 4, "the crash should have stopped rm at several points"
    assert bad == []  # before: the first version back after a kill at steps 3 to 5


def test_a_crash_at_any_step_of_rename_leaves_one_name(make_runtime, tmp_path, monkeypatch):
    """A file with two versions pending renamed over another pending file (a log rotated
    over the previous rotation while XNAT was down), killed at each step of the journal's
    work in turn.  The rename moved the newest version, then dropped the old name's older
    version and the file renamed over: killed in between, the next mount showed both names
    (the old one with the FIRST version's bytes), and kept the replaced file's bytes as a
    version of the new name, uploaded before the renamed one.  Now the renamed record
    names what it replaces (one write, ``Journal.renamed(supersedes=...)``): a kill leaves
    the rename not done, or done, nothing in between."""
    rt = make_runtime()
    writer = rt.writer
    held_back(writer)
    first, second, other = b"first version\n", b"second version\n", b"renamed over\n"
    bad, points = [], 0
    for k in range(1, 60):
        old, new = f"{PROTOCOLS}/log{k}.tmp", f"{PROTOCOLS}/log{k}.part"
        write_version(writer, new, other)
        write_version(writer, old, first)
        write_version(writer, old, second)
        if not crashed_at(monkeypatch, k, lambda old=old, new=new: writer.rename(old, new)):
            break
        points += 1
        found = after_restart(writer, tmp_path, k)
        not_done = found.get(old, [])[-1:] == [second] and found.get(new) == [other]
        done = old not in found and found.get(new) == [second]
        if not (not_done or done):
            bad.append((k, found.get(old), found.get(new)))
    assert points >= 4, "the crash should have stopped the rename at several points"
    assert bad == []


def prearchive_sessions(emu, project="DEMO1"):
    r = requests.get(
        f"{emu.url}/data/prearchive/projects/{project}",
        params={"format": "json"},
        auth=ADMIN,
        timeout=30,
    )
    r.raise_for_status()
    return sorted(row["url"] for row in r.json()["ResultSet"]["Result"])


def import_posts(emu, mark):
    return [p for m, p, *_ in emu.since(mark) if m == "POST" and "/services/import" in p]


def test_an_import_whose_answer_was_lost_is_not_sent_again(make_runtime, tmp_path):
    """A DICOM zip copied into the prearchive while XNAT answers slower than the read
    timeout: XNAT imports it, the mount's POST times out.  The retries sent the archive
    again (a timeout is transient), and each POST XNAT took made one more session: the
    prearchive held it twice or more.  An import whose answer was lost is sent once; the
    file is kept as failed, its error says what happened and that it was not sent again."""
    rt = make_runtime(read_timeout=1.0)
    writer, emu = rt.writer, rt.emu
    writer.uploader.base_delay = writer.uploader.max_delay = 0.2  # quick retries
    zpath = tmp_path / "study.zip"
    dicom_zip(zpath, "LOSTANSWER")
    before = prearchive_sessions(emu)
    mark = emu.mark()
    path = "/.prearchive/DEMO1/study.zip"
    rt.tree.listdir("/.prearchive/DEMO1")
    emu.faults.latency_ms = 2500  # XNAT takes it, after the mount stopped waiting
    try:
        handle = writer.create(path)
        handle.write(0, zpath.read_bytes())
        with pytest.raises(Exception) as err:
            handle.flush()
        handle.close()
        assert errno_for(err.value) == errno.ETIMEDOUT  # what close() answers
    finally:
        emu.faults.latency_ms = 0
    wait_for(lambda: len(prearchive_sessions(emu)) > len(before), 30, what="XNAT's import")
    # what the retries would do, at once (0.2 s apart): before, a second POST, a second session
    wait_for(lambda: [s["state"] for s in writer.status()] == ["failed"], 10, what="failed")
    made = sorted(set(prearchive_sessions(emu)) - set(before))
    assert len(made) == 1, made  # before: 2 or more
    assert len(import_posts(emu, mark)) == 1
    (status,) = writer.status()
    # XNAT was still busy with it when the answer was lost: its listing could not say yet
    assert "not sent again" in status["last_error"]
    assert "sent at" in status["last_error"] and "timed out" in status["last_error"]
    # kept across a restart: an older version's "failed" for a transient reason is queued
    # again at start, this one is not
    assert not classify_text(status["last_error"]).retry


@pytest.mark.parametrize(
    "error, not_taken",
    [
        (ServerError("POST", "u", 503), True),
        (ServerError("POST", "u", 429), True),
        (BadRequest("POST", "u", 400), True),
        (Unreachable("POST", "u", None, "no connection within 5s"), True),
        (Unreachable("POST", "u", None, "Failed to establish a new connection: refused"), True),
        (ServerError("POST", "u", 500), False),
        (ServerError("POST", "u", 502), False),
        (ServerError("POST", "u", 504), False),
        (XnatTimeout("POST", "u", None, "no data for 60s"), False),
        (Unreachable("POST", "u", None, "connection broken: reset by peer"), False),
        (OSError(errno.EPIPE, "Broken pipe"), False),
    ],
)
def test_which_answers_of_an_import_say_xnat_did_not_take_it(error, not_taken):
    """Only those are sent again; every other failure leaves the import unknown."""
    assert _import_not_taken(error) is not_taken


def test_a_version_after_a_pending_one_does_not_replace_another_clients_file(make_runtime):
    """A new file written while XNAT answers 503 (pending), then appended to (its next
    version replaces the first, which may be on XNAT by then: overwrite); meanwhile another
    XNAT client stores the same name.  When XNAT answered again the first version was
    refused ("duplicates", kept as failed) and the second replaced the other client's file:
    destroyed without --allow-delete, and nobody told.  Now a version that replaces the
    mount's own earlier one checks first that XNAT holds that one (or nothing): another
    file there is refused as the first was (EEXIST, kept as failed)."""
    rt = make_runtime()
    writer = rt.writer
    writer.uploader.base_delay = writer.uploader.max_delay = 3600.0  # retries when asked
    path = f"{PROTOCOLS}/results.log"
    with xnat_refusing(rt):
        write_pending(writer, path, b"mine, part 1\n")
        handle = writer.open_write(rt.tree.lookup(path), path, truncate=False)
        handle.write(13, b"mine, part 2\n")
        with pytest.raises(Exception):  # noqa: B017 - the 503's error; kept pending
            handle.flush()
        handle.close()
    r = requests.put(
        f"{rt.emu.url}{PROTOCOLS_URI}/results.log?inbody=true",
        data=b"the other client's\n",
        auth=ADMIN,
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    for entry in writer.journal.entries():
        writer.uploader.submit(entry)  # the retries, due now
    wait_for(lambda: all(s["state"] == "failed" for s in writer.status()), 30, what="the retries")
    assert server_status(rt.emu, "results.log") == (200, b"the other client's\n")  # before: mine
    states = [s["state"] for s in writer.status()]
    assert states == ["failed", "failed"], states


def test_a_crash_at_any_step_of_a_same_bytes_close_leaves_no_version_of_the_change(
    make_runtime, tmp_path, monkeypatch
):
    """--allow-delete; a file on XNAT changed twice while XNAT answers 503 (two versions
    pending), then its original bytes copied back (`cp orig f`: XNAT holds them, the close
    drops the pending versions, ``UploadPath._held_by_xnat``), killed at each step of the
    journal's work in turn.  The close removed the versions one by one, oldest first:
    killed in between, the next mount found some of them (the later ones) and uploaded
    them over the bytes the user had put back, a part of a decision half made.  Now the
    decision is one atomic journal write (``Journal.remove_all``): a kill leaves every
    version (the close not done, not answered) or none."""
    rt = make_runtime(allow_delete=True)
    writer = rt.writer
    writer.uploader.base_delay = writer.uploader.max_delay = 3600  # retried when told only
    original, changes = b"the original\n", [b"change 1\n", b"change 2, longer\n"]
    bad, points, seen = [], 0, set()
    for k in range(1, 40):
        name = f"same{k}.txt"
        path = f"{PROTOCOLS}/{name}"
        r = requests.put(
            f"{rt.emu.url}{PROTOCOLS_URI}/{name}?inbody=true", data=original, auth=ADMIN
        )
        assert r.status_code in (200, 201), r.text
        rt.tree.invalidate(PROTOCOLS)
        rt.emu.faults.fault_methods = "PUT"
        with xnat_refusing(rt):
            for data in changes:  # cp change f, twice: EIO, pending
                write_pending(writer, path, data)
        assert len(writer.journal.versions_for(path)) == 2
        handle = writer.create(path, truncate=True)  # cp orig f
        handle.write(0, original)
        if not crashed_at(monkeypatch, k, handle.flush):
            assert writer.journal.versions_for(path) == []
            break
        points += 1
        found = after_restart(writer, tmp_path, k).get(path, [])
        if found not in ([], changes):
            bad.append((k, found))
        seen.add(len(found))
    assert points >= 4, "the crash should have stopped the close at several points"
    assert bad == []  # before: the second change alone after a kill at 4 of its steps
    assert {0, 2} <= seen  # killed before the decision and after it
