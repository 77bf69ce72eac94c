"""Races of the write path through a real mount, found by review6 (tests/api/test_write_races.py
has the ones the runtime API shows without the kernel)."""

from __future__ import annotations

import errno
import os

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse
from tests.mount.helpers import api, md5, sh
from tests.mount.test_write_mount import server_files

pytestmark = [needs_fuse]

PROTOCOLS = "DEMO1/resources/protocols/files"


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


def test_rm_of_a_temporary_file_just_closed_is_not_ebusy(emu, make_mount):
    """A program writes a temporary file, closes it and removes it (a failed save, rsync
    cleaning up).  close() returns before the kernel's RELEASE is served (another worker
    thread serves it), and unlink refused a file with a handle as "still open" (EBUSY):
    rm failed now and then on a file nobody had open any more."""
    m = make_mount(emu.url)
    folder = m.path / PROTOCOLS
    refused = []
    for i in range(300):
        path = folder / f".scratch{i}.AbC123"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"scratch\n")
        os.close(fd)
        try:
            os.unlink(path)
        except OSError as exc:
            refused.append(errno.errorcode[exc.errno])
            os.unlink(path)  # by now the RELEASE was served
    assert refused == []


def test_sync_of_a_file_another_descriptor_writes_uploads_it(emu, make_mount):
    """`sync FILE` opens the file read-only and fsyncs it: fsync(2) is about the file, not
    the descriptor, so the bytes another descriptor wrote are on XNAT when it returns
    (README: fsync returns only after XNAT accepted the bytes), even though a read-only
    descriptor's close commits nothing (WriteHandle.changed)."""
    m = make_mount(emu.url)
    path = m.path / PROTOCOLS / "synced.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"before the sync\n")
        url = f"{emu.url}/data/projects/DEMO1/resources/protocols/files/synced.log"
        assert requests.get(url, auth=ADMIN, timeout=30).status_code == 404
        # what `sync FILE` does, in this process: a fork + exec would close (FLUSH) the
        # writer's descriptor too, which commits on its own
        ro = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.fsync(ro)
        finally:
            os.close(ro)
        r = requests.get(url, auth=ADMIN, timeout=30)
        assert (r.status_code, r.content) == (200, b"before the sync\n")
    finally:
        os.close(fd)


def test_children_that_inherit_the_log_descriptor_cost_uploads_never_lines(emu, make_mount):
    """A script holds its log open on descriptor 3 and runs commands that inherit it; each
    one's exit closes its copy, and so does the shell after each `>&3` (it dups 3 onto 1 and
    closes that again): every such close is a FLUSH from a handle that wrote, which uploads
    the log as it stands.  XNAT holds each intermediate version in turn, and the next write
    continues from XNAT's copy: every line ends on XNAT, in order, and one PUT per close that
    followed a change is all it costs."""
    m = make_mount(emu.url)
    log = m.path / PROTOCOLS / "script.log"
    mark = emu.mark()
    script = (
        f"exec 3>>'{log}'; echo start >&3; "
        'for i in 1 2 3; do sh -c "echo child $i >&3"; echo parent $i >&3; done; '
        "echo end >&3; exec 3>&-"
    )
    sh(["sh", "-c", script])
    expected = b"start\n" + b"".join(b"child %d\nparent %d\n" % (i, i) for i in (1, 2, 3))
    expected += b"end\n"
    assert (m.path / PROTOCOLS / "script.log").read_bytes() == expected
    uploads = [p for meth, p in api(emu.since(mark)) if meth == "PUT" and "script.log" in p]
    assert 1 < len(uploads) <= 8, uploads  # a close after each of the 8 lines at most
    assert server_files(emu)["script.log"] == (len(expected), md5(expected))
