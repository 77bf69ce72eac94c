"""Unmount while the server is hung (SIGSTOP: connections accepted, never answered) is quick,
and what was written and not uploaded stays in the journal, named by ``xnatfs umount``."""

from __future__ import annotations

import os
import signal

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse
from tests.helpers.fsop import fs_op
from tests.helpers.waiting import wait_for
from tests.reliability.conftest import mount_stats, server_bytes, umount_timed
from tests.reliability.test_dead_server import PROTOCOLS, _server, _write
from tests.reliability.test_stalled_server import emulator_process  # noqa: F401 - a fixture

T = 5.0


@pytest.mark.slow
@needs_fuse
def test_unmount_while_the_server_hangs_is_quick_and_keeps_the_write(
    emulator_process,  # noqa: F811 - the fixture imported above
    make_mount,
):
    url, pid = emulator_process
    m = make_mount(url, "--timeout", str(T))
    assert fs_op("listdir", m.path / PROTOCOLS)["errno"] == 0
    os.kill(pid, signal.SIGSTOP)
    try:
        wrote = _write(m.path / PROTOCOLS / "hung.txt", b"kept while XNAT hangs\n")
        print(f"write+close while hung: {wrote}")
        assert wrote["errno"] != 0 and wrote["seconds"] < T + 3, wrote
        # other calls meanwhile: the breaker opens on the timeouts, the heartbeat probes
        for name in ("SUBJ01", "SUBJ02", "SUBJ03"):
            fs_op("listdir", m.path / "DEMO1" / "subjects" / name / "experiments")
        state = _server(m)["state"]
        res, took = umount_timed(m.path)
        print(f"server {state}; umount while hung: {took:.2f}s: {res.stderr.strip()}")
        assert res.returncode == 0, res.stderr
        assert m.proc.wait(timeout=60) == 0, m.log_tail()
        assert "hung.txt" in res.stderr and "not on XNAT" in res.stderr, res.stderr
        # the running upload attempt ends at its deadline (T), the logout takes 3 s at most
        assert took < T + 6, took
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: m.proc.poll() is not None, 10, what="the daemon to end")


@needs_fuse
def test_unmount_waits_for_an_upload_the_hung_server_holds_no_longer_than_its_bound(
    emulator_process,  # noqa: F811 - the fixture imported above
    make_mount,
):
    """An upload attempt running at unmount on a hung server held the daemon for close()'s
    10 s (longer than ``--timeout`` here, so it was still running then).  Now the unmount
    waits ``SHUTDOWN_WAIT`` (2 s) for it, the file stays in the journal, and the next mount
    uploads it: nothing lost."""
    from xnatfs.uploads.uploader import SHUTDOWN_WAIT

    url, pid = emulator_process
    args = ("--timeout", "30", "--upload-backoff", "0.2")
    m = make_mount(url, *args)
    assert fs_op("listdir", m.path / PROTOCOLS)["errno"] == 0
    data = b"held by a hung server at unmount\n"
    faults = url + "/emulator/faults"
    # the first attempt is refused at once (500: retried), so the next one runs in the
    # background, where the stopped server holds it
    r = requests.post(faults, json={"error_rate": 1.0, "error_status": 500}, auth=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    wrote = _write(m.path / PROTOCOLS / "held.txt", data)
    requests.post(faults, json={"error_rate": 0.0}, auth=ADMIN, timeout=30)
    assert wrote["errno"] != 0, wrote
    os.kill(pid, signal.SIGSTOP)
    try:

        def retry_running():
            stats = mount_stats(m.path) or {}
            return any(
                u["path"].endswith("/held.txt") and u["state"] == "uploading" and u["tries"] >= 2
                for u in stats.get("uploads", [])
            )

        wait_for(retry_running, 30, what="the upload's retry to run", interval=0.05)
        res, took = umount_timed(m.path)
        print(f"umount with an upload held by the hung server: {took:.2f}s: {res.stderr.strip()}")
        assert res.returncode == 0, res.stderr
        assert m.proc.wait(timeout=60) == 0, m.log_tail()
        assert "held.txt" in res.stderr and "not on XNAT" in res.stderr, res.stderr
        assert "abandoned, they stay in the journal" in m.log_text()
        # SHUTDOWN_WAIT for the attempt, then the client's close (the logout: 3 s at most)
        assert took < SHUTDOWN_WAIT + 3 + 3, took
    finally:
        os.kill(pid, signal.SIGCONT)
    m2 = make_mount(url, *args, cache=m.cache)
    wait_for(lambda: (mount_stats(m2.path) or {}).get("uploads") == [], 60, "the upload")
    assert server_bytes(url, "held.txt") == data
