"""A lost update refused through a real mount (conflict10; the runtime-API cases are in
tests/api/test_lost_updates.py): with --allow-delete, a file on XNAT opened to change in
place is stored by another XNAT client before the close.  Before, the close answered 0 and
XNAT held the mount's bytes: the other client's version was gone, and nobody was told."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse
from tests.mount.helpers import md5, put_file
from tests.mount.test_write_mount import server_files

pytestmark = [needs_fuse]

PROTOCOLS = "DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"
THEIRS = b"the other client's version\n"


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


def test_a_change_in_place_does_not_overwrite_another_clients_copy(emu, make_mount):
    m = make_mount(emu.url, "--allow-delete")
    path = m.path / PROTOCOLS / "README.txt"
    fd = os.open(path, os.O_RDWR)  # change in place (a log, a header rewritten)
    try:
        os.pwrite(fd, b"MINE", 0)
        put_file(emu.url, f"{PROTOCOLS_URI}/README.txt", THEIRS)  # another XNAT client
    finally:
        with pytest.raises(OSError) as got:
            os.close(fd)
    assert got.value.errno == errno.EEXIST
    assert server_files(emu)["README.txt"] == (len(THEIRS), md5(THEIRS))
    # the user's bytes are kept, shown as failed, and `xnatfs status` says why
    assert os.getxattr(path, "user.xnat.cache_state") == b"failed"
    with open(path, "rb") as fh:
        assert fh.read(4) == b"MINE"
    status = subprocess.run(
        [sys.executable, "-m", "xnatfs", "status", str(m.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "another XNAT client changed this file" in status.stdout + status.stderr, status
    errors = [line for line in m.log_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "README.txt" in errors[0] and "holds MD5" in errors[0], errors
    # resolving it as README says: copy yours out, rm it here, copy it back in
    mine = path.read_bytes()
    os.unlink(path)
    assert path.read_bytes() == THEIRS  # XNAT's shows again
    path.write_bytes(mine)
    r = requests.get(f"{emu.url}{PROTOCOLS_URI}/README.txt", auth=ADMIN, timeout=30)
    assert r.content == mine
