"""Races of the write path found by review6, through the runtime API (no mount) against the
emulator, like ``test_tree.py``: each test says what it showed failing before its fix."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import threading

import pytest
import requests

from tests.api.helpers import answer
from tests.conftest import ADMIN
from tests.mount.helpers import wait_for
from xnatfs.fs.errmap import errno_for
from xnatfs.runtime import Runtime
from xnatfs.uploads import Spool
from xnatfs.uploads.journal import Journal
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.errors import XnatError

PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"


def server_status(runtime, name):
    r = requests.get(f"{runtime.emu.url}{PROTOCOLS_URI}/{name}", auth=ADMIN, timeout=30)
    return r.status_code, r.content


def listed(runtime):
    runtime.tree.invalidate(PROTOCOLS)
    return {n.name for n in runtime.tree.listdir(PROTOCOLS)}


def test_rename_of_an_open_file_already_uploaded_by_fsync_does_not_lie(runtime):
    """write, fsync (the bytes go to XNAT at once), rename while still open, close: the
    save pattern of many programs.  The rename answered 0 and the file showed under the new
    name until the close, then vanished from it: XNAT had it under the old name only.  A
    rename must say what happened: it is XNAT's file now, and XNAT has no move."""
    writer = runtime.writer
    old, new = f"{PROTOCOLS}/draft.txt", f"{PROTOCOLS}/final.txt"
    handle = writer.create(old)
    handle.write(0, b"saved\n")
    handle.flush()  # fsync: uploaded and confirmed, the handle still open
    assert server_status(runtime, "draft.txt") == (200, b"saved\n")
    try:
        writer.rename(old, new)
        renamed = True
    except OSError as exc:
        assert exc.errno in (errno.EACCES, errno.EXDEV)
        renamed = False
    handle.close()
    names = listed(runtime)
    if renamed:  # then the new name must hold the bytes, on XNAT and in the listing
        assert "final.txt" in names, names
        assert server_status(runtime, "final.txt") == (200, b"saved\n")
    else:  # the old name is still the file's, as XNAT has it
        assert "draft.txt" in names and "final.txt" not in names


class Gate:
    """Holds the client's upload PUTs of one name (``upload_file``) until ``open``; says when
    one is held."""

    def __init__(self, client, name, fail_first=False):
        self.client, self.name = client, name
        self.real = client.upload_file
        #: the first PUT of the name times out before it reaches XNAT (not held)
        self.fail_first = fail_first
        self.arrived, self.opened = threading.Event(), threading.Event()
        self.passed = threading.Event()  # a held PUT went through (or failed)
        client.upload_file = self.upload_file

    def upload_file(self, resource_uri, relpath, *a, **k):
        if relpath == self.name and self.fail_first:
            self.fail_first = False
            raise TimeoutError(errno.ETIMEDOUT, "read timed out")
        if relpath == self.name:
            self.arrived.set()
            assert self.opened.wait(30), "the test forgot to open the gate"
            try:
                return self.real(resource_uri, relpath, *a, **k)
            finally:
                self.passed.set()
        return self.real(resource_uri, relpath, *a, **k)

    def open(self):
        self.opened.set()
        self.client.upload_file = self.real


def test_unlink_while_the_upload_runs_does_not_leave_the_file_on_xnat(runtime):
    """rsync's temporary file, closed, its delayed upload started; then removed (rsync
    --inplace aborted, a cleanup).  unlink answered 0 and dropped the journal entry under
    the running attempt, whose PUT still landed: the file came back on XNAT and in the
    listing after a successful rm.  Either rm waits and removes it, or it says why not."""
    writer = runtime.writer
    writer.temp_delay = 0.0  # the delayed upload starts at once
    name = ".scan.nii.AbC123"
    path = f"{PROTOCOLS}/{name}"
    gate = Gate(writer.client, name)
    handle = writer.create(path)
    handle.write(0, b"temporary bytes")
    handle.close()  # a temporary name: queued for the background, not uploaded here
    assert gate.arrived.wait(30), "the background upload did not start"
    result = {}

    def rm():
        try:
            writer.unlink(path)
            result["removed"] = True
        except OSError as exc:
            result["removed"] = exc.errno

    t = threading.Thread(target=rm)
    t.start()
    t.join(0.3)  # fixed: rm waits for the running upload, so this wait runs out
    gate.open()
    t.join(30)
    removed = result["removed"] is True
    if not removed:  # the upload won: XNAT's file, whose rm needs --allow-delete
        assert result["removed"] == errno.EACCES, result
    assert gate.passed.wait(30), "the held upload did not end"
    wait_for(lambda: not writer.status(), 30, what="the upload to end")
    if removed:  # rm said yes: XNAT must not have it, nor the listing
        assert server_status(runtime, name)[0] == 404
        assert name not in listed(runtime)
    else:
        assert server_status(runtime, name) == (200, b"temporary bytes")


def test_rsync_renaming_over_a_file_whose_upload_runs_ends_with_the_newest_bytes(runtime):
    """rsync writes run.log while the close() of its earlier copy still uploads it (a slow
    XNAT), renames its temporary file over it: the renamed entry kept overwrite=false, as
    for a name XNAT does not have, but the earlier upload put that name there first.  XNAT
    answered "duplicates": the newest bytes were kept as failed, the rename answered EEXIST,
    and XNAT kept the older bytes."""
    writer = runtime.writer
    final, temp = f"{PROTOCOLS}/run.log", f"{PROTOCOLS}/.run.log.AbC123"
    gate = Gate(writer.client, "run.log")
    first = writer.create(final)
    first.write(0, b"older bytes\n")
    closing = threading.Thread(target=first.close)  # the earlier close() uploads it
    closing.start()
    assert gate.arrived.wait(30), "the first upload did not start"
    second = writer.create(temp)
    second.write(0, b"newer bytes, longer\n")
    second.close()  # a temporary name: its upload waits for the rename
    result = {}

    def mv():
        try:
            writer.rename(temp, final)
            result["renamed"] = True
        except Exception as exc:  # noqa: BLE001 - before the fix: Conflict (EEXIST)
            result["renamed"] = exc

    t = threading.Thread(target=mv)
    t.start()
    t.join(0.3)  # its upload waits for the running one of the same name
    gate.open()
    t.join(30)
    closing.join(30)
    assert result["renamed"] is True, result
    wait_for(lambda: not writer.status(), 30, what="the uploads")
    assert server_status(runtime, "run.log") == (200, b"newer bytes, longer\n")
    assert {"run.log", ".run.log.AbC123"} & listed(runtime) == {"run.log"}


