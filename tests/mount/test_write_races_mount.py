"""Races of the write path through a real mount, found by review6 (tests/api/test_write_races.py
has the ones the runtime API shows without the kernel)."""

from __future__ import annotations

import errno
import os

import pytest

from tests.conftest import needs_fuse

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
