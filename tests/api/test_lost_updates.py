"""Lost updates with --allow-delete (conflict10): another XNAT client stores a file while
this mount's change of it is open or pending.  XNAT has no conditional PUT (no ETag, no
If-Match: docs/XNAT-API.md), and the version that replaced a file overwrote whatever XNAT
held when its PUT landed: the other client's bytes were destroyed and nobody was told.  Now
the upload first checks the listing for what the user's version was made over
(``UploadTarget.base_md5s``); another MD5 there is not overwritten: EEXIST to the closer, the
user's bytes kept in the journal as failed, the message naming the URL and both MD5s.

"Another client" is a plain ``requests`` PUT to the emulator between open and close.  Through
the runtime API, like ``test_tree.py``."""

from __future__ import annotations

import errno

import pytest

from tests.api.helpers import PROTOCOLS, THEIRS, another_client_stores, on_server
from tests.mount.helpers import wait_for
from xnatfs.fs.errmap import errno_for
from xnatfs.uploads import UploadTarget
from xnatfs.uploads.retry import classify_text


def refused_as_a_conflict(rt, handle, name):
    """The close of ``handle`` answers EEXIST, XNAT keeps the other client's bytes, and the
    user's version is in the journal as failed with a message naming URL and MD5s."""
    with pytest.raises(OSError) as got:
        handle.flush()
    handle.close()
    assert got.value.errno == errno.EEXIST, got.value
    assert on_server(rt, name) == THEIRS  # before: the user's bytes over the other client's
    (status,) = rt.writer.status()
    assert status["state"] == "failed", status
    assert f"{rt.emu.url}/data/projects/DEMO1/resources/" in status["last_error"]  # the URL
    assert f"/files/{name} holds MD5 " in status["last_error"]
    assert "another XNAT client changed this file" in status["last_error"]
    assert not classify_text(status["last_error"]).retry  # a restart does not send it again
    return status


def test_a_change_in_place_does_not_overwrite_another_clients_newer_copy(make_runtime):
    rt = make_runtime(allow_delete=True)
    path = f"{PROTOCOLS}/README.txt"
    handle = rt.writer.open_write(rt.tree.lookup(path), path, truncate=False)
    handle.write(0, b"MINE")
    another_client_stores(rt, "README.txt")
    status = refused_as_a_conflict(rt, handle, "README.txt")
    assert status["path"] == path
    data = rt.writer._read(rt.tree.lookup(path).local_file, 0, 1 << 20)
    assert data.startswith(b"MINE")  # the user's bytes are kept, shown in the mount


def test_an_o_trunc_rewrite_does_not_overwrite_another_clients_newer_copy(make_runtime):
    rt = make_runtime(allow_delete=True)
    path = f"{PROTOCOLS}/README.txt"
    handle = rt.writer.create(path, truncate=True)  # `cmd > file` over a file on XNAT
    handle.write(0, b"rewritten\n")
    another_client_stores(rt, "README.txt")
    refused_as_a_conflict(rt, handle, "README.txt")


def test_a_rename_over_a_file_does_not_overwrite_another_clients_newer_copy(make_runtime):
    """An atomic writer (``sed -i``, ``os.replace``): a temporary file renamed over a file
    on XNAT that another client changed since the listing the rename saw."""
    rt = make_runtime(allow_delete=True)
    tmp, path = f"{PROTOCOLS}/.README.txt.Ab12Cd", f"{PROTOCOLS}/README.txt"
    rt.tree.lookup(path)  # the listing the rename sees (before the other client's store)
    handle = rt.writer.create(tmp)
    handle.write(0, b"edited by sed\n")
    handle.flush()  # a temporary name: kept back for its rename
    handle.close()
    another_client_stores(rt, "README.txt")
    rt.writer.rename(tmp, path)  # done: its upload's failure is logged, kept in the journal
    wait_for(lambda: rt.writer.status()[0]["state"] == "failed", 30, what="the refusal")
    assert on_server(rt, "README.txt") == THEIRS
    assert "another XNAT client changed this file" in rt.writer.status()[0]["last_error"]