def test_a_read_just_after_a_second_upload_sees_xnats_bytes_not_eio(runtime):
    """A log held open: written, fsync'ed (uploaded), appended, fsync'ed again.  The
    uploader drops the journal's copy of the second upload before it tells the overlay; a
    read by another handle in between goes to XNAT's copy, checked against the size XNAT
    confirmed -- but that was still the first upload's (``LocalFile.uploaded_size``), and
    the read failed with EIO ("XNAT does not list it as uploaded"), as did a write there."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/twice.log"
    handle = writer.create(path)
    handle.write(0, b"A" * 1000)
    handle.flush()  # uploaded and confirmed: 1000 bytes
    handle.write(1000, b"B" * 10)
    other = writer.open_write(runtime.tree.lookup(path), path, truncate=False)
    remove, seen = writer.journal.remove, {}

    def remove_then_read(entry):
        remove(entry)
        if "read" not in seen:
            for key, call in (
                ("read", lambda: other.read(1000, 10)),
                ("wrote", lambda: other.write(1010, b"C" * 5)),
            ):
                try:
                    seen[key] = call()
                except OSError as exc:  # before: EIO
                    seen[key] = exc

    writer.journal.remove = remove_then_read
    try:
        handle.flush()  # the second upload: 1010 bytes
    finally:
        writer.journal.remove = remove
    assert seen == {"read": b"B" * 10, "wrote": 5}
    handle.close()
    other.close()
    assert server_status(runtime, "twice.log") == (200, b"A" * 1000 + b"B" * 10 + b"C" * 5)


def test_a_second_version_written_while_the_first_is_retried_wins(runtime):
    """close() of a file whose upload timed out (kept, retried in the background), then the
    file written again (open, write, close) while that retry runs on a slow XNAT: the second
    close waits for the retry until the fs deadline and answers ETIMEDOUT.  Its version was
    then queued nowhere: the retry put the first version on XNAT, the second stayed pending
    (and shown) until the next mount.  The newest must end on XNAT, nothing pending, the
    listing showing XNAT's file."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/versions.log"
    gate = Gate(writer.client, "versions.log", fail_first=True)
    first = writer.create(path)
    first.write(0, b"first version\n")
    with pytest.raises(OSError) as err:
        first.flush()  # the PUT timed out: kept, retried after a backoff
    assert err.value.errno == errno.ETIMEDOUT
    first.close()
    assert gate.arrived.wait(30), "the retry did not start"  # and is held at the PUT
    writer.fs_timeout = 0.5
    second = writer.create(path)
    second.write(0, b"second version, longer\n")
    with pytest.raises(OSError) as err:
        second.flush()  # waits for the running retry until the deadline
    assert err.value.errno == errno.ETIMEDOUT
    second.close()
    gate.open()
    wait_for(lambda: not writer.status(), 30, what="both versions to settle")
    assert server_status(runtime, "versions.log") == (200, b"second version, longer\n")
    assert writer.node(("DEMO1", "resources", "protocols", "files", "versions.log")) is None
    runtime.tree.invalidate(PROTOCOLS)
    assert runtime.tree.lookup(path).size == len(b"second version, longer\n")


def rsync_copy(writer, temp, data=b"rsync's copy\n"):
    """rsync's temporary file ``temp``, written and closed (held back: not uploaded yet)."""
    copy = writer.create(temp)
    copy.write(0, data)
    copy.close()


def held_open(writer, name):
    """``name`` created and written by a program that keeps it open; returns the handle, the
    final path and rsync's temporary name beside it (``rsync_copy`` written there)."""
    final, temp = f"{PROTOCOLS}/{name}", f"{PROTOCOLS}/.{name}.AbC123"
    holder = writer.create(final)
    holder.write(0, b"the program's line\n")
    rsync_copy(writer, temp)
    return holder, final, temp


def test_rename_over_a_file_still_open_leaves_nothing_failed_behind(runtime):
    """A program holds held.log open and writes it; rsync renames its copy over the name.
    The rename took the name from under the open file, whose close() then uploaded it to
    the same name without overwrite: EEXIST at close and a failed entry kept for held.log,
    which the next mount shows in place of XNAT's file.  Whichever copy ends under the name
    (POSIX: rsync's; the open file's writes go to an unlinked file), nothing may stay failed
    or pending, and the mount must show what XNAT has."""
    writer = runtime.writer
    holder, final, temp = held_open(writer, "held.log")
    writer.rename(temp, final)
    holder.write(19, b"one more line\n")
    try:
        holder.close()
    except OSError:
        pass  # before: EEXIST ("duplicates"); the test is about what stays behind
    wait_for(lambda: all(s["state"] != "pending" for s in writer.status()), 30, what="the uploads")
    assert writer.status() == []  # nothing failed or pending for the next mount to show
    status, on_xnat = server_status(runtime, "held.log")
    assert status == 200 and on_xnat in (
        b"rsync's copy\n",
        b"the program's line\none more line\n",
    )
    runtime.tree.invalidate(PROTOCOLS)
    assert runtime.tree.lookup(final).size == len(on_xnat)
    runtime.close()  # and the next mount shows XNAT's file too
    later = Runtime(runtime.options, Credentials(*ADMIN))
    later.start()
    try:
        assert later.tree.lookup(final).size == len(on_xnat)
    finally:
        later.close()


def test_a_committed_file_renamed_over_while_open_keeps_its_bytes_for_the_descriptor(runtime):
    """As rm's case below: the holder's fsync committed its file and XNAT refused the upload
    (503), so its bytes were the journal's only; rsync's rename over the name dropped that
    record, and the open descriptor read nothing (or zeros up to its next write).  Now it
    keeps a copy until it closes; rsync's file is what XNAT ends with."""
    writer, emu = runtime.writer, runtime.emu
    final, temp = f"{PROTOCOLS}/held2.log", f"{PROTOCOLS}/.held2.log.AbC123"
    holder = writer.create(final)
    holder.write(0, b"the program's line\n")
    emu.faults.update({"error_rate": 1.0, "error_status": 503})
    with pytest.raises(XnatError):
        holder.fsync()  # in the journal, pending
    emu.faults.update({"error_rate": 0.0})
    rsync_copy(writer, temp)
    writer.rename(temp, final)
    assert holder.read(0, 100) == b"the program's line\n"
    holder.close()
    wait_for(lambda: writer.status() == [], 30, what="the uploads")
    assert server_status(runtime, "held2.log") == (200, b"rsync's copy\n")


def test_unlink_of_a_file_open_elsewhere_removes_it_as_posix_does(runtime):
    """unlink of a local file another process holds open answered EBUSY (rm failed at
    random just after a close(), whose RELEASE the kernel sends later).  Now it goes: the
    name at once, and the open handle keeps its bytes until it closes, uploading nothing
    (POSIX's unlinked file); nothing stays pending."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/scratch.tmp"
    handle = writer.create(path)
    handle.write(0, b"scratch\n")
    writer.unlink(path)  # before: EBUSY
    assert "scratch.tmp" not in listed(runtime)
    handle.write(8, b"more\n")  # the open handle still works, on its own bytes
    assert handle.read(0, 100) == b"scratch\nmore\n"
    handle.close()
    assert writer.status() == []
    assert server_status(runtime, "scratch.tmp")[0] == 404
    assert "scratch.tmp" not in listed(runtime)


def test_unlink_of_a_committed_file_still_open_keeps_its_bytes_for_the_descriptor(runtime):
    """As above, but the handle's fsync committed the file and XNAT refused the upload (503):
    its bytes were in the journal only, and rm dropped them there.  The open descriptor then
    read nothing, and after a write a spool of zeros up to it; now it keeps a copy, as a
    descriptor of an unlinked file on a local disk does, and nothing is uploaded."""
    writer, emu = runtime.writer, runtime.emu
    path = f"{PROTOCOLS}/committed.txt"
    handle = writer.create(path)
    handle.write(0, b"committed\n")
    emu.faults.update({"error_rate": 1.0, "error_status": 503})
    with pytest.raises(XnatError):
        handle.fsync()  # in the journal, pending
    writer.unlink(path)
    emu.faults.update({"error_rate": 0.0})
    assert handle.read(0, 100) == b"committed\n"
    handle.write(10, b"more\n")
    assert handle.read(0, 100) == b"committed\nmore\n"
    handle.close()
    wait_for(lambda: writer.status() == [], 30, what="nothing pending")
    assert server_status(runtime, "committed.txt")[0] == 404


def test_unlink_of_an_uploaded_file_still_open_answers_as_for_xnats_file(runtime):
    """write, fsync (on XNAT, nothing local left), rm before the handle's RELEASE (the
    kernel sends it after close() returns): EBUSY before.  The file is XNAT's: without
    --allow-delete the rm is refused with EACCES, and XNAT and the listing keep it."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/kept.txt"
    handle = writer.create(path)
    handle.write(0, b"kept\n")
    handle.flush()  # on XNAT
    with pytest.raises(OSError) as err:
        writer.unlink(path)
    assert err.value.errno == errno.EACCES  # before: EBUSY
    handle.close()
    assert server_status(runtime, "kept.txt") == (200, b"kept\n")
    assert "kept.txt" in listed(runtime)


