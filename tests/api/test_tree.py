"""The tree and the write path without FUSE: a Runtime (client + caches + tree + writer) against
the emulator, driven through the same calls the FUSE adapter makes."""

from __future__ import annotations

import errno
import hashlib
import logging
import threading
import time

import pytest
import requests

from tests.conftest import ADMIN
from tests.mount.helpers import api, wait_for
from xnatfs.options import Options
from xnatfs.runtime import Runtime
from xnatfs.tree.nodes import Kind
from xnatfs.xnat.auth import Credentials

SCAN = "/DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1"


def read_all(rt, path):
    tree = rt.tree
    handle = tree.open(tree.lookup(path), path)
    try:
        out, offset = b"", 0
        while True:
            chunk = handle.read(offset, 1 << 20)
            if not chunk:
                return out
            out += chunk
            offset += len(chunk)
    finally:
        handle.close()


def test_lookup_kinds_aliases_and_free_negatives(runtime):
    tree, emu = runtime.tree, runtime.emu
    assert tree.lookup("/DEMO1").kind is Kind.PROJECT
    subject = tree.lookup("/DEMO1/subjects/SUBJ01")
    # the accession ID resolves to the same subject (§0.1)
    assert tree.lookup(f"/DEMO1/subjects/{subject.attrs['id']}").uri == subject.uri
    files = tree.listdir(SCAN + "/resources/DICOM/files")
    assert files and all(f.size > 0 for f in files)
    mark = emu.mark()
    with pytest.raises(FileNotFoundError):
        tree.lookup(SCAN + "/resources/DICOM/files/missing.dcm")
    tree.lookup(SCAN + "/resources/DICOM/files/" + files[0].name)
    assert api(emu.since(mark)) == []
    with pytest.raises(NotADirectoryError):
        tree.lookup(SCAN + "/resources/DICOM/files/" + files[0].name + "/x")


def test_read_verifies_md5(runtime):
    tree = runtime.tree
    path = SCAN + "/resources/DICOM/files/" + tree.listdir(SCAN + "/resources/DICOM/files")[0].name
    node = tree.lookup(path)
    data = read_all(runtime, path)
    assert len(data) == node.size and hashlib.md5(data).hexdigest() == node.digest
    from tests.mount.helpers import wait_for

    wait_for(lambda: tree.cache_state(node) == "cached", 10, what="the copy to be kept")


def test_write_flush_uploads_and_shows(runtime):
    tree, writer = runtime.tree, runtime.writer
    path = "/DEMO1/resources/protocols/files/new/sub/out.txt"
    with pytest.raises(FileNotFoundError):
        writer.create(path)  # like any filesystem: the folder must exist first
    writer.mkdir("/DEMO1/resources/protocols/files/new")
    writer.mkdir("/DEMO1/resources/protocols/files/new/sub")
    handle = writer.create(path)
    assert tree.lookup("/DEMO1/resources/protocols/files/new").is_dir
    handle.write(0, b"hello ")
    handle.write(6, b"world")
    assert tree.lookup(path).size == 11
    assert tree.xattrs(tree.lookup(path))["cache_state"] == "writing"
    handle.flush()
    handle.close()
    node = tree.lookup(path)
    assert not writer.owns(node)  # now from XNAT's listing
    assert node.size == 11 and node.digest == hashlib.md5(b"hello world").hexdigest()
    assert read_all(runtime, path) == b"hello world"


def test_refusals_have_the_right_errno(runtime):
    writer = runtime.writer
    with pytest.raises(OSError) as err:
        writer.create("/DEMO1/subjects/file.txt")
    assert err.value.errno == errno.EPERM
    with pytest.raises(OSError) as err:
        writer.mkdir("/DEMO1/subjects/bad label")
    assert err.value.errno == errno.EINVAL
    existing = runtime.tree.listdir("/DEMO1/resources/protocols/files")
    name = [n.name for n in existing if not n.is_dir][0]
    with pytest.raises(OSError) as err:
        writer.unlink(f"/DEMO1/resources/protocols/files/{name}")
    assert err.value.errno == errno.EACCES


