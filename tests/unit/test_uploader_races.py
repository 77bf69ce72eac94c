"""Uploader races found by review6 (the write path's concurrency): each test names what it
showed failing before its fix.  Same rig as ``test_uploader.py``: a fake server, a fake clock,
no sleeps."""

from __future__ import annotations

import threading

import pytest

from tests.unit.test_uploader import WAIT, Rig


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_a_version_whose_close_timed_out_behind_an_older_one_is_still_uploaded(rig):
    """close() of a newer version of a file waits (until the fs deadline) for the running
    retry of an older one; when that wait runs out close() answers ETIMEDOUT and the log
    says the newer version is "retried in the background".  It was not queued anywhere:
    the older version landed, the newer stayed pending until the next mount, and XNAT kept
    the older bytes.  Failed before the fix: XNAT ended with b"v1"."""
    rig.server.gate = threading.Event()
    up = rig.uploader(workers=1)
    up.start()
    path = "/P/resources/R/files/run.log"
    older = rig.add(b"v1", path=path)
    up.submit(older)
    rig.signal.wait_for(lambda: rig.server.active == 1)  # the older version's retry runs
    newer = rig.add(b"v2", path=path)
    with pytest.raises(TimeoutError):
        up.upload_now(newer, deadline=rig.clock())  # the fs deadline ran out
    rig.server.gate.set()
    rig.signal.wait_for(lambda: rig.server.files.get(path) == b"v2", WAIT)
    rig.signal.wait_for(lambda: rig.journal.entries() == [], WAIT)
