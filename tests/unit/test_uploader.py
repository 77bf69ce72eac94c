"""Uploader: verify before delete, backoff for retryable errors only, upload_now, resume,
bounded named workers, close with a deadline.

No sleeps and no network: ``FakeServer`` keeps uploaded bytes in memory, fails on a script and
can hold a put at a gate; time is a ``FakeClock`` the test moves (then ``uploader.wake()``).
Every state change signals one Condition, so tests wait for conditions with a deadline.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import re
import threading
import time
from typing import Dict, List, Optional

import pytest

from tests.helpers.clock import FakeClock
from xnatfs.uploads import uploader as uploader_module
from xnatfs.uploads.journal import DONE, FAILED, PENDING, UPLOADING, Journal
from xnatfs.uploads.spool import Spool
from xnatfs.uploads.uploader import Uploader, UploadNotVerified
from xnatfs.xnat.errors import XnatError

WAIT = 10.0  # generous deadline for conditions that should hold almost at once


class Transient(Exception):
    retryable = True

    def __init__(
        self,
        msg: str = "POST /data/x -> 503 Service Unavailable",
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class Permanent(Exception):
    retryable = False


class Signal:
    """One Condition for every event in a test; ``wait_for(pred)`` with a deadline."""

    def __init__(self) -> None:
        self.cv = threading.Condition()

    def notify(self) -> None:
        with self.cv:
            self.cv.notify_all()

    def wait_for(self, predicate, timeout: float = WAIT) -> None:
        with self.cv:
            assert self.cv.wait_for(predicate, timeout), "condition not reached in time"


class FakeServer:
    """``put``/``verify`` against an in-memory archive.

    ``failures``: exceptions raised by successive puts (None = succeed). ``gate``: when set to an
    Event, each put waits for it (after counting itself in ``active``).
    """

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.files: Dict[str, bytes] = {}
        self.failures: List[Optional[BaseException]] = []
        self.gate: Optional[threading.Event] = None
        self.lie_once = False  # verify says "no" once even though the bytes are there
        self.lock = threading.Lock()
        self.puts: List[tuple] = []  # (path, data, thread name)
        self.verifies: List[str] = []
        self.active = 0
        self.max_active = 0

    def put(self, entry) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            failure = self.failures.pop(0) if self.failures else None
        self.signal.notify()
        try:
            if self.gate is not None:
                assert self.gate.wait(WAIT), "test forgot to open the gate"
            with open(entry.data_path, "rb") as fh:
                data = fh.read()
            with self.lock:
                self.puts.append((entry.path, data, threading.current_thread().name))
            if failure is not None:
                raise failure
            with self.lock:
                self.files[entry.path] = data
        finally:
            with self.lock:
                self.active -= 1
            self.signal.notify()

    def verify(self, entry, sent=True) -> bool:
        with self.lock:
            self.verifies.append(entry.path)
            if self.lie_once:
                self.lie_once = False
                return False
            data = self.files.get(entry.path)
        return (
            data is not None
            and len(data) == entry.size
            and hashlib.md5(data).hexdigest() == entry.md5
        )


class Rig:
    """A journal, a spool, a fake server and a factory for uploaders, in one tmp dir."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.signal = Signal()
        self.server = FakeServer(self.signal)
        self.clock = FakeClock()
        self.spool = Spool(tmp_path / "spool")
        self.journal = Journal(tmp_path / "journal")
        self.journal.reload()
        self.changes: List = []
        self.uploaders: List[Uploader] = []

    def on_change(self, entry) -> None:
        self.changes.append(entry)
        self.signal.notify()

    def uploader(self, journal: Optional[Journal] = None, **kwargs) -> Uploader:
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("on_change", self.on_change)
        up = Uploader(journal or self.journal, self.server.put, self.server.verify, **kwargs)
        self.uploaders.append(up)
        return up

    def add(self, data: bytes, path: str = "/P/resources/R/files/x.nii", journal=None):
        f = self.spool.create()
        f.write(0, data)
        return (journal or self.journal).add(f, {"kind": "file", "relpath": path}, path)

    def states(self, path: str) -> List[str]:
        return [c.state for c in self.changes if c.path == path]

    def close(self) -> None:
        if self.server.gate is not None:
            self.server.gate.set()
        for up in self.uploaders:
            up.close(self.clock() + WAIT)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def upload_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("xnatfs-upload")]