def test_a_move_on_xnat_over_a_changed_file_does_not_overwrite_it(make_runtime):
    """``os.rename`` of one file on XNAT over another that a client changed since the
    listing the rename saw: the copy is refused (EEXIST), both files keep their bytes, and
    nothing waits to upload (the old name still holds the moved file)."""
    rt = make_runtime(allow_delete=True)
    src, dst = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/notes.txt"
    another_client_stores(rt, "notes.txt", b"first\n")
    rt.tree.invalidate(PROTOCOLS)
    rt.tree.lookup(dst)  # the listing the rename sees
    data = on_server(rt, "README.txt")
    another_client_stores(rt, "notes.txt")
    with pytest.raises(OSError) as got:
        rt.writer.rename(src, dst)
    assert got.value.errno == errno.EEXIST, got.value
    assert on_server(rt, "notes.txt") == THEIRS  # before: README's bytes over theirs
    assert on_server(rt, "README.txt") == data
    assert rt.writer.journal.entries() == []


def test_an_append_after_an_upload_does_not_overwrite_another_clients_copy(make_runtime):
    """A log uploaded by one close (its descriptor still open) and appended to; another
    client stores it before the next close: that close replaced the other client's file
    (--allow-delete skipped the check that refuses it without)."""
    rt = make_runtime(allow_delete=True)
    path = f"{PROTOCOLS}/run.log"
    handle = rt.writer.create(path)
    handle.write(0, b"line 1\n")
    handle.flush()  # uploaded; still open
    handle.write(7, b"line 2\n")  # continues from XNAT's copy of line 1
    another_client_stores(rt, "run.log")
    refused_as_a_conflict(rt, handle, "run.log")


@pytest.mark.parametrize("allow_delete", [False, True])
def test_writes_after_an_fsync_do_not_continue_from_another_clients_bytes(
    make_runtime, allow_delete
):
    """A file written and fsync'ed (XNAT confirmed it, the journal dropped its copy), still
    open; another client stores other bytes of the same size there; the descriptor writes
    on.  Its copy of the file was XNAT's, checked by size only: the descriptor read the other
    client's bytes as its own, and its close uploaded them with its write appended, over
    theirs, answering 0 without --allow-delete too.  Now the write answers EEXIST (XNAT's
    bytes are not the ones it confirmed), its read EIO, its close the write's error, and
    XNAT keeps the other client's file."""
    rt = make_runtime(allow_delete=allow_delete)
    path = f"{PROTOCOLS}/state.db"
    handle = rt.writer.create(path)
    handle.write(0, b"AAAA")
    handle.fsync()  # on XNAT, confirmed
    assert on_server(rt, "state.db") == b"AAAA"
    another_client_stores(rt, "state.db", b"ZZZZ")
    with pytest.raises(OSError) as got:
        handle.write(4, b"B")  # before: continued from ZZZZ
    assert got.value.errno == errno.EEXIST, got.value
    assert "another XNAT client stored it since" in str(got.value)
    with pytest.raises(OSError) as read:
        handle.read(0, 5)  # before: b"ZZZZB"
    assert read.value.errno == errno.EIO, read.value
    with pytest.raises(OSError) as closed:
        handle.flush()  # before: 0, and XNAT held b"ZZZZB"
    assert closed.value.errno == errno.EEXIST, closed.value
    handle.close()
    assert on_server(rt, "state.db") == b"ZZZZ"
    assert rt.writer.status() == []


def test_a_new_file_stored_by_another_client_meanwhile_is_not_overwritten(make_runtime):
    """Absent when this mount created it, there when it closes: refused as well (XNAT's
    "duplicates" answer to a PUT without overwrite)."""
    rt = make_runtime(allow_delete=True)
    path = f"{PROTOCOLS}/new.txt"
    handle = rt.writer.create(path)
    handle.write(0, b"mine\n")
    another_client_stores(rt, "new.txt")
    with pytest.raises(Exception) as got:  # XNAT's "duplicates" (Conflict)
        handle.flush()
    handle.close()
    assert errno_for(got.value) == errno.EEXIST  # what the closer gets through FUSE
    assert on_server(rt, "new.txt") == THEIRS
    assert [s["state"] for s in rt.writer.status()] == ["failed"]


