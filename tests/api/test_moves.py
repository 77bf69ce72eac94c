"""rename() of a file XNAT has, with --allow-delete: XNAT has no move, so the daemon uploads
its bytes under the new name and deletes the old one (``Namespace._move_on_xnat``).  Before,
every such rename answered EXDEV: mv copied instead, but a program that renames by itself
(Python's ``os.rename``, ``RotatingFileHandler``) failed, and the rotating log lost its
records.  Through the runtime API against the emulator, like ``test_tree.py``."""

from __future__ import annotations

import errno
import logging
import threading

import pytest
import requests

from tests.api.test_write_races import xnat_refusing
from tests.conftest import ADMIN
from tests.mount.helpers import api, wait_for
from xnatfs.fs.errmap import errno_for, log_failure
from xnatfs.tree import namespace
from xnatfs.xnat.breaker import THRESHOLD, Failure
from xnatfs.xnat.errors import XnatError

PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"
FIGURES = "/DEMO1/resources/figures/files"
FIGURES_URI = "/data/projects/DEMO1/resources/figures/files"


def on_server(runtime, uri, name):
    r = requests.get(f"{runtime.emu.url}{uri}/{name}", auth=ADMIN, timeout=30)
    return r.content if r.status_code == 200 else r.status_code


def read_all(runtime, path):
    tree = runtime.tree
    handle = tree.open(tree.lookup(path), path)
    try:
        return handle.read(0, 1 << 20)
    finally:
        handle.close()


def listed(runtime, folder):
    runtime.tree.invalidate(folder)
    return {n.name for n in runtime.tree.listdir(folder)}


def test_rename_moves_a_file_on_xnat_and_keeps_its_time(make_runtime):
    rt = make_runtime(allow_delete=True)
    old, new = f"{PROTOCOLS}/README.txt", f"{FIGURES}/README-moved.txt"
    data = read_all(rt, old)
    shown = rt.tree.mtime_ns(rt.tree.lookup(old))
    rt.writer.rename(old, new)
    assert on_server(rt, FIGURES_URI, "README-moved.txt") == data
    assert on_server(rt, PROTOCOLS_URI, "README.txt") == 404
    assert "README.txt" not in listed(rt, PROTOCOLS)
    assert "README-moved.txt" in listed(rt, FIGURES)
    assert read_all(rt, new) == data
    assert rt.tree.mtime_ns(rt.tree.lookup(new)) == shown  # mv keeps the time
    assert rt.writer.journal.entries() == []


def test_rename_over_a_file_on_xnat_replaces_it(make_runtime):
    rt = make_runtime(allow_delete=True)
    src, dst = f"{PROTOCOLS}/README.txt", f"{FIGURES}/phantom.png"
    data = read_all(rt, src)
    rt.writer.rename(src, dst)
    assert on_server(rt, FIGURES_URI, "phantom.png") == data
    assert on_server(rt, PROTOCOLS_URI, "README.txt") == 404


def test_a_failed_upload_changes_nothing(make_runtime):
    """The upload under the new name fails (503): the rename answers its error, the old name
    is still the file's, and nothing is left at the new name (no pending record that would
    upload it later while the old name stays)."""
    rt = make_runtime(allow_delete=True)
    old, new = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/README2.txt"
    data = read_all(rt, old)  # in the cache: the copy needs no request
    with xnat_refusing(rt), pytest.raises(XnatError):  # the _op wrapper's EIO, at FUSE
        rt.writer.rename(old, new)
    assert rt.writer.journal.entries() == []
    assert on_server(rt, PROTOCOLS_URI, "README.txt") == data
    assert on_server(rt, PROTOCOLS_URI, "README2.txt") == 404
    names = listed(rt, PROTOCOLS)
    assert "README.txt" in names and "README2.txt" not in names


def test_a_large_file_or_no_allow_delete_is_refused_before_any_request(make_runtime, monkeypatch):
    rt = make_runtime()
    old, new = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/README2.txt"
    with pytest.raises(OSError) as got:
        rt.writer.rename(old, new)
    assert got.value.errno == errno.EACCES
    rt = make_runtime(allow_delete=True)
    monkeypatch.setattr(namespace, "MOVE_ON_XNAT_MAX", 10)
    mark = rt.emu.mark()
    with pytest.raises(OSError) as got:
        rt.writer.rename(old, new)
    assert got.value.errno == errno.EXDEV  # mv copies it with its own progress
    assert [m for m, _ in api(rt.emu.since(mark)) if m in ("PUT", "DELETE")] == []