def test_mkdir_objects(runtime):
    tree, writer = runtime.tree, runtime.writer
    writer.mkdir("/DEMO2/subjects/T1")
    writer.mkdir("/DEMO2/subjects/T1/experiments/T1_MR")
    writer.mkdir("/DEMO2/subjects/T1/experiments/T1_MR/scans/9")
    exp = tree.lookup("/DEMO2/subjects/T1/experiments/T1_MR")
    assert exp.attrs["xsi_type"] == "xnat:mrSessionData"
    assert tree.lookup("/DEMO2/subjects/T1/experiments/T1_MR/scans/9").kind is Kind.SCAN


def test_pending_upload_survives_a_restart(make_emulator, tmp_path):
    emu = make_emulator()
    options = Options(url=emu.url, cache_dir=tmp_path / "cache", prefetch=0)
    rt = Runtime(options, Credentials(*ADMIN))
    rt.start()
    path = "/DEMO1/resources/protocols/files/later.bin"
    rt.tree.listdir("/DEMO1/resources/protocols/files")  # listings cached before the fault
    emu.faults.error_rate = 1.0
    emu.faults.error_status = 503
    handle = rt.writer.create(path)
    handle.write(0, b"x" * 1000)
    with pytest.raises(Exception) as err:
        handle.flush()
    assert getattr(err.value, "retryable", False)
    handle.close()
    assert rt.tree.xattrs(rt.tree.lookup(path))["cache_state"] == "pending"
    rt.close()
    emu.faults.error_rate = 0.0
    rt2 = Runtime(options, Credentials(*ADMIN))
    rt2.start()
    try:
        wait_for(lambda: not rt2.writer.status(), 30, what="the resumed upload")
        rt2.tree.invalidate("/DEMO1/resources/protocols/files")
        assert rt2.tree.lookup(path).size == 1000
    finally:
        rt2.close()


PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"


def on_server(runtime, name):
    r = requests.get(f"{runtime.emu.url}{PROTOCOLS_URI}/{name}", auth=ADMIN, timeout=30)
    assert r.status_code == 200, (name, r.status_code)
    return r.content


def flush_with_a_call_beside(writer, handle, call):
    """``handle.flush()``, with ``call`` run on another thread while the commit is in its
    journal step: the spool closed (as ``Journal.add`` closes it first) and not yet swapped
    for the entry.  Fixed, the call waits for the commit (``LocalFile.io``), so the 0.3 s
    given to it here run out; before, it ran in that window."""
    add = writer.journal.add
    threads = []

    def add_with_a_call_beside(spool, *a, **k):
        spool.fsync()
        spool.close()
        t = threading.Thread(target=call)
        t.start()
        t.join(0.3)
        threads.append(t)
        return add(spool, *a, **k)

    writer.journal.add = add_with_a_call_beside
    try:
        handle.flush()
    finally:
        writer.journal.add = add
    threads[0].join(30)