# ---------------------------------------------------------------------------- success
def test_success_removes_the_entry_only_after_verify(rig):
    up = rig.uploader()
    assert upload_threads() == []  # the constructor starts nothing
    up.start()
    assert sorted(t.name for t in upload_threads()) == ["xnatfs-upload-0", "xnatfs-upload-1"]
    rig.server.lie_once = True  # put succeeds, but the server does not show it yet
    entry = rig.add(b"nifti bytes")
    up.submit(entry)
    rig.signal.wait_for(lambda: rig.states(entry.path) == [PENDING])
    # not confirmed: the bytes are still in the journal, as a pending retry
    kept = rig.journal.get(entry.id)
    assert kept is not None and kept.tries == 1 and "does not show" in kept.last_error
    with open(kept.data_path, "rb") as fh:
        assert fh.read() == b"nifti bytes"
    [st] = up.status()
    assert st["state"] == PENDING and 0 < st["next_attempt_in"] <= 1.0
    rig.clock.advance(1.0)
    up.wake()
    rig.signal.wait_for(lambda: rig.states(entry.path) == [PENDING, DONE])
    assert rig.server.files[entry.path] == b"nifti bytes"
    assert rig.journal.entries() == [] and up.status() == []
    assert os.listdir(rig.journal.directory) == []
    # the second attempt asked the server first (tries > 0), found the bytes, sent nothing
    assert [p for p, _, _ in rig.server.puts] == [entry.path]
    assert rig.server.verifies == [entry.path, entry.path]


def test_upload_now_returns_after_confirmation(rig):
    up = rig.uploader()  # not started: upload_now runs in the caller's thread anyway
    entry = rig.add(b"abc")
    assert up.upload_now(entry, rig.clock() + WAIT) is None
    assert rig.server.files[entry.path] == b"abc"
    assert rig.server.puts[0][2] == threading.current_thread().name
    assert rig.server.verifies == [entry.path]
    assert rig.journal.get(entry.id) is None
    assert rig.changes[-1].state == DONE and rig.changes[-1].id == entry.id


# ---------------------------------------------------------------------------- failures
def test_retryable_error_backs_off_then_succeeds(rig, caplog):
    rig.server.failures = [Transient(), Transient()]
    up = rig.uploader(base_delay=2.0, max_delay=300)
    up.start()
    entry = rig.add(b"data")
    with caplog.at_level(logging.DEBUG, logger="xnatfs.uploads"):
        up.submit(entry)
        rig.signal.wait_for(lambda: rig.states(entry.path) == [PENDING])
        [st] = up.status()
        assert (st["state"], st["tries"]) == (PENDING, 1)
        assert "503" in st["last_error"]
        assert 1.0 <= st["next_attempt_in"] <= 2.0  # base 2 s, jitter in [d/2, d]
        assert rig.journal.get(entry.id).tries == 1  # persisted
        rig.clock.advance(st["next_attempt_in"] + 0.001)
        up.wake()
        rig.signal.wait_for(lambda: rig.states(entry.path) == [PENDING, PENDING])
        [st] = up.status()
        assert st["tries"] == 2 and 2.0 <= st["next_attempt_in"] <= 4.0
        rig.clock.advance(st["next_attempt_in"] + 0.001)
        up.wake()
        rig.signal.wait_for(lambda: rig.states(entry.path) == [PENDING, PENDING, DONE])
    assert rig.server.files[entry.path] == b"data"
    lines = [
        r
        for r in caplog.records
        if r.getMessage().startswith("upload ") and "retry in" in r.getMessage()
    ]
    assert len(lines) == 2
    assert re.fullmatch(
        r"upload /P/resources/R/files/x\.nii: POST /data/x -> 503 Service "
        r"Unavailable; try 1, retry in \d+\.\ds",
        lines[0].getMessage(),
    )
    assert all(r.levelno == logging.DEBUG for r in lines)


def test_non_retryable_error_marks_failed_and_keeps_the_bytes(rig, caplog):
    rig.server.failures = [Permanent("POST /data/x -> 403 Forbidden")]
    up = rig.uploader()
    up.start()
    entry = rig.add(b"forbidden bytes")
    with caplog.at_level(logging.WARNING, logger="xnatfs.uploads"):
        up.submit(entry)
        rig.signal.wait_for(lambda: rig.states(entry.path) == [FAILED])
    kept = rig.journal.get(entry.id)
    assert kept.state == FAILED and kept.last_error == "POST /data/x -> 403 Forbidden"
    assert rig.journal.pending_for(entry.path) == kept  # still visible in listings
    with open(kept.data_path, "rb") as fh:
        assert fh.read() == b"forbidden bytes"
    assert Journal(rig.journal.directory).reload()[0].state == FAILED  # and after a restart
    [st] = up.status()
    assert st["state"] == FAILED and st["next_attempt_in"] is None
    [line] = [r for r in caplog.records if r.name == "xnatfs.uploads.uploader"]
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(f"upload {entry.path}: POST /data/x -> 403 Forbidden;")
    # an explicit retry (e.g. after fixing permissions) goes through
    up.submit(kept)
    rig.signal.wait_for(lambda: rig.states(entry.path) == [FAILED, PENDING, DONE])
    assert rig.server.files[entry.path] == b"forbidden bytes"
    assert rig.journal.entries() == []