def test_close_then_rename_waits_for_the_release(make_runtime):
    """A program closes its file and renames it at once (a rotating log): the kernel's
    RELEASE comes after close() returns, so the rename met the file still open and answered
    EXDEV.  It now waits (at most ``RELEASE_WAIT_S``) for that release; a handle still open
    after that keeps the answer it had (the file is being written)."""
    rt = make_runtime(allow_delete=True)
    writer = rt.writer
    old, new = f"{PROTOCOLS}/app.log", f"{PROTOCOLS}/app.log.1"
    handle = writer.create(old)
    handle.write(0, b"records\n")
    handle.flush()  # close(): uploaded; the release is still to come
    waiting = threading.Event()
    wait = writer._released.wait

    def wait_then_say(timeout=None):
        waiting.set()
        return wait(timeout)

    writer._released.wait = wait_then_say
    releaser = threading.Thread(target=lambda: waiting.wait(10) and handle.close())
    releaser.start()
    try:
        writer.rename(old, new)
    finally:
        releaser.join(10)
    assert on_server(rt, PROTOCOLS_URI, "app.log.1") == b"records\n"
    assert on_server(rt, PROTOCOLS_URI, "app.log") == 404

    held = writer.create(old)  # a handle that stays open: the file is still being written
    held.write(0, b"more\n")
    held.flush()
    try:
        with pytest.raises(OSError) as got:
            writer.rename(old, f"{PROTOCOLS}/app.log.2")
        assert got.value.errno == errno.EXDEV
    finally:
        held.close()


# ---------------------------------------------------------------- faults between the two steps
# (conflict10) A move is a copy and a delete: whatever fails, the file is in one place at least,
# and the answer says which.


@pytest.fixture
def faulty_deletes(make_runtime):
    """A runtime with --allow-delete whose emulator's faults hit DELETEs only."""
    rt = make_runtime(allow_delete=True)
    rt.emu.faults.fault_methods = "DELETE"
    yield rt
    rt.emu.faults.error_rate = rt.emu.faults.drop_rate = 0.0
    rt.emu.faults.fault_methods = ""


def test_a_failed_delete_leaves_both_names_and_says_where_the_file_is(faulty_deletes):
    """The copy landed, the DELETE of the old name got a 500: both names are on XNAT.  The
    rename answers the DELETE's error (EIO), and its one line now says the file is at the
    new name (before: the bare DELETE error, as if nothing had been copied)."""
    rt = faulty_deletes
    old, new = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/README2.txt"
    data = read_all(rt, old)
    rt.emu.faults.error_rate, rt.emu.faults.error_status = 1.0, 500
    with pytest.raises(XnatError) as got:
        rt.writer.rename(old, new)
    rt.emu.faults.error_rate = 0.0
    assert errno_for(got.value) == errno.EIO
    text = str(got.value)
    assert "DELETE" in text and "-> 500" in text and f"{new} holds it" in text, text
    assert on_server(rt, PROTOCOLS_URI, "README.txt") == data
    assert on_server(rt, PROTOCOLS_URI, "README2.txt") == data
    assert {"README.txt", "README2.txt"} <= listed(rt, PROTOCOLS)
    assert rt.writer.journal.entries() == []


def test_a_500_on_the_copys_put_changes_nothing_and_leaves_nothing_queued(make_runtime):
    """XNAT answers the copy's PUT with 500 (transient for an upload: a close's version would
    be retried): the rename answers EIO, the old name keeps the file, and the copy leaves the
    journal at once, so no retry uploads it under the new name later."""
    rt = make_runtime(allow_delete=True)
    old, new = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/README2.txt"
    data = read_all(rt, old)
    rt.emu.faults.fault_methods = "PUT"
    rt.emu.faults.error_rate, rt.emu.faults.error_status = 1.0, 500
    try:
        with pytest.raises(XnatError) as got:
            rt.writer.rename(old, new)
    finally:
        rt.emu.faults.error_rate, rt.emu.faults.fault_methods = 0.0, ""
    assert errno_for(got.value) == errno.EIO and "-> 500" in str(got.value)
    assert rt.writer.journal.entries() == [] and rt.writer.status() == []
    assert on_server(rt, PROTOCOLS_URI, "README.txt") == data
    assert on_server(rt, PROTOCOLS_URI, "README2.txt") == 404
    names = listed(rt, PROTOCOLS)
    assert "README.txt" in names and "README2.txt" not in names


