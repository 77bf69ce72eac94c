"""A move killed half-way (conflict10): XNAT has no move, so ``rename`` of a file on XNAT is
an upload under the new name and a DELETE of the old (``Namespace._move_on_xnat``).  The
daemon is killed (SIGKILL) while either request is on its way, and the next mount of the same
cache must leave the file in one place at least: never delete the only copy.  Through
/dev/fuse against the emulator; the request in flight is held by the emulator's latency and
then refused (500), so it never takes effect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import Mount, needs_fuse
from tests.mount.helpers import md5, wait_for
from tests.mount.test_write_mount import server_files

pytestmark = [needs_fuse]

PROTOCOLS = "DEMO1/resources/protocols/files"


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


def _stored(emu, name):
    return any(m == "PUT" and f"/files/{name}?" in p and s == 200 for m, p, s, _ in emu.records())


@pytest.mark.parametrize("killed_in", ["PUT", "DELETE"])
def test_a_move_killed_half_way_keeps_the_file_and_the_next_mount_deletes_nothing(
    emu, tmp_path, killed_in
):
    cache = tmp_path / "cache"
    m = Mount(emu.url, tmp_path / "m", cache, tmp_path / "m.log", ["--allow-delete"]).start()
    old, new = m.path / PROTOCOLS / "README.txt", m.path / PROTOCOLS / "README2.txt"
    try:
        data = old.read_bytes()
        emu.faults.fault_methods = killed_in
        emu.faults.latency_ms, emu.faults.error_rate, emu.faults.error_status = 3000, 1.0, 500
        mv = subprocess.Popen(
            [sys.executable, "-c", f"import os; os.rename({str(old)!r}, {str(new)!r})"],
            stderr=subprocess.DEVNULL,
        )
        if killed_in == "PUT":  # the copy is in the journal, its PUT on its way
            wait_for(
                lambda: list((cache / "uploads" / "journal").glob("*.json")),
                30,
                what="the copy's journal entry",
            )
        else:  # the copy is on XNAT, the DELETE on its way
            wait_for(lambda: _stored(emu, "README2.txt"), 30, what="the copy's PUT")
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
        assert mv.wait(timeout=30) != 0  # the rename did not answer 0
        assert emu.emu.wait_idle(timeout=10)  # the held request answered (its 500)
        emu.faults.error_rate, emu.faults.latency_ms, emu.faults.fault_methods = 0.0, 0.0, ""
    finally:
        m.cleanup()
    assert "README.txt" in server_files(emu)  # the held request took no effect
    m2 = Mount(emu.url, tmp_path / "m", cache, tmp_path / "m2.log", ["--allow-delete"]).start()
    try:
        # the next mount resumes a pending copy (the PUT case) and deletes nothing
        wait_for(
            lambda: server_files(emu).get("README2.txt") == (len(data), md5(data)),
            60,
            what="the copy under the new name",
        )
        assert server_files(emu)["README.txt"] == (len(data), md5(data))
        assert old.read_bytes() == data and new.read_bytes() == data
        status = subprocess.run(
            [sys.executable, "-m", "xnatfs", "status", str(m2.path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "README" not in status.stdout, status.stdout  # nothing left to do
    finally:
        m2.umount()