def test_a_write_while_another_handle_commits_is_uploaded(runtime):
    """Two handles on one file (two processes appending to one log): the first's close()
    commits while the second writes.  The write used to land in a spool the commit then
    dropped: acknowledged and lost; now it waits for the commit and continues from its
    bytes, and the second close() uploads both."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/shared.log"
    first = writer.create(path)
    second = writer.open_write(runtime.tree.lookup(path), path, truncate=False)
    first.write(0, b"first line\n")
    late = {}

    def other():
        late["wrote"] = second.write(11, b"second line\n")
        late["read"] = second.read(0, 100)

    flush_with_a_call_beside(writer, first, other)
    first.close()
    assert late["wrote"] == 12
    assert late["read"] == b"first line\nsecond line\n"
    second.flush()
    second.close()
    assert on_server(runtime, "shared.log") == b"first line\nsecond line\n"


def test_a_stat_while_the_file_is_committed_sees_its_size(runtime):
    """A `stat` (or `tail -f`'s) while close() moves the file into the journal: the spool was
    closed and not yet swapped for the entry, and the file showed 0 bytes; the kernel kept
    that size for the attribute timeout, so a reader saw an empty file."""
    writer, tree = runtime.writer, runtime.tree
    path = f"{PROTOCOLS}/sized.log"
    handle = writer.create(path)
    handle.write(0, b"twelve bytes")
    sizes = []
    flush_with_a_call_beside(writer, handle, lambda: sizes.append(tree.lookup(path).size))
    handle.close()
    assert sizes == [12]  # before: [0]


def test_a_write_just_after_the_upload_continues_from_xnats_bytes(runtime):
    """The uploader drops the journal's copy once XNAT confirmed it, and only then tells the
    overlay.  A write in between (an append through a handle still open) used to find
    neither copy and start from a spool of zeros: XNAT then got zeros in place of the
    first upload's bytes."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/appended.log"
    first = writer.create(path)
    second = writer.open_write(runtime.tree.lookup(path), path, truncate=False)
    first.write(0, b"A" * 1000)
    remove, seen = writer.journal.remove, {}

    def remove_then_write(entry):
        remove(entry)
        if "wrote" not in seen:
            try:
                seen["read"] = second.read(0, 10)
            except OSError as exc:  # before: EIO, neither copy found
                seen["read"] = exc
            seen["wrote"] = second.write(1000, b"B" * 10)

    writer.journal.remove = remove_then_write
    try:
        first.flush()
        first.close()
        second.flush()
    finally:
        writer.journal.remove = remove
    second.close()
    assert seen == {"read": b"A" * 10, "wrote": 10}
    assert on_server(runtime, "appended.log") == b"A" * 1000 + b"B" * 10


def test_a_descriptor_reads_its_last_upload_not_an_earlier_one(runtime):
    """Write, fsync, read back, write again, fsync, read back, through one descriptor (what
    SQLite does at every transaction).  After the first fsync the local copy is gone and the
    read opens XNAT's copy; before, that copy stayed the handle's after the second upload, and
    the second read returned the first version's bytes (same size, other content)."""
    writer = runtime.writer
    path = f"{PROTOCOLS}/versions.db"
    handle = writer.create(path)
    try:
        for version in (b"A", b"B", b"C"):
            handle.write(0, version * 8192)
            handle.fsync()
            assert handle.read(0, 8192) == version * 8192
            assert on_server(runtime, "versions.db") == version * 8192
        handle.truncate(4096)  # a truncate starts a local copy again too
        handle.fsync()
        assert handle.read(0, 8192) == b"C" * 4096
    finally:
        handle.close()


def test_a_rename_while_another_handle_commits_ends_under_one_name(runtime):
    """logrotate renames a log its program still holds open; a close() of another handle
    commits at that moment.  The rename used to slip between the commit's look at the name
    and its journal entry, or change the entry while its upload ran: XNAT got the file under
    the old name, and the new name stayed pending for ever.  Now one of the two goes first:
    the rename (the upload then sends the new name), or the upload (the rename then answers
    EACCES: the file is XNAT's, and XNAT has no move).  Either way XNAT holds the bytes under
    the one name the mount shows, and nothing stays pending."""
    writer, tree = runtime.writer, runtime.tree
    old, new = f"{PROTOCOLS}/app.log", f"{PROTOCOLS}/app.log.1"
    keeper = writer.create(old)
    closer = writer.open_write(tree.lookup(old), old, truncate=False)
    closer.write(0, b"line\n")  # the closing handle wrote: its close() commits
    moved = {}

    def other():
        try:
            writer.rename(old, new)
            moved["result"] = "renamed"
        except OSError as exc:
            moved["result"] = exc.errno

    flush_with_a_call_beside(writer, closer, other)
    closer.close()
    keeper.close()
    assert moved["result"] in ("renamed", errno.EACCES)
    kept, gone = (
        ("app.log.1", "app.log") if moved["result"] == "renamed" else ("app.log", "app.log.1")
    )
    wait_for(lambda: not writer.status(), 30, what="the upload")
    assert on_server(runtime, kept) == b"line\n"
    r = requests.get(f"{runtime.emu.url}{PROTOCOLS_URI}/{gone}", auth=ADMIN, timeout=30)
    assert r.status_code == 404
    tree.invalidate(PROTOCOLS)
    names = {n.name for n in tree.listdir(PROTOCOLS)}
    assert kept in names and gone not in names


class _HourLater:
    """The overlay's clock an hour on (``time`` of ``xnatfs.tree.overlay``)."""

    @staticmethod
    def monotonic():
        return time.monotonic() + 3600

    @staticmethod
    def time():
        return time.time()


def test_a_new_file_closed_empty_is_shown_for_the_mounts_life(make_runtime, monkeypatch, caplog):
    """XNAT cannot store an empty file.  One made here and closed empty (`touch f`) used to
    vanish at its close while the kernel still held its name, so `echo x >> f` (an OPEN of that
    name, no LOOKUP, no create) failed with ENOENT; then it was shown for the listing TTL, and
    a `touch stamp` that make checked minutes later was gone.  It is now shown, empty, for the
    mount's life (one log line when made, one at unmount); writes to it upload as for any new
    file."""
    rt = make_runtime(listing_ttl=0.5)
    emu = rt.emu
    tree, writer = rt.tree, rt.writer
    stamp, log = f"{PROTOCOLS}/stamp", f"{PROTOCOLS}/touched.log"
    with caplog.at_level(logging.INFO, logger="xnatfs.tree"):
        for path in (stamp, log):
            writer.create(path).close()  # touch
            node = tree.lookup(path)
            assert node.size == 0 and tree.xattrs(node)["cache_state"] == "empty"
    assert "stamp: empty; XNAT cannot store empty files" in caplog.text
    reader = tree.open(tree.lookup(stamp), stamp)
    assert reader.read(0, 100) == b""
    reader.close()
    handle = writer.open_write(tree.lookup(log), log, truncate=False)  # echo x >> f
    handle.write(0, b"appended\n")
    handle.flush()
    handle.close()
    r = requests.get(f"{emu.url}{PROTOCOLS_URI}/touched.log", auth=ADMIN, timeout=30)
    assert r.content == b"appended\n"
    # an hour on, long past the kernel's entry timeout, nothing having asked about it: still
    # there (before: gone once the listing TTL ran out)
    monkeypatch.setattr("xnatfs.tree.overlay.time", _HourLater)
    tree.invalidate(PROTOCOLS)
    assert tree.lookup(log).size == 9
    assert "stamp" in {n.name for n in tree.listdir(PROTOCOLS)}
    assert tree.lookup(stamp).size == 0
    r = requests.get(f"{emu.url}{PROTOCOLS_URI}/stamp", auth=ADMIN, timeout=30)
    assert r.status_code == 404  # never on XNAT
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xnatfs.tree"):
        rt.close()
    assert "1 empty file(s) made in this mount go with it" in caplog.text
    assert stamp in caplog.text


def test_empty_files_kept_are_bounded_and_written_ones_do_not_count(make_runtime, monkeypatch):
    """At most ``EMPTY_MAX`` EMPTY files are kept (every listing looks through the local
    files), the oldest dropped first; a file made empty and written since is no EMPTY file
    and does not count (kept for the mount's life, such files piled up and pushed the real
    EMPTY ones out)."""
    from xnatfs.tree import overlay

    monkeypatch.setattr(overlay, "EMPTY_MAX", 3)
    rt = make_runtime()
    tree, writer = rt.tree, rt.writer
    writer.create(f"{PROTOCOLS}/first").close()
    for i in range(5):  # touch log_i; echo x >> log_i
        path = f"{PROTOCOLS}/log{i}"
        writer.create(path).close()
        handle = writer.open_write(tree.lookup(path), path, truncate=False)
        handle.write(0, b"x\n")
        handle.close()
    assert tree.xattrs(tree.lookup(f"{PROTOCOLS}/first"))["cache_state"] == "empty"
    for name in ("a", "b"):
        writer.create(f"{PROTOCOLS}/{name}").close()
    assert writer.empty_files() == [f"{PROTOCOLS}/{n}" for n in ("a", "b", "first")]
    writer.create(f"{PROTOCOLS}/c").close()  # the fourth: the oldest goes
    assert writer.empty_files() == [f"{PROTOCOLS}/{n}" for n in ("a", "b", "c")]
    assert not _exists(tree, f"{PROTOCOLS}/first")


def test_an_empty_new_file_truncated_or_moved_stays_a_new_file(make_runtime):
    """An EMPTY file (made here, closed empty) is still a new file: emptied again (`: > f`)
    it stays empty without an error about XNAT's old bytes (it has none there); given bytes
    by truncate it uploads them as a new file; moved over a file on XNAT it is refused like
    emptying that file would be (XNAT cannot store it, and keeps its own)."""
    rt = make_runtime(listing_ttl=60, allow_delete=True)
    emu = rt.emu
    tree, writer = rt.tree, rt.writer
    log, grown, over = (f"{PROTOCOLS}/{n}" for n in ("reset.log", "grown.bin", "over"))
    for path in (log, grown, over):
        writer.create(path).close()
    handle = writer.open_write(tree.lookup(log), log, truncate=True)  # : > reset.log
    handle.flush()
    handle.close()
    assert tree.xattrs(tree.lookup(log))["cache_state"] == "empty"
    writer.truncate(grown, 10)  # truncate -s 10
    r = requests.get(f"{emu.url}{PROTOCOLS_URI}/grown.bin", auth=ADMIN, timeout=30)
    assert r.content == b"\0" * 10
    with pytest.raises(OSError) as err:
        writer.rename(over, f"{PROTOCOLS}/README.txt")
    assert err.value.errno == errno.ENOTSUP
    assert on_server(rt, "README.txt") == read_all(rt, f"{PROTOCOLS}/README.txt") != b""


def _exists(tree, path):
    try:
        tree.lookup(path)
    except FileNotFoundError:
        return False
    return True


def test_truncate_by_path_to_zero_of_a_file_on_xnat_held_open_is_refused(make_runtime):
    """truncate(2) by path (no descriptor) to 0 bytes of a file on XNAT that another handle
    holds open: refused at once (ENOTSUP), as when nobody holds it.  Before, the truncating
    handle's close left the refusal to a later close, which a handle that changed nothing
    itself never made: the call answered 0 and XNAT kept its bytes."""
    rt = make_runtime(allow_delete=True)
    readme = f"{PROTOCOLS}/README.txt"
    before = on_server(rt, "README.txt")
    held = rt.writer.open_write(rt.tree.lookup(readme), readme, truncate=False)
    with pytest.raises(OSError) as err:
        rt.writer.truncate(readme, 0)
    assert err.value.errno == errno.ENOTSUP
    held.flush()
    held.close()
    assert on_server(rt, "README.txt") == before
    rt.tree.invalidate(PROTOCOLS)
    assert read_all(rt, readme) == before


def test_a_call_waiting_for_another_on_the_same_file_ends_by_its_deadline(make_runtime):
    """A call on a file waits while another holds it (``LocalFile.io``), and that one may be
    inside a request (the download a write continues from, an rm's DELETE, a rename waiting
    for a running upload): the waiting call still ends by its own deadline, ETIMEDOUT."""
    rt = make_runtime(fs_timeout=0.3)
    path = f"{PROTOCOLS}/busy.bin"
    handle = rt.writer.create(path)
    handle.write(0, b"x" * 100)
    lf = handle.lf
    assert lf.io.acquire(timeout=5)  # a call inside a long request
    try:
        for call in (lambda: handle.write(100, b"y"), lambda: handle.read(0, 10)):
            with pytest.raises(TimeoutError) as err:
                call()
            assert err.value.errno == errno.ETIMEDOUT
    finally:
        lf.io.release()
    assert handle.write(100, b"y") == 1
    handle.flush()
    handle.close()
