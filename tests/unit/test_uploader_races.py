"""Uploader races found by review6 (the write path's concurrency): each test names what it
showed failing before its fix.  Same rig as ``test_uploader.py``: a fake server, a fake clock,
no sleeps."""

from __future__ import annotations

import dataclasses
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


def test_a_renamed_entry_is_no_version_of_its_old_path(rig):
    """A rename moves an entry to a new path (Journal.update).  It stayed listed under the
    old path too: a new file confirmed under the old name dropped it as "superseded" (the
    renamed file's bytes deleted, never uploaded), and once it was removed, versions_for of
    the old path raised KeyError (inside Uploader._succeeded: the path blocked for good)."""
    old_path, new_path = "/P/resources/R/files/app.log", "/P/resources/R/files/app.log.1"
    rotated = rig.add(b"yesterday", path=old_path)
    rotated = rig.journal.update(
        dataclasses.replace(rotated, path=new_path, target={"kind": "file", "relpath": new_path})
    )
    assert rig.journal.versions_for(old_path) == []
    assert [e.id for e in rig.journal.versions_for(new_path)] == [rotated.id]
    fresh = rig.add(b"today", path=old_path)
    up = rig.uploader(workers=1)
    up.upload_now(fresh, deadline=rig.clock() + WAIT)  # confirmed: drops older app.log only
    assert rig.journal.get(rotated.id) is not None  # before: dropped as superseded
    up.upload_now(rotated, deadline=rig.clock() + WAIT)
    assert rig.server.files == {old_path: b"today", new_path: b"yesterday"}
    assert rig.journal.versions_for(old_path) == []  # before: KeyError once removed