def test_upload_now_failure_reraises_and_leaves_pending(rig):
    error = Transient()
    rig.server.failures = [error]
    up = rig.uploader()
    entry = rig.add(b"close me")
    with pytest.raises(Transient) as info:
        up.upload_now(entry, rig.clock() + WAIT)
    assert info.value is error
    kept = rig.journal.get(entry.id)
    assert (kept.state, kept.tries) == (PENDING, 1)
    [st] = up.status()
    assert st["next_attempt_in"] > 0
    # the background pool takes it from there
    up.start()
    rig.clock.advance(st["next_attempt_in"] + 0.001)
    up.wake()
    rig.signal.wait_for(lambda: rig.states(entry.path)[-1:] == [DONE])
    assert rig.server.files[entry.path] == b"close me"


def test_upload_now_non_retryable_marks_failed(rig):
    rig.server.failures = [Permanent("409 Conflict")]
    up = rig.uploader()
    entry = rig.add(b"dup")
    with pytest.raises(Permanent):
        up.upload_now(entry)
    assert rig.journal.get(entry.id).state == FAILED
    assert up.status()[0]["next_attempt_in"] is None


def test_backoff_is_capped_honours_retry_after_and_raises_log_levels(rig, caplog):
    rig.server.failures = [Transient() for _ in range(7)] + [Transient(retry_after=50.0)]
    up = rig.uploader(base_delay=1.0, max_delay=10.0)
    entry = rig.add(b"x")
    delays = []
    with caplog.at_level(logging.DEBUG, logger="xnatfs.uploads"):
        for _ in range(8):
            with pytest.raises(Transient):
                up.upload_now(entry)
            delays.append(up.status()[0]["next_attempt_in"])
    assert all(0 < d <= 10.0 for d in delays)
    assert 5.0 <= delays[6] <= 10.0  # 2**6 capped at 10, jitter >= half
    assert delays[7] == 10.0  # Retry-After 50 s, capped at max_delay
    levels = [r.levelno for r in caplog.records if "retry in" in r.getMessage()]
    assert levels == [logging.DEBUG] * 2 + [logging.INFO] * 3 + [logging.WARNING] * 3
    tries = [
        int(re.search(r"try (\d+)", r.getMessage()).group(1))
        for r in caplog.records
        if "retry in" in r.getMessage()
    ]
    assert tries == list(range(1, 9))


# ---------------------------------------------------------------------------- resume
def test_resume_after_restart(rig, tmp_path):
    fresh = rig.add(b"never tried", path="/P/resources/R/files/a")
    interrupted = rig.journal.update(
        dataclasses.replace(
            rig.add(b"was uploading", path="/P/resources/R/files/b"), state=UPLOADING, tries=1
        )
    )
    failed = rig.journal.update(
        dataclasses.replace(
            rig.add(b"gave up", path="/P/resources/R/files/c"),
            state=FAILED,
            last_error="PUT http://x/data/projects/P/resources/R/files/c -> 403 Forbidden",
        )
    )
    # the interrupted attempt had in fact reached the server before the crash
    rig.server.files["/P/resources/R/files/b"] = b"was uploading"

    journal = Journal(rig.journal.directory)  # a new process; start() reloads it
    up = rig.uploader(journal=journal)
    up.start()
    rig.signal.wait_for(
        lambda: {c.path for c in rig.changes if c.state == DONE} == {fresh.path, interrupted.path}
    )
    assert rig.server.files[fresh.path] == b"never tried"
    # verified first, not sent again (a second POST without overwrite would be a 409)
    assert [p for p, _, _ in rig.server.puts] == [fresh.path]
    assert [e.id for e in journal.entries()] == [failed.id]  # failed ones wait for a human


