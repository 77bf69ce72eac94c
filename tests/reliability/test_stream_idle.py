"""Idle readers of streamed files (files larger than the cache) hold no request slot.

Through a real mount with ``--max-requests 2``: more idle opens than slots start no GET, so a
listing of another folder is answered at once; two opens that read a little and then stop
hold both slots only until ``--read-timeout`` (the stream's idle limit, 2 s here), after which
a listing and a third reader go through and every slot is free; the readers then read on
(each GET resumes from the first byte, checked against what was served) and get every byte
right, with no EIO.
"""

from __future__ import annotations

import os
import time

from tests.conftest import needs_fuse
from tests.mount.helpers import downloads
from tests.reliability.conftest import md5, mount_stats, put_file, wait_for

pytestmark = [needs_fuse]

FOLDER = "DEMO2/resources/HUGE/files"
MIB = 1 << 20
IDLE_S = 2.0  # --read-timeout: also how long a paused stream waits for its reader


def _in_flight(m) -> int:
    stats = mount_stats(m.path)
    assert stats is not None, m.log_tail()
    return int(stats["limiter"]["in_flight"])


def _read_to_end(fd: int, pos: int) -> bytes:
    got = bytearray()
    while True:
        chunk = os.pread(fd, MIB, pos + len(got))
        if not chunk:
            return bytes(got)
        got += chunk


def test_idle_opens_of_streamed_files_do_not_stall_the_mount(make_emulator, make_mount, record):
    emu = make_emulator()
    # three different files (one inode's page cache would serve the second reader): more
    # readers than --max-requests; each larger than the cache and than the stream's window
    blobs = {f"big{i}.bin": os.urandom(16 * MIB) for i in range(3)}
    for name, data in blobs.items():
        put_file(emu.url, f"/data/projects/{FOLDER}/{name}", data)
    m = make_mount(
        emu.url,
        "--max-requests",
        "2",
        "--cache-size",
        "4M",
        "--read-timeout",
        str(IDLE_S),
        "--timeout",
        "30",
        "--prefetch",
        "0",
    )
    folder = m.path / FOLDER
    assert sorted(os.listdir(folder)) == sorted(blobs)
    mark = emu.mark()

    # (1) nine idle opens: no GET, no slot; a listing of another folder is answered at once
    idle = [os.open(folder / name, os.O_RDONLY) for name in blobs for _ in range(3)]
    try:
        started = time.monotonic()
        assert "SUBJ01" in os.listdir(m.path / "DEMO1/subjects")
        first_listing = time.monotonic() - started
        assert any("/DEMO1/subjects" in p for _, p, _, _ in emu.since(mark))  # not cached
        assert _in_flight(m) == 0
        assert not downloads(emu.since(mark)), "an open started a GET"
    finally:
        for fd in idle:
            os.close(fd)

    # (2) two readers read 1 MiB and stop: their GETs fill the window, pause and hold both
    # slots; a listing (and a third reader) get a slot once a GET is dropped for idleness
    fds = {name: os.open(folder / name, os.O_RDONLY) for name in blobs}
    try:
        first, second, third = blobs
        for name in (first, second):
            assert os.pread(fds[name], MIB, 0) == blobs[name][:MIB]
        held = _in_flight(m)  # 2 unless a GET is dropped already
        listed = emu.mark()
        started = time.monotonic()
        assert os.listdir(m.path / "DEMO2/subjects")
        second_listing = time.monotonic() - started
        assert any("/DEMO2/subjects" in p for _, p, _, _ in emu.since(listed))  # not cached
        started = time.monotonic()
        assert os.pread(fds[third], MIB, 0) == blobs[third][:MIB]
        third_read = time.monotonic() - started
        wait_for(lambda: _in_flight(m) == 0, timeout=30, what="every paused GET dropped")

        # (3) the readers come back: every GET resumes, every byte is right, no EIO
        for name, fd in fds.items():
            assert md5(blobs[name][:MIB] + _read_to_end(fd, MIB)) == md5(blobs[name])
    finally:
        for fd in fds.values():
            os.close(fd)
    gets = downloads(emu.since(mark))
    per_file = {name: sum(p.endswith("/" + name) for p in gets) for name in blobs}
    assert all(n >= 2 for n in per_file.values()), per_file  # dropped, then resumed
    stats = mount_stats(m.path)
    assert stats is not None and not stats["errors"], stats and stats["errors"]
    record(
        first_listing_s=round(first_listing, 3),
        third_read_s=round(third_read, 3),
        slots_held_before_listing=held,
        second_listing_s=round(second_listing, 3),
        gets_per_file=per_file,
    )
