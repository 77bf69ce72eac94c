"""Two mounts of one cache directory (review8i), through /dev/fuse against the emulator.

The content cache is shared by design (docs/RELIABILITY.md, "A cache directory shared by
processes"); the upload journal cannot be: a mount takes it for itself (``Writer.start``), and
a second mount of the same cache directory reads but answers writes with EROFS.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse

pytestmark = [needs_fuse]

PROTOCOLS = "DEMO1/resources/protocols/files"
#: writes a first part, waits for a line on stdin, writes a second part and closes; prints
#: what close() answered
_HOLDER = r"""
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"first part\n")
print("written", flush=True)
sys.stdin.readline()
try:
    os.write(fd, b"second part\n")
    os.close(fd)
    print("closed", flush=True)
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno), flush=True)
"""
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"


def test_a_second_mount_of_one_cache_leaves_the_first_ones_writes_alone(make_emulator, make_mount):
    """A program writes a file through the first mount and keeps it open; a second mount of
    the same cache directory starts.  Its start took the first mount's open spool file for a
    crash's leftover and moved it into the journal as a nameless failed entry: the first
    mount's close then failed, and its file was neither on XNAT nor in the journal under its
    name.  Now the second mount leaves the journal alone: its reads work, its writes answer
    EROFS (one WARNING line at its start says why), and the first mount's file lands."""
    emu = make_emulator()
    m1 = make_mount(emu.url)
    path = m1.path / PROTOCOLS / "held.log"
    # the program holding the file is a process of its own: a descriptor of this one would
    # be closed (a FLUSH: an upload) by the fork that starts the second mount
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "written\n"
        m2 = make_mount(emu.url, cache=m1.cache)
        out, _ = holder.communicate("go on\n", timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert out == "closed\n", out  # before: "EIO" or "ENOENT": the spool file was moved away
    r = requests.get(f"{emu.url}{PROTOCOLS_URI}/held.log", auth=ADMIN, timeout=30)
    assert (r.status_code, r.content) == (200, b"first part\nsecond part\n")
    assert (m2.path / PROTOCOLS / "README.txt").read_bytes()  # reads share the cache
    with pytest.raises(OSError) as err:
        (m2.path / PROTOCOLS / "other.txt").write_bytes(b"x")
    assert err.value.errno == errno.EROFS
    assert "another xnatfs mount of this cache directory" in m2.log_text()
    assert os.listdir(m2.path / PROTOCOLS)