def test_versions_of_the_users_own_replace_each_other_without_a_false_conflict(make_runtime):
    """Two versions of a change to a file on XNAT, both pending while XNAT answers 503: the
    second is made over the first, which is not on XNAT yet (XNAT still holds the file as it
    was opened); both go, the second last, and nothing is refused."""
    rt = make_runtime(allow_delete=True)
    writer = rt.writer
    writer.uploader.base_delay = writer.uploader.max_delay = 0.2
    path = f"{PROTOCOLS}/README.txt"
    node = rt.tree.lookup(path)
    rt.tree.listdir(PROTOCOLS)
    # the uploads only: 503s to the check's listing too would open the circuit breaker,
    # and the test would wait ~30 s for its probe
    rt.emu.faults.fault_methods = "PUT"
    rt.emu.faults.error_rate, rt.emu.faults.error_status = 1.0, 503
    try:
        handle = writer.open_write(node, path, truncate=True)
        handle.write(0, b"version 1\n")
        with pytest.raises(Exception):  # noqa: B017 - the 503's error; kept pending
            handle.flush()
        handle.write(10, b"version 2\n")
        with pytest.raises(Exception):  # noqa: B017 - the 503's error; kept pending
            handle.flush()
        handle.close()
    finally:
        rt.emu.faults.error_rate = 0.0
    wait_for(lambda: not writer.status(), 30, what="both versions")
    assert on_server(rt, "README.txt") == b"version 1\nversion 2\n"


@pytest.mark.parametrize("allow_delete", [True, False], ids=["allow-delete", "no-allow-delete"])
def test_a_close_ahead_of_its_own_pending_version_is_not_a_conflict(make_runtime, allow_delete):
    """A log's first version is on XNAT, its second pending (XNAT answered 503), and the third
    close uploads at once, ahead of the second still queued: XNAT holds the first, which the
    third is made over too.  Refused as another client's before (only the second counted):
    four shells appending to one log (tests/mount/test_write_mount.py) lost their lines; and
    without --allow-delete review8i's check refused it the same way (NotReplaced)."""
    rt = make_runtime(allow_delete=allow_delete)
    writer = rt.writer
    writer.uploader.base_delay = writer.uploader.max_delay = 3600.0  # v2 waits in the queue
    path = f"{PROTOCOLS}/run.log"
    handle = writer.create(path)
    handle.write(0, b"1\n")
    handle.flush()  # v1 on XNAT; still open
    handle.write(2, b"2\n")  # continues from XNAT's copy of v1
    rt.tree.listdir(PROTOCOLS)
    rt.emu.faults.error_rate, rt.emu.faults.error_status = 1.0, 503
    try:
        with pytest.raises(Exception):  # noqa: B017 - the 503's error; kept pending
            handle.flush()
    finally:
        rt.emu.faults.error_rate = 0.0
    handle.write(4, b"3\n")
    handle.flush()  # v3, uploaded now: XNAT holds v1
    handle.close()
    assert on_server(rt, "run.log") == b"1\n2\n3\n"
    wait_for(lambda: not writer.status(), 30, what="v2 dropped as superseded")


def test_what_a_pending_change_was_made_over_survives_a_restart(runtimes):
    """The change is pending (XNAT answers 503) when the mount stops; another client stores
    the file; the next mount resumes the upload: the MD5 it was made over comes from the
    journal's sidecar, and the other client's file is not overwritten."""
    rt = runtimes(allow_delete=True)
    path = f"{PROTOCOLS}/README.txt"
    node = rt.tree.lookup(path)
    rt.tree.listdir(PROTOCOLS)
    rt.emu.faults.error_rate, rt.emu.faults.error_status = 1.0, 503
    try:
        handle = rt.writer.open_write(node, path, truncate=True)
        handle.write(0, b"mine, pending\n")
        with pytest.raises(Exception):  # noqa: B017 - the 503's error; kept pending
            handle.flush()
        handle.close()
    finally:
        rt.emu.faults.error_rate = 0.0
    rt.close()
    another_client_stores(rt, "README.txt")
    rt = runtimes(allow_delete=True)
    wait_for(lambda: [s["state"] for s in rt.writer.status()] == ["failed"], 30, what="the refusal")
    assert on_server(rt, "README.txt") == THEIRS
    assert "another XNAT client changed this file" in rt.writer.status()[0]["last_error"]


def test_a_sidecar_without_base_md5s_still_loads():
    """Journals written before this field load (no check then, as before), and the field
    round-trips through the sidecar's JSON."""
    old = {"kind": "file", "resource_uri": "/r", "relpath": "a.txt", "overwrite": True}
    assert UploadTarget.from_json(old).base_md5s == ()
    target = UploadTarget.file("/r", "a.txt", overwrite=True)
    target = UploadTarget.from_json({**target.to_json(), "base_md5s": ["abc", "def"]})
    assert UploadTarget.from_json(target.to_json()).base_md5s == ("abc", "def")
