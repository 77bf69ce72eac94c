"""Races of the write path through a real mount, found by review6 (tests/api/test_write_races.py
has the ones the runtime API shows without the kernel)."""

from __future__ import annotations

import errno
import os

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse

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
