"""Uploader races found by review6 (the write path's concurrency): each test names what it
showed failing before its fix.  Same rig as ``test_uploader.py``: a fake server, a fake clock,
no sleeps."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from tests.unit.test_uploader import WAIT, Rig
from xnatfs.uploads.journal import Journal


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


class Crash(BaseException):
    """The process dies here (kill -9, power): nothing after this point runs."""


def test_a_crash_while_a_confirmed_version_leaves_the_journal_never_lets_an_older_one_win(
    rig, monkeypatch
):
    """Two versions of a log pending (XNAT was down when a child process's close uploaded
    it half-written, then at the last close); the newest is confirmed, and the uploader
    drops it from the journal, then the older one (superseded).  A crash between the two
    left the older version alone in the journal: the next mount uploaded it over the newest
    (with overwrite, as a later version), and XNAT ended with the half-written log, the
    rest gone.  Now the older versions go first: a crash between leaves the confirmed one,
    which the next mount checks on XNAT and drops without sending anything."""
    path = "/P/resources/R/files/run.log"
    rig.add(b"half of the log", path=path)
    newest = rig.add(b"half of the log, and the rest", path=path)
    remove, removed = rig.journal.remove, []

    def remove_then_crash(entry):
        if removed:
            raise Crash()
        remove(entry)
        removed.append(entry)

    monkeypatch.setattr(rig.journal, "remove", remove_then_crash)
    with pytest.raises(Crash):
        rig.uploader(workers=1).upload_now(newest, deadline=rig.clock() + WAIT)
    journal = Journal(rig.journal.directory)  # the next mount
    up = rig.uploader(journal=journal, workers=1)
    up.start()
    rig.signal.wait_for(lambda: journal.entries() == [] and rig.server.active == 0)
    assert rig.server.files[path] == b"half of the log, and the rest"  # before: the half
