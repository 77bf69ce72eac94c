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
from tests.helpers.waiting import wait_for

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


def _an_experiment_file(root) -> str:
    """A file of an experiment's scan (its time is the experiment's, the same on both copies of
    the demo archive; a project resource's is the mount's start)."""
    for dirpath, _dirs, files in sorted(os.walk(root)):
        if "/experiments/" in dirpath and dirpath.endswith("/files") and files:
            return os.path.join(dirpath, sorted(files)[0])
    raise AssertionError(f"no experiment file below {root}")


def test_two_servers_never_share_bytes_of_files_listed_without_md5(make_emulator, make_mount):
    """One user's mounts of two XNATs share the default cache directory.  Without MD5s in the
    listings (checksums off, docs/XNAT-API.md §1.8) a file's key was its path, size and time
    only: the second server, a copy of the first with one file's bytes changed (same size,
    same time), read the first server's bytes (a red-team reproducer)."""
    first = make_emulator(checksums=False)
    second = make_emulator(checksums=False)  # the same demo archive, another URL
    m1 = make_mount(first.url, "--bulk-zip", "0", "--prefetch", "0")
    path = _an_experiment_file(m1.path / "DEMO1" / "subjects")
    rel = os.path.relpath(path, m1.path)
    with open(path, "rb") as f:
        theirs = f.read()
    assert theirs
    wait_for(
        lambda: os.getxattr(path, "user.xnat.cache_state") == b"cached", what="the file cached"
    )
    m1.umount()
    ours = bytes(b ^ 0xFF for b in theirs)
    changed = 0
    for dirpath, _dirs, files in os.walk(second.data / "archive"):
        for name in files:
            stored = os.path.join(dirpath, name)
            if name == os.path.basename(path) and os.path.getsize(stored) == len(theirs):
                st = os.stat(stored)
                with open(stored, "r+b") as f:
                    f.write(ours)
                os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
                changed += 1
    assert changed, "the file is not in the second emulator's data"
    m2 = make_mount(second.url, "--bulk-zip", "0", "--prefetch", "0", cache=m1.cache)
    with open(m2.path / rel, "rb") as f:
        got = f.read()
    assert got == ours, f"{rel}: the first server's bytes ({got == theirs})"
