"""The cost of one small upload (RESULTS.md, "Small files"): the attempt writes the journal's
sidecar only when it fails, a small file is hashed without a thread, and an entry left by an
earlier process is checked on XNAT before it is sent (its attempt's start is not on disk).

The same rig as ``test_uploader.py``: an in-memory server, a fake clock, no sleeps.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.unit.test_uploader import WAIT, Rig, Transient
from xnatfs.uploads import uploader as uploader_module
from xnatfs.uploads.journal import DONE, PENDING, Journal


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def _count_sidecar_writes(journal: Journal, monkeypatch) -> list:
    writes: list = []
    real = journal._write_sidecar

    def spy(entry, **extra):
        writes.append((entry.state, entry.tries, entry.md5))
        return real(entry, **extra)

    monkeypatch.setattr(journal, "_write_sidecar", spy)
    return writes


def _add_unhashed(rig: Rig, data: bytes, path: str = "/P/resources/R/files/small.dat"):
    f = rig.spool.create()
    f.write(0, data)
    return rig.journal.add(f, {"kind": "file", "relpath": path}, path, digest=False)


def test_a_confirmed_upload_writes_no_sidecar_after_the_journal_took_it(rig, monkeypatch):
    """Before: two more sidecar writes per upload (``uploading`` before the PUT, the MD5
    after it), four fsyncs on the path of every close()."""
    entry = _add_unhashed(rig, b"x" * 4096)
    writes = _count_sidecar_writes(rig.journal, monkeypatch)
    rig.uploader().upload_now(entry, rig.clock() + WAIT)
    assert rig.server.files[entry.path] == b"x" * 4096  # verify compared the MD5
    assert writes == []
    assert rig.journal.entries() == [] and rig.states(entry.path) == [DONE]


def test_the_old_way_is_one_switch_away(rig, monkeypatch):
    monkeypatch.setattr(uploader_module, "PERSIST_ATTEMPT_START", True)
    monkeypatch.setattr(uploader_module, "PERSIST_DIGEST", True)
    entry = _add_unhashed(rig, b"y" * 4096)
    writes = _count_sidecar_writes(rig.journal, monkeypatch)
    rig.uploader().upload_now(entry, rig.clock() + WAIT)
    assert [(state, tries) for state, tries, _ in writes] == [("uploading", 1)] * 2
    assert writes[1][2] != ""  # the second stored the MD5


def test_a_failed_attempt_leaves_its_tries_and_md5_on_disk_before_close_hears_of_it(
    rig, monkeypatch
):
    entry = _add_unhashed(rig, b"z" * 4096)
    writes = _count_sidecar_writes(rig.journal, monkeypatch)
    rig.server.failures = [Transient()]
    with pytest.raises(Transient):
        rig.uploader().upload_now(entry, rig.clock() + WAIT)
    assert len(writes) == 1
    with open(os.path.join(rig.journal.directory, entry.id + ".json")) as fh:
        doc = json.load(fh)
    assert (doc["state"], doc["tries"]) == (PENDING, 1)
    assert doc["md5"] == hashlib.md5(b"z" * 4096).hexdigest()
    assert "503" in doc["last_error"]


def test_an_entry_left_by_an_earlier_process_is_checked_before_it_is_sent(rig):
    """Its sidecar says ``tries`` 0 even when its PUT reached XNAT before the crash (the
    attempt's start is not written down any more): the new process asks XNAT first, finds
    the bytes and sends nothing.  Sent again without overwrite, XNAT would answer
    "duplicates" and the file would be kept as failed."""
    entry = rig.add(b"landed before the crash", path="/P/resources/R/files/a")
    assert entry.tries == 0
    rig.server.files[entry.path] = b"landed before the crash"
    up = rig.uploader(journal=Journal(rig.journal.directory))  # a new process
    up.start()
    rig.signal.wait_for(lambda: rig.states(entry.path) == [DONE])
    assert rig.server.puts == []
    assert rig.server.verifies == [entry.path]


def test_a_new_entry_is_sent_without_asking_first(rig):
    """... while an entry of this process is sent at once (no listing more per close)."""
    up = rig.uploader()
    entry = rig.add(b"new", path="/P/resources/R/files/b")
    up.upload_now(entry, rig.clock() + WAIT)
    assert [p for p, _, _ in rig.server.puts] == [entry.path]
    assert rig.server.verifies == [entry.path]


@pytest.mark.parametrize("size, threaded", [(4096, False), (3 << 20, True)])
def test_a_small_file_is_hashed_without_a_thread(rig, monkeypatch, size, threaded):
    """The idle-priority hashing thread beside the PUT is for large files: for a small one it
    cost a close() tens of ms on a busy machine, for nothing to overlap."""
    ran: list = []
    run = uploader_module._Digest._run

    def spying_run(self):
        ran.append(self._entry.path)
        return run(self)

    monkeypatch.setattr(uploader_module._Digest, "_run", spying_run)
    data = os.urandom(size)
    entry = _add_unhashed(rig, data, path="/P/resources/R/files/h")
    rig.uploader().upload_now(entry, rig.clock() + WAIT)
    assert rig.server.files[entry.path] == data  # the MD5 verify compared was right
    assert bool(ran) is threaded