# ---------------------------------------------------------------------------- workers
def test_bounded_named_workers(rig):
    rig.server.gate = threading.Event()
    up = rig.uploader(workers=2)
    up.start()
    entries = [rig.add(b"%d" % i, path=f"/P/resources/R/files/f{i}") for i in range(5)]
    for e in entries:
        up.submit(e)
    rig.signal.wait_for(lambda: rig.server.active == 2)
    assert sorted(s["state"] for s in up.status()) == [PENDING] * 3 + [UPLOADING] * 2
    rig.server.gate.set()
    rig.signal.wait_for(lambda: len([c for c in rig.changes if c.state == DONE]) == 5)
    assert rig.server.max_active == 2
    assert {name for _, _, name in rig.server.puts} <= {"xnatfs-upload-0", "xnatfs-upload-1"}
    assert len(rig.server.files) == 5


def test_versions_of_one_path_upload_in_order_and_newest_wins(rig):
    path = "/P/resources/R/files/edited.txt"
    rig.server.gate = threading.Event()
    up = rig.uploader(workers=2)
    up.start()
    v1 = rig.add(b"version 1", path=path)
    up.submit(v1)
    rig.signal.wait_for(lambda: rig.server.active == 1)
    v2 = rig.add(b"version 2", path=path)
    up.submit(v2)  # must not start while v1 is on the wire
    other = rig.add(b"other", path="/P/resources/R/files/other")
    up.submit(other)  # ... while another path may
    rig.signal.wait_for(lambda: rig.server.active == 2)
    rig.server.gate.set()
    rig.signal.wait_for(lambda: len([c for c in rig.changes if c.state == DONE]) == 3)
    assert [d for p, d, _ in rig.server.puts if p == path] == [b"version 1", b"version 2"]
    assert rig.server.files[path] == b"version 2"


def test_confirmed_version_drops_older_waiting_ones(rig):
    path = "/P/resources/R/files/edited.txt"
    rig.server.failures = [Transient()]
    up = rig.uploader()
    v1 = rig.add(b"old", path=path)
    with pytest.raises(Transient):
        up.upload_now(v1)  # v1 now waits out a backoff
    v2 = rig.add(b"new", path=path)
    up.upload_now(v2)
    assert rig.journal.entries() == []  # v1 would overwrite newer bytes: dropped
    up.start()
    rig.clock.advance(1000)
    up.wake()
    assert rig.server.files[path] == b"new"
    assert up.status() == []


def test_on_change_errors_do_not_break_the_uploader(rig, caplog):
    def broken(entry):
        rig.signal.notify()
        raise RuntimeError("tree exploded")

    up = rig.uploader(on_change=broken)
    entry = rig.add(b"x")
    with caplog.at_level(logging.ERROR, logger="xnatfs.uploads"):
        up.upload_now(entry)
    assert rig.server.files[entry.path] == b"x"
    assert any("on_change" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- close
def test_close_stops_idle_workers(rig):
    up = rig.uploader()
    up.start()
    threads = upload_threads()
    assert up.close(rig.clock() + WAIT) == []
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError):
        up.start()


def test_close_with_deadline_abandons_a_stuck_upload_and_logs_pending(rig, caplog):
    rig.server.gate = threading.Event()
    up = rig.uploader(workers=1)
    up.start()
    stuck = rig.add(b"slow", path="/P/resources/R/files/slow")
    waiting = rig.add(b"queued", path="/P/resources/R/files/queued")
    up.submit(stuck)
    rig.signal.wait_for(lambda: rig.server.active == 1)
    up.submit(waiting)
    with caplog.at_level(logging.WARNING, logger="xnatfs.uploads"):
        left = up.close(deadline=rig.clock())  # no time left: do not wait
    assert {s["path"]: s["state"] for s in left} == {stuck.path: UPLOADING, waiting.path: PENDING}
    text = caplog.text
    assert "still running at shutdown" in text
    assert f"upload {stuck.path}: still uploading at shutdown" in text
    assert f"upload {waiting.path}: still pending at shutdown" in text
    # let the abandoned attempt end; the queued entry was not started after close()
    threads = upload_threads()
    rig.server.gate.set()
    for t in threads:
        t.join(WAIT)
    assert [p for p, _, _ in rig.server.puts] == [stuck.path]
    # its PUT landed, but an abandoned attempt writes nothing to the journal any more (the
    # journal may be another mount's by then): its entry stays, as after a crash
    assert sorted(e.path for e in rig.journal.entries()) == sorted([stuck.path, waiting.path])
    # and the next mount resumes the queued one, and finds the other on XNAT without a PUT
    later = rig.uploader(journal=Journal(rig.journal.directory))
    later.start()
    rig.signal.wait_for(lambda: waiting.path in rig.server.files)
    rig.signal.wait_for(lambda: later.status() == [])
    assert [p for p, _, _ in rig.server.puts] == [stuck.path, waiting.path]