def test_a_readers_close_does_not_upload_a_file_still_being_written(runtime):
    """A program writes a file; another opens it read-only (a viewer, an indexer) and closes
    it.  The reader's RELEASE committed and uploaded the file as it stood, half written:
    when the writer's next write then failed (ENOSPC: "the file is incomplete and will not
    be uploaded"), XNAT already held the incomplete first part as the file."""
    writer, tree = runtime.writer, runtime.tree
    path = f"{PROTOCOLS}/growing.nii"
    out = writer.create(path)
    out.write(0, b"A" * 1000)
    reader = tree.open(tree.lookup(path), path)
    assert reader.read(0, 10) == b"A" * 10
    reader.close()

    def disk_full(offset, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    # the local disk fills up (the spool's, not the network): the spool the next write uses
    # (before the fix a new one: the reader's close had moved the bytes to the journal)
    create = writer.spool.create

    def full_spool(*a, **k):
        spool = create(*a, **k)
        spool.write = disk_full
        return spool

    writer.spool.create = full_spool
    if out.lf.spool is not None:
        out.lf.spool.write = disk_full
    with pytest.raises(OSError) as err:
        out.write(1000, b"B" * 1000)
    assert err.value.errno == errno.ENOSPC
    try:
        out.flush()  # close(): the write's error again
        closed = 0
    except OSError as exc:
        closed = exc.errno
    out.close()
    wait_for(lambda: not writer.status(), 30, what="the journal to settle")
    assert server_status(runtime, "growing.nii")[0] == 404  # before: 200, b"A" * 1000
    assert closed == errno.ENOSPC  # before: 0


@pytest.mark.parametrize("change", ["write", "truncate"])
def test_a_change_failing_while_it_reopens_the_file_marks_it_incomplete(runtime, change):
    """After an fsync the next write reopens the file (a spool filled from XNAT's copy); a
    full disk failed that write with ENOSPC but did not mark the file incomplete, so the
    program's next write (space freed) succeeded past a hole and close() uploaded zeros in
    place of the bytes whose write had failed.  A truncate the same: a later write uploaded
    the file without the truncate's change (XNAT got the old length with the new bytes
    inside).  README: a failed write marks the file incomplete, never uploaded; XNAT keeps
    what it had."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/holes-{change}.bin"
    out = writer.create(path)
    out.write(0, b"A" * 1000)
    out.flush()  # on XNAT; the next change reopens
    with pytest.raises(OSError) as err, disk_full(writer):  # the local disk, not the network
        if change == "write":
            out.write(1000, b"B" * 1000)
        else:
            out.truncate(500)
    assert err.value.errno == errno.ENOSPC
    try:
        out.write(2000 if change == "write" else 500, b"C" * 10)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC  # incomplete: refused, as at close
    try:
        out.flush()
        closed = 0
    except OSError as exc:
        closed = exc.errno
    out.close()
    wait_for(lambda: not writer.status(), 30, what="the journal to settle")
    assert server_status(runtime, f"holes-{change}.bin") == (200, b"A" * 1000)
    assert closed == errno.ENOSPC  # before: 0


def test_a_failed_write_does_not_refuse_the_files_next_version(runtime):
    """A file whose upload is pending (XNAT answering 503) is written again and that write
    fails (full disk): that version is incomplete and dropped at its close, as the README
    says.  But the error stuck to the file: once space was freed, every later version
    (cp again) was refused at close with the old ENOSPC, until the pending one landed."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/again.bin"
    with xnat_refusing(runtime):
        write_pending(writer, path, b"first")
        with disk_full(writer):
            second = writer.create(path)
            with pytest.raises(OSError):
                second.write(0, b"second")
            with pytest.raises(OSError):
                second.flush()
            second.close()
    third = writer.create(path)
    third.write(0, b"third version")
    third.flush()  # before: ENOSPC, the second version's error
    third.close()
    wait_for(lambda: not writer.status(), 30, what="the uploads")
    assert server_status(runtime, "again.bin") == (200, b"third version")


def test_rename_of_a_temporary_file_whose_delayed_upload_starts_ends_under_one_name(runtime):
    """rsync's temporary file: its delayed upload starts just as rsync renames it.  The
    rename waits for that upload (Uploader.held); XNAT confirmed it under the temporary name,
    so the rename answers as for a file on XNAT (EACCES without --allow-delete) and the
    file is XNAT's under that one name, shown once, nothing pending.  (Checked sound.)"""
    writer = runtime.writer
    writer.temp_delay = 0.0
    temp, final = f"{PROTOCOLS}/.atlas.nii.AbC123", f"{PROTOCOLS}/atlas.nii"
    gate = Gate(writer.client, ".atlas.nii.AbC123")
    handle = writer.create(temp)
    handle.write(0, b"atlas")
    handle.close()
    assert gate.arrived.wait(30), "the delayed upload did not start"
    result = {}

    def mv():
        try:
            writer.rename(temp, final)
            result["renamed"] = True
        except OSError as exc:
            result["renamed"] = exc.errno

    t = threading.Thread(target=mv)
    t.start()
    t.join(0.3)  # the rename waits for the running upload
    assert t.is_alive()
    gate.open()
    t.join(30)
    assert result["renamed"] == errno.EACCES
    wait_for(lambda: not writer.status(), 30, what="the upload")
    assert server_status(runtime, ".atlas.nii.AbC123") == (200, b"atlas")
    assert server_status(runtime, "atlas.nii")[0] == 404
    names = listed(runtime)
    assert ".atlas.nii.AbC123" in names and "atlas.nii" not in names


def test_logrotate_while_xnat_is_down_keeps_the_rotated_log(runtime):
    """app.log is pending (XNAT answering 503), logrotate renames it app.log.1, the program
    writes a new app.log, XNAT comes back.  The journal kept the renamed entry listed under
    its old path too (Journal.update moved it to the new path only), so when the new app.log
    was confirmed, the uploader dropped app.log.1's bytes as an older, "superseded" version
    of app.log: acknowledged and lost, the mount showing it pending for ever."""
    writer = runtime.writer
    log_, rotated = f"{PROTOCOLS}/app.log", f"{PROTOCOLS}/app.log.1"
    with xnat_refusing(runtime), contextlib.suppress(Exception):
        write_pending(writer, log_, b"yesterday's log\n")
        writer.rename(log_, rotated)  # its upload's 503 once raised here: a finding of its own
    new = writer.create(log_)
    new.write(0, b"today's log\n")
    new.flush()
    new.close()
    writer.uploader.wake()
    wait_for(lambda: not writer.status(), 60, what="the uploads")
    assert server_status(runtime, "app.log") == (200, b"today's log\n")
    assert server_status(runtime, "app.log.1") == (200, b"yesterday's log\n")


def test_rename_whose_upload_fails_still_answers_the_rename_it_did(runtime):
    """rsync renames its temporary file to the final name while XNAT answers 503: the rename
    was done (the final name shows, pending; the temporary one is gone) but answered the
    upload's error, so rsync reported a failed rename of a file that no longer existed under
    the old name.  A rename is answered for the rename; the upload is retried as any pending
    one (README: shown pending, retried with backoff)."""
    writer = runtime.writer
    temp, final = f"{PROTOCOLS}/.result.nii.AbC123", f"{PROTOCOLS}/result.nii"
    runtime.tree.listdir(PROTOCOLS)
    handle = writer.create(temp)
    handle.write(0, b"result")
    handle.close()  # a temporary name: not uploaded yet
    runtime.emu.faults.error_rate = 1.0
    runtime.emu.faults.error_status = 503
    try:
        writer.rename(temp, final)  # before: raised the 503's error
        names = {n.name for n in runtime.tree.listdir(PROTOCOLS)}
        assert "result.nii" in names and ".result.nii.AbC123" not in names
    finally:
        runtime.emu.faults.error_rate = 0.0
    writer.uploader.wake()
    wait_for(lambda: not writer.status(), 60, what="the retried upload")
    assert server_status(runtime, "result.nii") == (200, b"result")


def test_a_rename_that_fails_on_a_full_disk_changes_nothing(runtime):
    """rsync renames its temporary file while the disk is full: the journal cannot write
    the renamed record (ENOSPC) and the rename answers it, but the mount had already moved
    the file to the new name: shown there pending for ever, while the journal's record
    still uploaded it under the temporary name.  A rename that fails changes nothing."""
    writer = runtime.writer
    temp, final = f"{PROTOCOLS}/.model.nii.AbC123", f"{PROTOCOLS}/model.nii"
    handle = writer.create(temp)
    handle.write(0, b"model")
    handle.close()
    write_sidecar = writer.journal._write_sidecar

    def disk_full(entry, **extra):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.journal._write_sidecar = disk_full  # the sidecar cannot be written (local disk)
    try:
        with pytest.raises(OSError) as err:
            writer.rename(temp, final)
        assert err.value.errno == errno.ENOSPC
    finally:
        writer.journal._write_sidecar = write_sidecar
    names = {n.name for n in runtime.tree.listdir(PROTOCOLS)}
    assert ".model.nii.AbC123" in names and "model.nii" not in names  # before: the other way
    writer.rename(temp, final)  # space freed: now it goes
    wait_for(lambda: not writer.status(), 30, what="the upload")
    assert server_status(runtime, "model.nii") == (200, b"model")
    assert server_status(runtime, ".model.nii.AbC123")[0] == 404


@contextlib.contextmanager
def disk_full(writer):
    """The local disk is full while the block runs: writes to new spool files fail with
    ENOSPC (a spool filled from XNAT's copy included)."""
    create = writer.spool.create

    def full_spool(*a, **k):
        spool = create(*a, **k)

        def no_space(offset, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        spool.write = no_space
        return spool

    writer.spool.create = full_spool
    try:
        yield
    finally:
        writer.spool.create = create


@contextlib.contextmanager
def xnat_refusing(runtime):
    """XNAT answers 503 to everything while the block runs (the folder's listing is loaded
    first); it answers again when the block ends."""
    runtime.tree.listdir(PROTOCOLS)
    runtime.emu.faults.error_rate = 1.0
    runtime.emu.faults.error_status = 503
    try:
        yield
    finally:
        runtime.emu.faults.error_rate = 0.0


def write_pending(writer, path, text):
    """``path`` written and closed while XNAT refuses it: a version pending in the journal."""
    handle = writer.create(path)
    handle.write(0, text)
    with pytest.raises(Exception):  # noqa: B017 - the 503's error; kept pending
        handle.flush()
    handle.close()


@contextlib.contextmanager
def two_versions_pending(runtime, path):
    """``path`` written and closed twice while XNAT answers 503 (two versions pending, quick
    retries); XNAT answers again when the block ends."""
    writer = runtime.writer
    writer.uploader.base_delay = writer.uploader.max_delay = 0.2
    # 503s to the uploads only: 503s to the listings before them too (the rename's check
    # whether XNAT has the new name) paused the whole mount, 25 s of the test spent waiting
    runtime.emu.faults.fault_methods = "PUT"
    with xnat_refusing(runtime):
        for text in (b"first version\n", b"second version\n"):
            write_pending(writer, path, text)
        yield


def test_rename_takes_the_older_pending_versions_of_its_name_along(runtime):
    """A log written twice while XNAT answers 503 (two versions pending), then renamed.
    The rename moved the newest version; the older one stayed queued under the old name and
    uploaded there once XNAT came back: the old name reappeared on XNAT (and in the mount)
    with the first version's bytes after a rename that answered 0."""
    writer = runtime.writer
    old, new = f"{PROTOCOLS}/twice.log", f"{PROTOCOLS}/twice.log.1"
    with two_versions_pending(runtime, old):
        writer.rename(old, new)
    writer.uploader.wake()
    wait_for(lambda: not writer.status(), 60, what="the uploads")
    assert server_status(runtime, "twice.log.1") == (200, b"second version\n")
    assert server_status(runtime, "twice.log")[0] == 404  # before: 200, the first version
    names = listed(runtime)
    assert "twice.log.1" in names and "twice.log" not in names


def test_rm_drops_the_older_pending_versions_too(runtime):
    """A file written twice while XNAT answers 503 (two versions pending), then removed: rm
    dropped the newest version only; the older stayed queued and uploaded once XNAT came
    back, the file back on XNAT and in the mount after an rm that answered 0."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/draft.log"
    with two_versions_pending(runtime, path):
        writer.unlink(path)
        assert writer.status() == []  # before: the first version still pending
    writer.uploader.wake()
    wait_for(lambda: not writer.status(), 60, what="the uploads")
    assert server_status(runtime, "draft.log")[0] == 404  # before: 200, the first version
    assert "draft.log" not in listed(runtime)


def test_a_log_renamed_while_written_with_a_version_pending_keeps_its_newest_bytes(runtime):
    """A log written while XNAT answers 503: an `echo >> log` closes (version 1 pending),
    the program writes on through its own descriptor, and logrotate renames the log.  The
    rename gave the file the new name's plain target, dropping what the program's next
    version was made over (its own version 1, ``_reopen_spool``): once version 1 landed under
    the new name, the program's close() was refused as another client's file there
    ("duplicates", EEXIST), its newest bytes kept as failed and XNAT kept version 1."""
    writer = runtime.writer
    old, new = f"{PROTOCOLS}/app.log", f"{PROTOCOLS}/app.log.1"
    runtime.emu.faults.fault_methods = "PUT"
    with xnat_refusing(runtime):
        program = writer.create(old)
        program.write(0, b"line 1\n")
        shell = writer.open_write(runtime.tree.lookup(old), old, truncate=False)
        shell.write(7, b"line 2\n")
        with pytest.raises(XnatError):  # the 503's error; version 1 pending
            shell.flush()
        shell.close()
        program.write(14, b"line 3\n")  # the program writes on
        writer.rename(old, new)  # logrotate
    writer.uploader.retry_soon()
    wait_for(lambda: server_status(runtime, "app.log.1") == (200, b"line 1\nline 2\n"), 30)
    program.flush()  # before: EEXIST, "duplicates"
    program.close()
    assert server_status(runtime, "app.log.1") == (200, b"line 1\nline 2\nline 3\n")
    assert writer.status() == []
    assert server_status(runtime, "app.log")[0] == 404


def while_version_1_lands(runtime, path, call):
    """``path`` (a new file) written twice while XNAT answers 503 (versions 1 and 2 pending,
    never on XNAT); XNAT answers again, and ``call`` comes while version 1's retry is on the
    wire: it waits for that upload (``Uploader.held``), which lands.  Returns the errno
    ``call`` answered (0: none)."""
    writer = runtime.writer
    name = path.rsplit("/", 1)[1]
    writer.uploader.base_delay = writer.uploader.max_delay = 3600  # retried when told only
    runtime.emu.faults.fault_methods = "PUT"
    with xnat_refusing(runtime):
        for text in (b"version 1\n", b"version 2, longer\n"):
            write_pending(writer, path, text)
        gate = Gate(writer.client, name)  # the next PUT (version 1's retry) waits
    versions = writer.journal.versions_for(path)
    assert len(versions) == 2
    writer.uploader.submit(versions[0])  # version 1's retry now; version 2's waits its backoff
    assert gate.arrived.wait(30), "version 1's retry did not start"
    waiting, held = threading.Event(), writer.uploader.held

    def held_told(*args, **kwargs):
        waiting.set()  # the call has looked at the file and waits for the running upload
        return held(*args, **kwargs)

    writer.uploader.held = held_told
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("errno", answer(call)))
    t.start()
    assert waiting.wait(30), "the call did not reach the upload"
    gate.open()  # version 1 lands
    t.join(30)
    assert not t.is_alive()
    writer.uploader.held = held
    assert gate.passed.wait(30)
    return result["errno"]


@pytest.mark.parametrize("allow_delete", [False, True])
def test_rm_while_an_older_version_lands_does_not_answer_0_with_it_on_xnat(
    make_runtime, allow_delete
):
    """`rm` of a file while its version 1's retry is on the wire (``while_version_1_lands``):
    rm waited for that upload, which landed, then dropped version 2 and answered 0: the file
    it removed was on XNAT, with version 1's bytes.  Now, with --allow-delete, rm removes it
    there too; without, rm answers EACCES, and version 2 is kept and goes over version 1
    (nothing the user wrote is lost or resurrected)."""
    runtime = make_runtime(allow_delete=allow_delete)
    writer = runtime.writer
    path = f"{PROTOCOLS}/notes.txt"
    result = while_version_1_lands(runtime, path, lambda: writer.unlink(path))
    if allow_delete:
        assert result == 0
        assert writer.status() == []
        assert server_status(runtime, "notes.txt")[0] == 404  # before: 200, version 1
        assert "notes.txt" not in listed(runtime)
    else:
        assert result == errno.EACCES  # before: 0, with version 1 on XNAT
        writer.uploader.retry_soon()
        wait_for(lambda: not writer.status(), 30, what="version 2's upload")
        assert server_status(runtime, "notes.txt") == (200, b"version 2, longer\n")


@pytest.mark.parametrize("allow_delete", [False, True])
def test_mv_while_an_older_version_lands_moves_the_newest_and_leaves_no_old_name(
    make_runtime, allow_delete
):
    """`mv` (logrotate) of the file while its version 1's retry is on the wire: the rename
    answered EXDEV with --allow-delete (mv then copied and removed; a program's rename()
    failed), EACCES without.  Now with --allow-delete it deletes version 1 under the old name
    and moves version 2; without, EACCES as before, nothing renamed."""
    runtime = make_runtime(allow_delete=allow_delete)
    writer = runtime.writer
    old, new = f"{PROTOCOLS}/moving.log", f"{PROTOCOLS}/moving.log.1"
    result = while_version_1_lands(runtime, old, lambda: writer.rename(old, new))
    writer.uploader.retry_soon()
    wait_for(lambda: not writer.status(), 30, what="version 2's upload")
    if allow_delete:
        assert result == 0  # before: EXDEV
        assert server_status(runtime, "moving.log.1") == (200, b"version 2, longer\n")
        assert server_status(runtime, "moving.log")[0] == 404
    else:
        assert result == errno.EACCES
        assert server_status(runtime, "moving.log") == (200, b"version 2, longer\n")
        assert server_status(runtime, "moving.log.1")[0] == 404


def older_version_landed(runtime, path):
    """``path`` (a new file) written and closed twice while XNAT answers 503 (versions 1 and
    2 pending, retried when told only); then XNAT answers and version 1's retry lands, in
    the background, before the test's next call: version 2 still pending over it."""
    writer = runtime.writer
    writer.uploader.base_delay = writer.uploader.max_delay = 3600  # retried when told only
    runtime.emu.faults.fault_methods = "PUT"
    with xnat_refusing(runtime):
        for text in (b"version 1\n", b"version 2, longer\n"):
            write_pending(writer, path, text)
    first, _second = writer.journal.versions_for(path)
    writer.uploader.submit(first)  # version 1's retry now; version 2's waits its backoff
    wait_for(lambda: len(writer.journal.versions_for(path)) == 1, 30, what="version 1 to land")
    assert server_status(runtime, path.rsplit("/", 1)[1]) == (200, b"version 1\n")


@pytest.mark.parametrize("allow_delete", [False, True])
def test_rm_after_an_older_version_landed_does_not_answer_0_with_it_on_xnat(
    make_runtime, allow_delete
):
    """As the case above, with version 1 confirmed in the background just before `rm` (not
    while it waits): nothing on the open file said so (``_on_change`` only follows the
    file's newest version), so rm dropped version 2 and answered 0, and XNAT showed the
    removed file with version 1's bytes.  Now the same as when it lands during rm's wait."""
    runtime = make_runtime(allow_delete=allow_delete)
    writer = runtime.writer
    path = f"{PROTOCOLS}/landed.txt"
    older_version_landed(runtime, path)
    result = answer(lambda: writer.unlink(path))
    if allow_delete:
        assert result == 0
        assert writer.status() == []
        assert server_status(runtime, "landed.txt")[0] == 404  # before: 200, version 1
        assert "landed.txt" not in listed(runtime)
    else:
        assert result == errno.EACCES  # before: 0, with version 1 on XNAT
        assert [s["size"] for s in writer.status()] == [len(b"version 2, longer\n")]
        writer.uploader.retry_soon()
        wait_for(lambda: not writer.status(), 30, what="version 2's upload")
        assert server_status(runtime, "landed.txt") == (200, b"version 2, longer\n")


def test_rm_after_an_older_version_landed_and_another_client_removed_it_answers_0(make_runtime):
    """--allow-delete; version 1 landed, then another XNAT client removed the file: rm's
    DELETE of version 1 gets 404, which is the rm done (not ENOENT with the local version
    kept), and version 2 goes with it."""
    runtime = make_runtime(allow_delete=True)
    writer = runtime.writer
    path = f"{PROTOCOLS}/gone.txt"
    older_version_landed(runtime, path)
    r = requests.delete(f"{runtime.emu.url}{PROTOCOLS_URI}/gone.txt", auth=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    assert answer(lambda: writer.unlink(path)) == 0
    assert writer.status() == []
    assert server_status(runtime, "gone.txt")[0] == 404
    assert "gone.txt" not in listed(runtime)


@pytest.mark.parametrize("allow_delete", [False, True])
def test_mv_after_an_older_version_landed_leaves_nothing_under_the_old_name(
    make_runtime, allow_delete
):
    """The same file renamed (logrotate, mv) after version 1 landed in the background: the
    rename moved version 2 to the new name and answered 0, and XNAT kept version 1 under the
    old name, a file the user had renamed away.  Now with --allow-delete the rename deletes
    it there (the newest version goes to the new name); without, it answers EACCES and
    changes nothing (version 2 still goes over version 1 under the old name)."""
    runtime = make_runtime(allow_delete=allow_delete)
    writer = runtime.writer
    old, new = f"{PROTOCOLS}/rotated.log", f"{PROTOCOLS}/rotated.log.1"
    older_version_landed(runtime, old)
    result = answer(lambda: writer.rename(old, new))
    writer.uploader.retry_soon()
    wait_for(lambda: not writer.status(), 30, what="version 2's upload")
    if allow_delete:
        assert result == 0
        assert server_status(runtime, "rotated.log.1") == (200, b"version 2, longer\n")
        assert server_status(runtime, "rotated.log")[0] == 404  # before: 200, version 1
        names = listed(runtime)
        assert "rotated.log.1" in names and "rotated.log" not in names
    else:
        assert result == errno.EACCES  # before: 0, with version 1 left under the old name
        assert server_status(runtime, "rotated.log") == (200, b"version 2, longer\n")
        assert server_status(runtime, "rotated.log.1")[0] == 404


# ---------------------------------------------------------------------- found by review7w
def test_a_close_committing_while_a_rename_replaces_its_file_uploads_nothing(runtime):
    """rsync renames its copy over held.log at the instant the program holding held.log
    closes it (its commit in the journal step).  The rename set ``removed`` on the open file
    without that file's own lock: the commit had looked before and went on, its journal
    record newer than the renamed one.  Its PUT (no overwrite) then met rsync's file:
    EEXIST at close and a failed record kept for the name, or it landed first and dropped
    rsync's record as "superseded".  Now the rename waits for the commit (``LocalFile.io``
    of the file it replaces), so the commit's 0.3 s beside it run out; rsync's copy is what
    XNAT ends with and nothing stays behind."""
    from tests.api.test_tree import flush_with_a_call_beside

    writer = runtime.writer
    holder, final, temp = held_open(writer, "held3.log")
    renamed = {}

    def rsync_renames():
        try:
            writer.rename(temp, final)
            renamed["result"] = 0
        except OSError as exc:
            renamed["result"] = exc.errno

    flush_with_a_call_beside(writer, holder, rsync_renames)  # before: EEXIST (duplicates)
    holder.close()
    wait_for(lambda: all(s["state"] != "pending" for s in writer.status()), 30, what="uploads")
    assert renamed == {"result": 0}
    assert writer.status() == []  # before: a failed record of held3.log
    assert server_status(runtime, "held3.log") == (200, b"rsync's copy\n")
    runtime.tree.invalidate(PROTOCOLS)
    assert runtime.tree.lookup(final).size == len(b"rsync's copy\n")


def another_client_stores(runtime, name, data=b"the other client's\n"):
    """Another XNAT client uploads ``name`` behind the mount's back."""
    r = requests.put(
        f"{runtime.emu.url}{PROTOCOLS_URI}/{name}?inbody=true",
        data=data,
        auth=ADMIN,
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text


def test_a_version_after_one_xnat_refused_as_another_files_does_not_overwrite_it(runtime):
    """A program writes results.csv and fsyncs (or a child that inherited its descriptor
    exits: its close uploads the file as it stands); another XNAT client stored a
    results.csv meanwhile, so XNAT answers "duplicates" (EEXIST, kept as failed).  The
    program writes on and closes: that version went up with overwrite, and the other
    client's file was replaced without --allow-delete.  Now it is refused as the first
    was, and both versions stay in the journal."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/results.csv"
    handle = writer.create(path)
    handle.write(0, b"mine, part 1\n")
    another_client_stores(runtime, "results.csv")
    with pytest.raises(XnatError) as err:
        handle.fsync()
    assert errno_for(err.value) == errno.EEXIST
    handle.write(13, b"mine, part 2\n")
    with pytest.raises(XnatError) as err:
        handle.flush()  # before: 0, the other client's file replaced
    assert errno_for(err.value) == errno.EEXIST
    handle.close()
    assert server_status(runtime, "results.csv") == (200, b"the other client's\n")
    assert [s["state"] for s in writer.status()] == ["failed", "failed"]


def test_a_rename_over_a_file_xnat_refused_as_another_files_does_not_overwrite_it(runtime):
    """As above, with rsync: its first copy of out.csv was refused because another client
    had stored out.csv ("duplicates", kept as failed); its next copy, renamed over that
    failed file, went up with overwrite and replaced the other client's file without
    --allow-delete.  Now it is refused as the first (kept, failed)."""
    writer = runtime.writer
    final, temp = f"{PROTOCOLS}/out.csv", f"{PROTOCOLS}/.out.csv.AbC123"
    runtime.tree.listdir(PROTOCOLS)  # loaded before the other client's PUT
    another_client_stores(runtime, "out.csv")
    handle = writer.create(final)  # the mount's listing is older than the other's PUT
    handle.write(0, b"first copy\n")
    with pytest.raises(XnatError):
        handle.flush()
    handle.close()
    rsync_copy(writer, temp, b"second copy\n")
    writer.rename(temp, final)  # its upload's failure is logged, kept: the rename is done
    assert server_status(runtime, "out.csv") == (200, b"the other client's\n")
    assert [s["state"] for s in writer.status()] == ["failed"]


def test_rsync_renaming_same_bytes_while_the_temporary_upload_runs_leaves_no_temporary(runtime):
    """rsync's temporary copy holds the same bytes as the file on XNAT; its delayed upload
    has started when rsync renames it over the file.  The rename dropped the journal record
    under the running attempt and answered "nothing uploaded"; the PUT still landed, and
    the temporary name stayed on XNAT (and in the listing) after a rename that answered 0.
    Now the rename waits for that attempt: it ends with no temporary file on XNAT, or says
    why not (the file is XNAT's under the temporary name, and XNAT has no move)."""
    writer = runtime.writer
    writer.temp_delay = 0.0  # the delayed upload starts at once
    same = b"the same bytes\n"
    r = requests.put(
        f"{runtime.emu.url}{PROTOCOLS_URI}/same.txt?inbody=true", data=same, auth=ADMIN, timeout=30
    )
    assert r.status_code in (200, 201), r.text
    runtime.tree.invalidate(PROTOCOLS)
    final, name = f"{PROTOCOLS}/same.txt", ".same.txt.AbC123"
    gate = Gate(writer.client, name)
    copy = writer.create(f"{PROTOCOLS}/{name}")
    copy.write(0, same)
    copy.close()
    assert gate.arrived.wait(30), "the background upload did not start"
    result = {}

    def rename():
        try:
            writer.rename(f"{PROTOCOLS}/{name}", final)
            result["renamed"] = 0
        except OSError as exc:
            result["renamed"] = exc.errno

    t = threading.Thread(target=rename)
    t.start()
    t.join(0.3)  # fixed: the rename waits for the running upload, so this wait runs out
    gate.open()
    t.join(30)
    assert gate.passed.wait(30), "the held upload did not end"
    wait_for(lambda: not writer.status(), 30, what="the upload to end")
    if result["renamed"] == 0:  # before: and the temporary file on XNAT all the same
        assert server_status(runtime, name)[0] == 404
        assert name not in listed(runtime)
    else:
        assert result["renamed"] == errno.EACCES, result
        assert server_status(runtime, name) == (200, same)
    assert server_status(runtime, "same.txt") == (200, same)


def test_a_put_that_lands_late_after_a_timeout_is_not_kept_as_failed(runtime):
    """XNAT stores a file slowly: the PUT times out, the retry finds the file not yet listed
    and sends it again, and by then the first PUT has landed, so XNAT answers "duplicates".
    The file was kept as failed (EEXIST, shown in place of XNAT's file at the next mount,
    "fix the cause, rm it, copy it in again") although XNAT had exactly its bytes.  A refusal
    of an attempt after one that may have landed is now checked against XNAT's listing."""
    from xnatfs.xnat.errors import XnatTimeout

    writer = runtime.writer
    writer.uploader.base_delay = writer.uploader.max_delay = 0.2
    client, real = writer.client, writer.client.upload_file
    late = []

    def slow_xnat(resource_uri, relpath, fh, size, **k):
        if relpath != "slow.dat":
            return real(resource_uri, relpath, fh, size, **k)
        if not late:  # the first PUT: XNAT is still storing it when the client gives up
            late.append((resource_uri, relpath, fh.read(), size, k))
            raise XnatTimeout("PUT", f"{resource_uri}/files/{relpath}", None, "timed out")
        uri, rel, data, n, kw = late[0]  # ...and it lands just before the second one
        real(uri, rel, io.BytesIO(data), n, **kw)
        return real(resource_uri, relpath, fh, size, **k)

    client.upload_file = slow_xnat
    try:
        handle = writer.create(f"{PROTOCOLS}/slow.dat")
        handle.write(0, b"slowly stored\n")
        with pytest.raises(XnatTimeout):
            handle.flush()
        handle.close()
        writer.uploader.wake()
        wait_for(lambda: all(s["state"] == "failed" for s in writer.status()), 30, what="the retry")
    finally:
        client.upload_file = real
    assert writer.status() == []  # before: failed, "file exists (duplicates: slow.dat)"
    assert server_status(runtime, "slow.dat") == (200, b"slowly stored\n")


def test_a_close_whose_journal_step_fails_on_a_full_disk_keeps_the_file_whole(runtime):
    """close() moves the bytes into the journal; on a full disk its record cannot be
    written (ENOSPC, told at close) and the bytes stay where they were.  But the file's
    spool had been closed on the way: the mount showed the file with 0 bytes, a read of it
    answered EIO, and an append (`echo more >> f` once space was freed) started a fresh
    spool: XNAT got zeros where the first lines were (their bytes left behind as a
    nameless spool file).  Now the file keeps its bytes, and a later close uploads all."""
    writer, tree = runtime.writer, runtime.tree
    path = f"{PROTOCOLS}/full.log"
    handle = writer.create(path)
    handle.write(0, b"first line\n")
    write_sidecar = writer.journal._write_sidecar

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.journal._write_sidecar = no_space
    try:
        with pytest.raises(OSError) as err:
            handle.flush()
        assert err.value.errno == errno.ENOSPC
        handle.close()
    finally:
        writer.journal._write_sidecar = write_sidecar  # space freed
    assert tree.lookup(path).size == 11  # before: 0
    appender = writer.open_write(tree.lookup(path), path, truncate=False)  # >> f
    assert appender.read(0, 100) == b"first line\n"  # before: EIO
    appender.write(11, b"second line\n")
    appender.flush()
    appender.close()
    assert server_status(runtime, "full.log") == (200, b"first line\nsecond line\n")
    assert writer.status() == []


def test_an_open_with_o_trunc_that_fails_does_not_leave_the_file_held(runtime):
    """`cp new.csv f` over a local file (pending: XNAT answered 503) on a full disk: the
    O_TRUNC open fails (ENOSPC, told).  The failed open had counted itself as a handle of
    the file and never let go: the file's write error stuck for the mount's life, and every
    later version was refused at close ("an earlier write failed: not uploaded") once space
    was freed.  Now the next copy uploads."""
    writer, tree = runtime.writer, runtime.tree
    path = f"{PROTOCOLS}/table.csv"
    writer.uploader.base_delay = writer.uploader.max_delay = 0.2
    with xnat_refusing(runtime):
        write_pending(writer, path, b"old table\n")
        create = writer.spool.create

        def no_space(*a, **k):  # the copy of the pending version it starts from
            raise OSError(errno.ENOSPC, "No space left on device")

        writer.spool.create = no_space
        try:
            with pytest.raises(OSError) as err:
                writer.open_write(tree.lookup(path), path, truncate=True)
            assert err.value.errno == errno.ENOSPC
        finally:
            writer.spool.create = create
    handle = writer.open_write(tree.lookup(path), path, truncate=True)  # space freed
    handle.write(0, b"new table\n")
    handle.flush()  # before: ENOSPC again, "an earlier write failed: not uploaded"
    handle.close()
    wait_for(lambda: not writer.status(), 30, what="the uploads")
    assert server_status(runtime, "table.csv") == (200, b"new table\n")


def test_an_append_open_whose_download_fails_leaves_no_spool_behind(make_runtime):
    """`echo x >> f` of a file on XNAT (--allow-delete) first copies XNAT's bytes into a
    spool; when that download failed (XNAT down: EIO at open, told), the spool file stayed
    on disk, and the next mount kept it as a failed upload with no name ("spool file left by
    a crash"), listed by `xnatfs status` for something never written."""
    rt = make_runtime(allow_delete=True)
    writer, tree = rt.writer, rt.tree
    path = f"{PROTOCOLS}/README.txt"
    node = tree.lookup(path)
    with xnat_refusing(rt):
        with pytest.raises(Exception):  # noqa: B017 - the 503's error
            writer.open_write(node, path, truncate=False)
    next_mount = Spool(writer.spool.directory)  # what the next mount finds
    assert next_mount.leftovers() == []  # before: one


def test_two_appenders_opening_a_file_on_xnat_at_once_share_one_copy(make_runtime):
    """Two programs open a log that is on XNAT for appending at once (--allow-delete); each
    open copies XNAT's bytes first.  The second open, made while the first was copying, saw
    no local file yet and made its own: two copies, each uploaded at its close, the last
    over the first.  One line was lost, and zeros stood in its place (the second's append
    went past the end of its own copy).  Now the second open joins the first's copy."""
    rt = make_runtime(allow_delete=True)
    writer, tree = rt.writer, rt.tree
    path = f"{PROTOCOLS}/README.txt"
    original = on_server_bytes(rt, "README.txt")
    fill, opened = writer._fill_from_server, {}

    def fill_with_an_open_beside(node, spool, p):
        fill(node, spool, p)
        if "second" not in opened:
            opened["second"] = None
            opened["second"] = writer.open_write(tree.lookup(path), path, truncate=False)

    writer._fill_from_server = fill_with_an_open_beside
    try:
        first = writer.open_write(tree.lookup(path), path, truncate=False)
    finally:
        writer._fill_from_server = fill
    second = opened["second"]
    end = len(original)
    first.write(end, b"first\n")  # O_APPEND: at the end the kernel knows
    second.write(end + 6, b"second\n")
    first.close()
    second.close()
    wait_for(lambda: not writer.status(), 30, what="the uploads")
    assert on_server_bytes(rt, "README.txt") == original + b"first\nsecond\n"


def on_server_bytes(runtime, name):
    status, data = server_status(runtime, name)
    assert status == 200, (name, status)
    return data


def test_an_empty_file_moved_over_a_file_uploaded_while_open_is_refused(make_runtime):
    """A program writes and fsyncs its output (on XNAT now, the descriptor still open);
    `touch e; mv e output` then answered 0 and showed the output empty, while XNAT kept its
    bytes (they showed again at the next mount).  XNAT cannot store an empty file: refused
    (ENOTSUP) as over a file only XNAT has."""
    rt = make_runtime(listing_ttl=60, allow_delete=True)
    writer, tree = rt.writer, rt.tree
    output, empty = f"{PROTOCOLS}/output.txt", f"{PROTOCOLS}/e"
    handle = writer.create(output)
    handle.write(0, b"results\n")
    handle.fsync()  # on XNAT
    writer.create(empty).close()  # touch e
    with pytest.raises(OSError) as err:
        writer.rename(empty, output)  # before: 0
    assert err.value.errno == errno.ENOTSUP
    handle.close()
    assert tree.lookup(output).size == 8
    assert server_status(rt, "output.txt") == (200, b"results\n")


def test_rename_of_a_file_on_xnat_open_for_writing_is_refused_as_xnats(make_runtime):
    """A file on XNAT open for writing (a read-modify-write copy, --allow-delete) is local
    while open, and rename moved that copy: it answered 0, the new name was uploaded at
    close, and the old name was still on XNAT (and back in the listing at once): a file
    twice after a `mv`.  XNAT has no move: EXDEV, as for the file when nobody holds it."""
    rt = make_runtime(allow_delete=True)
    writer, tree = rt.writer, rt.tree
    old, new = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/README2.txt"
    handle = writer.open_write(tree.lookup(old), old, truncate=False)
    handle.write(0, b"E")
    with pytest.raises(OSError) as err:
        writer.rename(old, new)  # before: 0
    assert err.value.errno == errno.EXDEV
    handle.close()
    assert server_status(rt, "README2.txt")[0] == 404
    assert server_status(rt, "README.txt")[1][:1] == b"E"


def _create_through_the_adapter(rt, path, flags):
    """FUSE's CREATE of ``path`` with open ``flags``, through the adapter (``fs/ops.py``), as
    the kernel sends it for a name it believes missing (a negative entry, kept up to 10 s)."""
    from types import SimpleNamespace

    from xnatfs.fs.ops import XnatOperations

    ops = XnatOperations(rt)
    ops._writers = None  # the caller's uid needs a FUSE request: the owner's anyway
    fi = SimpleNamespace(flags=flags, fh=0, direct_io=0, keep_cache=0, noflush=0)
    ops.create(path, 0o644, fi)
    return ops, fi


def test_a_create_of_a_name_stored_meanwhile_honours_o_trunc_and_o_excl(make_runtime):
    """The kernel remembers a missing name (negative entry) and sends CREATE for it, while
    another XNAT client has stored a file of that name since.  CREATE always truncated it:
    `echo line >> log` (O_APPEND, no O_TRUNC) replaced the other client's log with one line
    (--allow-delete), and O_EXCL (`mktemp`, noclobber, lock files) did not answer EEXIST."""
    rt = make_runtime(allow_delete=True)
    path = f"{PROTOCOLS}/shared.log"
    another_client_stores(rt, "shared.log", b"the other client's lines\n")
    rt.tree.invalidate(PROTOCOLS)
    with pytest.raises(OSError) as err:
        _create_through_the_adapter(rt, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert err.value.errno == errno.EEXIST  # before: opened, truncated
    ops, fi = _create_through_the_adapter(rt, path, os.O_CREAT | os.O_WRONLY | os.O_APPEND)
    ops.write(path, b"line\n", 25, fi)
    ops.flush(path, fi)
    ops.release(path, fi)
    assert server_status(rt, "shared.log") == (200, b"the other client's lines\nline\n")


def test_two_programs_creating_one_new_file_at_once_share_it(runtime):
    """Two programs create the same new file at once (two jobs writing one log, `>>`): the
    second's CREATE found the first's file made between its look and its own: EBUSY
    ("Device or resource busy") while the first held it; once the first had closed, the
    second replaced it, and its upload then met the first's on XNAT ("duplicates": EEXIST
    at close, kept as failed).  Now the second opens the file the first made."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/jobs.log"
    create, made = writer.spool.create, {}

    def create_with_another_beside(*a, **k):
        if "first" not in made:
            made["first"] = None
            made["first"] = writer.create(path, truncate=False)
            made["first"].write(0, b"job 1\n")
        return create(*a, **k)

    writer.spool.create = create_with_another_beside
    try:
        second = writer.create(path, truncate=False)  # before: EBUSY
    finally:
        writer.spool.create = create
    second.write(6, b"job 2\n")
    made["first"].close()
    second.close()
    assert server_status(runtime, "jobs.log") == (200, b"job 1\njob 2\n")
    assert writer.status() == []


def test_rename_over_a_file_on_xnat_open_for_writing_needs_allow_delete(runtime):
    """A file on XNAT that a program holds open with O_TRUNC (allowed without --allow-delete:
    rewriting the same bytes destroys nothing) is local while open; rsync's rename over it
    answered 0, as over a local file, and its upload then met XNAT's file ("duplicates":
    kept as failed).  Replacing XNAT's file needs --allow-delete: EACCES, as when nobody
    holds it open."""
    writer, tree = runtime.writer, runtime.tree
    final, temp = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/.README.txt.AbC123"
    original = server_status(runtime, "README.txt")
    holder = writer.open_write(tree.lookup(final), final, truncate=True)
    rsync_copy(writer, temp)
    with pytest.raises(OSError) as err:
        writer.rename(temp, final)  # before: 0
    assert err.value.errno == errno.EACCES
    holder.close()
    writer.unlink(temp)
    assert writer.status() == []  # before: rsync's copy failed ("duplicates")
    assert server_status(runtime, "README.txt") == original


def test_unmount_with_files_open_leaves_no_nameless_upload_for_what_needs_none(make_runtime):
    """The daemon stops (systemctl stop, SIGTERM) while a program holds a file on XNAT open
    read-write and has not changed it (sqlite, HDF5 open "r+").  Its copy stayed on disk, and
    the next mount kept it as a failed upload with no name ("spool file left by a crash"),
    for bytes that needed no upload.  A changed file open then is saved to the journal."""
    rt = make_runtime(allow_delete=True)
    writer, tree = rt.writer, rt.tree
    readme = f"{PROTOCOLS}/README.txt"
    writer.open_write(tree.lookup(readme), readme, truncate=False)  # held, unchanged
    changed = writer.create(f"{PROTOCOLS}/changed.bin")
    changed.write(0, b"changed")  # held, changed
    directory = writer.spool.directory
    rt.close()
    assert Spool(directory).leftovers() == []  # before: one, the unchanged copy
    assert [e.path for e in Journal(writer.journal.directory).reload()] == [
        f"{PROTOCOLS}/changed.bin"
    ]
