"""Unmount while the server is hung (SIGSTOP: connections accepted, never answered) is quick,
and what was written and not uploaded stays in the journal, named by ``xnatfs umount``."""

from __future__ import annotations

import os
import signal

from tests.conftest import needs_fuse
from tests.helpers.fsop import fs_op
from tests.helpers.waiting import wait_for
from tests.reliability.conftest import umount_timed
from tests.reliability.test_dead_server import PROTOCOLS, _server, _write
from tests.reliability.test_stalled_server import emulator_process  # noqa: F401 - a fixture

T = 5.0


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