def test_close_waits_for_a_hung_attempt_no_longer_than_the_shutdown_bound(rig, monkeypatch):
    """Unmount gave a running attempt 10 s (the deadline tree/writes.py passes); one that a
    hung server holds held the unmount that long.  Now ``SHUTDOWN_WAIT`` at most, and the
    abandoned attempt, failing later, writes nothing: its entry stays as it was added."""
    monkeypatch.setattr(uploader_module, "SHUTDOWN_WAIT", 0.3, raising=False)
    rig.server.gate = threading.Event()
    rig.server.failures = [Transient("PUT /data/x -> timed out")]
    up = rig.uploader(workers=1)
    up.start()
    entry = rig.add(b"held by a hung server", path="/P/resources/R/files/hung")
    up.submit(entry)
    rig.signal.wait_for(lambda: rig.server.active == 1)
    t = time.monotonic()
    left = up.close(deadline=rig.clock() + 10)
    took = time.monotonic() - t
    assert 0.3 <= took < 3.0, took
    assert [s["path"] for s in left] == [entry.path]
    threads = upload_threads()
    changes = len(rig.changes)
    rig.server.gate.set()  # the attempt ends, failing
    for thread in threads:
        thread.join(WAIT)
    kept = Journal(rig.journal.directory)
    kept.reload()
    [on_disk] = kept.entries()
    assert (on_disk.id, on_disk.tries, on_disk.last_error) == (entry.id, 0, "")
    assert len(rig.changes) == changes  # nor told the tree (being closed) anything


def running_attempt(rig):
    """(uploader, entry) with the entry's attempt running in a worker, held at the server's
    gate until the test opens it."""
    rig.server.gate = threading.Event()
    up = rig.uploader(workers=1)
    up.start()
    entry = rig.add(b"busy")
    up.submit(entry)
    rig.signal.wait_for(lambda: rig.server.active == 1)
    return up, entry


def test_upload_now_waits_for_a_running_attempt_until_its_deadline(rig):
    up, entry = running_attempt(rig)
    with pytest.raises(TimeoutError) as info:
        up.upload_now(entry, deadline=rig.clock())
    assert info.value.errno == errno.ETIMEDOUT
    rig.server.gate.set()
    up.upload_now(entry, deadline=rig.clock() + WAIT)  # waits; the worker confirmed it
    assert rig.journal.get(entry.id) is None
    assert len(rig.server.puts) == 1


def test_held_waits_for_a_running_attempt_and_says_when_it_confirmed(rig):
    """A rename holds its entry (Uploader.held): a running attempt is waited for (until the
    deadline), and None says it confirmed the entry under the name it had."""
    up, entry = running_attempt(rig)
    with pytest.raises(TimeoutError) as info:
        with up.held(entry, deadline=rig.clock()):
            pass
    assert info.value.errno == errno.ETIMEDOUT
    rig.server.gate.set()
    with up.held(entry, deadline=rig.clock() + WAIT) as current:
        assert current is None
    assert rig.server.files == {entry.path: b"busy"}


def test_held_entry_changed_in_the_block_is_what_its_queued_retry_sends(rig):
    """A retry queued before the block was a copy of the entry as it was: the block's change
    (a rename's new path) would have been sent under the old one, and written back over the
    journal's record by the attempt."""
    rig.server.failures = [Transient()]
    up = rig.uploader(workers=1)
    up.start()
    entry = rig.add(b"log", path="/P/resources/R/files/app.log")
    up.submit(entry)
    rig.signal.wait_for(lambda: rig.states(entry.path) == [PENDING])  # failed once, queued
    with up.held(entry, deadline=rig.clock() + WAIT) as current:
        assert current is not None
        renamed = "/P/resources/R/files/app.log.1"
        rig.journal.update(
            dataclasses.replace(current, path=renamed, target={"kind": "file", "relpath": renamed})
        )
        rig.clock.advance(10.0)
        up.wake()  # the retry is due, but no attempt starts inside the block
        assert rig.server.active == 0 and len(rig.server.puts) == 1
    rig.signal.wait_for(lambda: rig.states(renamed) == [DONE])
    assert rig.server.files == {renamed: b"log"}
    assert rig.journal.entries() == []