def test_a_delete_whose_answer_is_lost_says_where_the_file_is(make_runtime):
    """The DELETE is done after the client gave up waiting (its answer lost): the old name
    goes, the new one holds the file.  The rename says so, and the old name's listing is
    not served from before (it showed the deleted name)."""
    rt = make_runtime(allow_delete=True, read_timeout=1.0)
    old, new = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/README2.txt"
    data = read_all(rt, old)
    rt.emu.faults.fault_methods, rt.emu.faults.latency_ms = "DELETE", 2500.0
    try:
        with pytest.raises(XnatError) as got:
            rt.writer.rename(old, new)
    finally:
        rt.emu.faults.fault_methods, rt.emu.faults.latency_ms = "", 0.0
    assert errno_for(got.value) == errno.ETIMEDOUT
    assert f"{new} holds it" in str(got.value), got.value
    wait_for(lambda: on_server(rt, PROTOCOLS_URI, "README.txt") == 404, 30, what="the DELETE")
    assert on_server(rt, PROTOCOLS_URI, "README2.txt") == data
    names = {n.name for n in rt.tree.listdir(PROTOCOLS)}  # no invalidate: what `ls` shows
    assert "README.txt" not in names and "README2.txt" in names, names


def test_an_old_name_deleted_meanwhile_by_another_client_is_a_done_move(make_runtime):
    """Another client removes the old name between the copy and the DELETE: the DELETE gets
    404 and the move is done (the file is at the new name).  Before, the rename answered
    ENOENT for a move that had happened."""
    rt = make_runtime(allow_delete=True)
    old, new = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/README2.txt"
    data = read_all(rt, old)
    upload = rt.client.upload_file

    def upload_then_other_client_deletes(*args, **kwargs):
        upload(*args, **kwargs)
        r = requests.delete(f"{rt.emu.url}{PROTOCOLS_URI}/README.txt", auth=ADMIN, timeout=30)
        assert r.status_code == 200, r.text

    rt.client.upload_file = upload_then_other_client_deletes
    rt.writer.rename(old, new)
    assert on_server(rt, PROTOCOLS_URI, "README2.txt") == data
    assert on_server(rt, PROTOCOLS_URI, "README.txt") == 404
    assert "README.txt" not in {n.name for n in rt.tree.listdir(PROTOCOLS)}


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "not-cached"])
def test_a_move_while_the_breaker_is_open_changes_nothing_and_is_logged(
    make_runtime, caplog, cached
):
    """XNAT is known down (the circuit breaker is open): the rename fails before anything
    is sent, the old name keeps the file, nothing waits to upload under the new name, and
    the failure gets its ERROR line (a rename is a user's change, not a read: the breaker's
    one "XNAT down" line per outage is not enough)."""
    rt = make_runtime(allow_delete=True)
    old, new = f"{PROTOCOLS}/README.txt", f"{PROTOCOLS}/README2.txt"
    data = on_server(rt, PROTOCOLS_URI, "README.txt")
    rt.tree.listdir(PROTOCOLS)
    if cached:
        read_all(rt, old)
    breaker = rt.client._breaker
    for i in range(THRESHOLD):
        breaker.record(Failure.CONNECTION, f"/data/x{i}", "connection refused")
    assert breaker.is_open
    with pytest.raises(XnatError) as got:
        rt.writer.rename(old, new)
    assert errno_for(got.value) == errno.EHOSTDOWN
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        log_failure("rename", old, got.value, errno_for(got.value))  # the _op wrapper's
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and old in errors[0] and "http://" in errors[0], errors
    assert rt.writer.journal.entries() == []
    assert on_server(rt, PROTOCOLS_URI, "README.txt") == data
    assert on_server(rt, PROTOCOLS_URI, "README2.txt") == 404