def test_not_verified_error_is_retryable():
    from xnatfs.uploads.journal import Entry

    e = Entry(id="1", target={}, path="/p", size=3, md5="abc", created=0.0)
    err = UploadNotVerified(e)
    assert err.retryable is True and "3 bytes" in str(err)


def test_entry_added_without_digest_is_hashed_beside_the_upload(rig):
    up = rig.uploader()
    data = os.urandom(3 << 20)  # a few chunks of the digest thread
    f = rig.spool.create()
    f.write(0, data)
    entry = rig.journal.add(f, {"kind": "file", "relpath": "big"}, "/P/big", digest=False)
    assert entry.md5 == ""
    up.upload_now(entry, rig.clock() + WAIT)
    assert rig.server.files["/P/big"] == data  # verify compared the MD5 it computed
    assert rig.journal.entries() == []
    assert rig.states("/P/big") == [DONE]


# ---------------------------------------------------------------------------- fd ownership
def _fd_of(path: str) -> int:
    """The descriptor number this process has open on ``path`` (the digest's)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == path:
                return int(name)
        except OSError:
            continue
    raise AssertionError(f"no fd open on {path}")


def _occupy(fd_number: int, path: str) -> None:
    """Open ``path`` as descriptor ``fd_number`` -- what the kernel does for the next open()
    of any thread once that number is free (made deterministic with dup2)."""
    fd = os.open(path, os.O_RDONLY)
    if fd != fd_number:
        os.dup2(fd, fd_number)
        os.close(fd)


def test_digest_result_twice_leaves_a_reused_fd_alone(rig, tmp_path):
    """Issue 18, critical: the digest's fd is closed once; a second ``result()`` neither reads
    nor closes the number that someone else opened meanwhile."""
    from xnatfs.uploads.uploader import _Digest

    data = os.urandom(3 << 20)
    f = rig.spool.create()
    f.write(0, data)
    entry = rig.journal.add(f, {"kind": "file", "relpath": "d"}, "/P/d", digest=False)
    other = tmp_path / "someone-elses-file"
    other.write_bytes(b"another thread's bytes" * 1000)
    digest = _Digest(rig.journal, entry)
    number = _fd_of(entry.data_path)
    first = digest.result()
    assert first.md5 == hashlib.md5(data).hexdigest()
    _occupy(number, str(other))
    try:
        again = digest.result()  # as result_or() did after a verify that raised
        assert again.md5 == first.md5
        os.fstat(number)  # EBADF on the old code: the second result() closed it
        assert os.pread(number, 1 << 20, 0) == other.read_bytes()
        digest.close()  # the owner's close is idempotent too
        os.fstat(number)
    finally:
        os.close(number)


def test_verify_raising_after_put_keeps_other_fds_intact_and_digest_right(rig, tmp_path):
    """The path of the bug: put, result() closes the digest fd, verify opens something (it
    gets that number) and raises a 500; the upload must not read or close that descriptor,
    must store the right MD5, and must re-check later instead of failing or sending again."""
    from xnatfs.xnat.errors import error_for_status

    data = os.urandom((2 << 20) + 123)
    f = rig.spool.create()
    f.write(0, data)
    entry = rig.journal.add(f, {"kind": "file", "relpath": "v"}, "/P/v", digest=False)
    other = tmp_path / "a-socket-or-cache-file"
    other.write_bytes(b"GET /data/experiments/E/files/r051.bin HTTP/1.1\r\nHost: x\r\n" * 50)
    seen: Dict[str, int] = {}
    real_put, real_verify = rig.server.put, rig.server.verify

    def put(e):
        seen["fd"] = _fd_of(e.data_path)  # the digest's fd, open while the body is sent
        real_put(e)

    def verify(e, sent):
        if "opened" not in seen:
            _occupy(seen["fd"], str(other))
            seen["opened"] = seen["fd"]
            raise error_for_status("GET", "http://x/data/.../files", 500, "boom")
        return real_verify(e, sent)

    up = Uploader(rig.journal, put, verify, clock=rig.clock, on_change=rig.on_change)
    rig.uploaders.append(up)
    try:
        with pytest.raises(Exception, match="500"):
            up.upload_now(entry, rig.clock() + WAIT)
        number = seen["opened"]
        os.fstat(number)  # still open
        assert os.pread(number, 1 << 20, 0) == other.read_bytes()  # and intact
        kept = rig.journal.get(entry.id)
        assert kept is not None and kept.state == PENDING  # re-checked later, not failed
        assert kept.md5 == hashlib.md5(data).hexdigest()
        with open(kept.data_path, "rb") as fh:
            assert fh.read() == data
        up.start()
        rig.clock.advance(400)
        up.wake()
        rig.signal.wait_for(lambda: rig.states("/P/v")[-1:] == [DONE])
        assert [p for p, _, _ in rig.server.puts] == ["/P/v"]  # checked, not sent twice
        assert rig.server.files["/P/v"] == data
    finally:
        if "opened" in seen:
            os.close(seen["opened"])


# ---------------------------------------------------------------------------- retry table
def _xe(status, cls_name=None, **kw):
    from xnatfs.xnat import errors as xe
    from xnatfs.xnat.errors import error_for_status

    if cls_name is None:
        return error_for_status("PUT", "http://x/data/p/files/f", status, "msg", **kw)
    return getattr(xe, cls_name)("PUT", "http://x/data/p/files/f", status, "msg", **kw)


@pytest.mark.parametrize(
    "make, retry",
    [
        (lambda: _xe(401), False),  # after the client's re-login
        (lambda: _xe(403), False),
        (lambda: _xe(404), False),  # the parent is gone
        (lambda: _xe(409), False),
        (lambda: _xe(None, "Conflict"), False),  # a 200 {"duplicates": ...}
        (lambda: _xe(413), False),
        (lambda: _xe(400), False),  # a bad name
        (lambda: _xe(422), False),
        (lambda: _xe(None, "CredentialsError"), False),
        (lambda: OSError(errno.EINVAL, "unknown upload target"), False),
        (lambda: OSError(errno.ENOENT, "data file gone"), False),
        (lambda: _xe(500), True),
        (lambda: _xe(502), True),
        (lambda: _xe(503), True),
        (lambda: _xe(504), True),
        (lambda: _xe(429), True),
        (lambda: _xe(None, "XnatTimeout"), True),
        (lambda: _xe(None, "Unreachable"), True),  # refused, reset, a mid-body drop
        (lambda: _xe(200, "NotXnatResponse"), True),  # a login page after the re-login
        (lambda: OSError(errno.ESPIPE, "Illegal seek"), True),
        (lambda: OSError(errno.EIO, "I/O error"), True),
        (lambda: OSError(errno.EPIPE, "Broken pipe"), True),
        (lambda: UploadNotVerified(_entry()), True),
        (lambda: Permanent("declared"), False),
        (lambda: RuntimeError("something new"), True),
    ],
)
def test_retry_table_rows(make, retry):
    from xnatfs.uploads.retry import classify

    assert classify(make()).retry is retry


@pytest.mark.parametrize(
    "text, retry",
    [
        (
            "PUT http://x/data/p/resources/R/files/f?overwrite=false -> 500 Internal Server Error",
            True,
        ),
        ("PUT http://x/data/p/resources/R/files/f -> 503 Service Unavailable", True),
        ("GET http://x/data/p/resources/R/files -> 500 Internal Server Error: boom", True),
        ("PUT http://x/data/p/files/f -> failed: HTML page where XNAT data was expected", True),
        ("PUT http://x/data/p/files/f -> unreachable: Connection aborted", True),
        ("PUT http://x/data/p/files/f -> timed out: no data for 60s", True),
        ("[Errno 29] Illegal seek", True),
        ("server does not show the uploaded file (3 bytes, md5 abc)", True),
        ("PUT http://x/data/p/files/f -> 403 Forbidden", False),
        ("PUT http://x/data/p/files/f -> 404 Not Found: no such resource", False),
        ("PUT http://x/data/p/files/f -> 409 Conflict", False),
        ("PUT http://x/data/p/files/f -> 200 OK: file exists (duplicates: f)", False),
        ("PUT http://x/data/p/files/f -> 413 Request Entity Too Large", False),
        ("[Errno 22] unknown upload target {}", False),
        ("journal sidecar missing or unreadable: target unknown; bytes kept at /x", False),
    ],
)
def test_retry_table_on_recorded_text(text, retry):
    from xnatfs.uploads.retry import classify_text

    assert classify_text(text).retry is retry


def _entry():
    from xnatfs.uploads.journal import Entry

    return Entry(id="1", target={}, path="/p", size=3, md5="abc", created=0.0)


def test_http_500_on_put_is_retried_until_the_server_has_it(rig):
    rig.server.failures = [_xe(500), _xe(500), _xe(None, "Unreachable")]
    up = rig.uploader()
    entry = rig.add(b"five hundred")
    for _ in range(3):
        with pytest.raises(XnatError):
            up.upload_now(entry, rig.clock() + WAIT)
        assert rig.journal.get(entry.id).state == PENDING
    up.start()
    rig.clock.advance(400)
    up.wake()
    rig.signal.wait_for(lambda: rig.states(entry.path)[-1:] == [DONE])
    assert rig.server.files[entry.path] == b"five hundred"
    assert rig.journal.entries() == []


def test_permanent_failure_is_kept_failed(rig):
    rig.server.failures = [_xe(403)]
    up = rig.uploader()
    entry = rig.add(b"forbidden")
    with pytest.raises(Exception, match="403"):
        up.upload_now(entry, rig.clock() + WAIT)
    kept = rig.journal.get(entry.id)
    assert kept.state == FAILED and "403" in kept.last_error


def test_old_failed_entries_with_transient_errors_are_requeued_on_start(rig):
    """A journal written by an older version, which marked 500s/login pages failed."""
    texts = {
        "a": "PUT http://x/data/p/resources/R/files/a -> 500 Internal Server Error",
        "b": "PUT http://x/data/p/resources/R/files/b -> failed: HTML page where XNAT data "
        "was expected",
        "c": "[Errno 29] Illegal seek",
        "d": "PUT http://x/data/p/resources/R/files/d -> 403 Forbidden",
    }
    for name, text in texts.items():
        rig.journal.update(
            dataclasses.replace(
                rig.add(name.encode() * 10, path=f"/P/resources/R/files/{name}"),
                state=FAILED,
                tries=3,
                last_error=text,
            )
        )
    journal = Journal(rig.journal.directory)
    up = rig.uploader(journal=journal)
    up.start()
    rig.signal.wait_for(
        lambda: (
            {c.path for c in rig.changes if c.state == DONE}
            == {f"/P/resources/R/files/{n}" for n in "abc"}
        )
    )
    [left] = journal.entries()
    assert left.path == "/P/resources/R/files/d" and left.state == FAILED
    # the re-queued ones were shown pending again before their attempt
    for name in "abc":
        assert rig.states(f"/P/resources/R/files/{name}")[:1] == [PENDING]


def test_retry_table_names_exist_in_the_client_errors():
    """uploads/retry.py matches the client's error classes by name (layering): each name must
    be a real XnatError subclass, so a rename cannot silently turn a row off."""
    from xnatfs.uploads.retry import ERROR_CLASSES
    from xnatfs.xnat import errors as xe

    for name in ERROR_CLASSES:
        assert issubclass(getattr(xe, name), xe.XnatError), name


def test_local_read_racing_a_commit_reads_the_journal_copy_not_ebadf(tmp_path):
    """tree/writes.py: a read of a file being written whose spool another handle's close()
    has just committed (closed, bytes moved to the journal) answers the bytes, not EBADF."""
    from xnatfs.tree.writes import LocalFile, Writer

    writer = Writer(tree=None, client=None, directory=str(tmp_path))
    spool = writer.spool.create()
    spool.write(0, b"committed bytes")
    lf = LocalFile(("P", "x"), {"kind": "file"}, spool=spool, handles=2)
    entry = writer.journal.add(spool, lf.target, "/P/x", digest=False)  # closes the spool

    class StillLooksOpen:
        """The spool as the reader saw it an instant before the commit closed it."""

        closed = False
        read = staticmethod(spool.read)

    lf.spool = StillLooksOpen()  # type: ignore[assignment]
    lf.entry = entry
    assert writer._read(lf, 0, 100) == b"committed bytes"
    assert writer._read(lf, 10, 100) == b"bytes"


def test_an_error_while_dropping_a_confirmed_entry_leaves_its_path_unblocked(rig, monkeypatch):
    """``_succeeded`` keeps the confirmed entry's path blocked while it drops it and its older
    versions from the journal; an unexpected error there left it blocked for the mount's
    life: every later version of that name waited for an attempt that had ended."""
    up = rig.uploader()
    first = rig.add(b"one")
    remove = rig.journal.remove
    failures = [RuntimeError("index broken")]

    def remove_once_broken(entry):
        if failures:
            raise failures.pop()
        remove(entry)

    monkeypatch.setattr(rig.journal, "remove", remove_once_broken)
    with pytest.raises(RuntimeError):
        up.upload_now(first, rig.clock() + WAIT)
    second = rig.add(b"two")
    up.upload_now(second, deadline=rig.clock())  # no wait: nothing runs for the path
    assert rig.server.files[second.path] == b"two"
