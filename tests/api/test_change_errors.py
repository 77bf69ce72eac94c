"""Every change the user asks for that XNAT fails has its errno and its own ERROR line.

The rule (docs/RELIABILITY.md, "Errors"): a call that changes XNAT or the upload journal
(mkdir, rmdir, rm, mv, a write's open/close/fsync, truncate) and fails because of XNAT (an
error answer, a timeout, a dropped connection, or the open circuit breaker holding requests
back) answers its errno and logs one ERROR line naming the path, the URL and why.  Reads the
breaker fails stay at DEBUG: the breaker's own WARNING told the outage once, and a line per
``stat`` would flood the log.

Before: the breaker's ``ServerDown`` is marked ``reported``, so ``fs/errmap.log_failure``
logged every call it failed at DEBUG: a mkdir, rmdir, rm or mv failed while XNAT was down
had no line at all (only the close had one, since the ninth stop).  And an XNAT answer whose
errno is an ordinary one (404 -> ENOENT, 409/"duplicates" -> EEXIST) was quiet too: a mv
that XNAT refused because another client had stored the new name meanwhile had no line.

Driven through the FUSE adapter (``fs/ops.py``: the ``_op`` wrapper maps and logs) against
the emulator, with the log captured.
"""

from __future__ import annotations

import errno
import logging
import os
from types import SimpleNamespace
from typing import Any, Callable, List

import pytest
import requests

from tests.conftest import ADMIN
from tests.helpers.waiting import wait_for
from xnatfs.fs.ops import XnatOperations, mfusepy
from xnatfs.xnat.breaker import THRESHOLD, Failure

PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"
SUBJECTS = "/DEMO1/subjects"
README = f"{PROTOCOLS}/README.txt"
PREARCHIVE = "/.prearchive/DEMO1"


def _fi(flags: int) -> Any:
    return SimpleNamespace(flags=flags, fh=0, direct_io=0, keep_cache=0, noflush=0)


def _adapter(rt: Any) -> XnatOperations:
    ops = XnatOperations(rt)
    ops._writers = None  # the caller's uid needs a FUSE request: the owner's anyway
    return ops


def _session(rt: Any) -> str:
    """The demo's prearchive session (SUBJ04_MR1), listed."""
    for stamp in rt.tree.listdir(PREARCHIVE):
        if stamp.is_dir:
            for session in rt.tree.listdir(f"{PREARCHIVE}/{stamp.name}"):
                return f"{PREARCHIVE}/{stamp.name}/{session.name}"
    raise AssertionError("no prearchive session in the demo")


def _seen(rt: Any) -> None:
    """What the user saw before XNAT went down: the listings, README's bytes in the cache,
    an empty subject (``EMPTY``) and the prearchive session."""
    r = requests.put(f"{rt.emu.url}/data/projects/DEMO1/subjects/EMPTY", auth=ADMIN, timeout=30)
    assert r.status_code in (200, 201), r.text
    tree = rt.tree
    for folder in (SUBJECTS, PROTOCOLS, "/DEMO1/resources", f"{SUBJECTS}/EMPTY", "/.prearchive"):
        tree.listdir(folder)
    handle = tree.open(tree.lookup(README), README)
    handle.read(0, 1 << 20)
    handle.close()
    rt.session = _session(rt)


def _mkdir_subject(ops: XnatOperations, rt: Any) -> None:
    ops.mkdir(f"{SUBJECTS}/NEWSUBJ", 0o755)


def _mkdir_resource(ops: XnatOperations, rt: Any) -> None:
    ops.mkdir("/DEMO1/resources/newres", 0o755)


def _rmdir(ops: XnatOperations, rt: Any) -> None:
    ops.rmdir(f"{SUBJECTS}/EMPTY")


def _rmdir_prearchive(ops: XnatOperations, rt: Any) -> None:
    ops.rmdir(rt.session)


def _mv_prearchive(ops: XnatOperations, rt: Any) -> None:
    ops.rename(rt.session, "/.prearchive/DEMO2/" + rt.session.rsplit("/", 1)[1])


def _unlink(ops: XnatOperations, rt: Any) -> None:
    ops.unlink(README)


def _rename(ops: XnatOperations, rt: Any) -> None:
    ops.rename(README, f"{PROTOCOLS}/README2.txt")


def _close(ops: XnatOperations, rt: Any) -> None:
    path, fi = f"{PROTOCOLS}/new.txt", _fi(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    ops.create(path, 0o644, fi)
    ops.write(path, b"written while XNAT is down\n", 0, fi)
    try:
        ops.flush(path, fi)
    finally:
        ops.release(path, fi)


def _truncate(ops: XnatOperations, rt: Any) -> None:
    ops.truncate(README, 3)


def _fsync(ops: XnatOperations, rt: Any) -> None:
    fi = _fi(os.O_WRONLY)
    ops.open(README, fi)
    ops.write(README, b"Z", 0, fi)
    try:
        ops.fsync(README, 0, fi)
    finally:
        ops.release(README, fi)


def _open_to_append(ops: XnatOperations, rt: Any) -> None:
    """An append to a file on XNAT whose bytes are not in the cache: the open copies them."""
    path = f"{PROTOCOLS}/mri/" + next(
        n.name for n in rt.tree.listdir(f"{PROTOCOLS}/mri") if not n.is_dir
    )
    rt.breaker_opens()
    ops.open(path, _fi(os.O_WRONLY | os.O_APPEND))


CHANGES: List[Callable[[XnatOperations, Any], None]] = [
    _mkdir_subject,
    _mkdir_resource,
    _rmdir,
    _rmdir_prearchive,
    _mv_prearchive,
    _unlink,
    _rename,
    _close,
    _truncate,
    _fsync,
    _open_to_append,
]


def _open_breaker(rt: Any) -> None:
    breaker = rt.client._breaker
    for i in range(THRESHOLD):  # connection failures from the server: the breaker opens
        breaker.record(Failure.CONNECTION, f"/data/x{i}", "connection refused")
    assert breaker.is_open


def _errors(caplog: Any) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _fails(call: Callable[[], Any]) -> int:
    with pytest.raises(mfusepy.FuseOSError) as info:
        call()
    return info.value.errno


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_a_change_failed_by_the_open_breaker_has_its_error_line(make_runtime, caplog, change):
    rt = make_runtime(allow_delete=True)
    _seen(rt)
    rt.breaker_opens = lambda: _open_breaker(rt)
    if change is not _open_to_append:
        rt.breaker_opens()
    ops = _adapter(rt)
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        code = _fails(lambda: change(ops, rt))
    assert code == errno.EHOSTDOWN
    errors = _errors(caplog)
    assert len(errors) == 1, caplog.text  # before: none (DEBUG only), but for the close
    assert "http://" in errors[0] and "XNAT down" in errors[0], errors[0]


def test_the_error_lines_name_the_path_and_nothing_is_half_done(make_runtime, caplog):
    """The same, op by op, with what is left after each: nothing made, nothing removed, a
    closed file's bytes in the journal (and the line of each names its path)."""
    rt = make_runtime(allow_delete=True)
    _seen(rt)
    _open_breaker(rt)
    ops = _adapter(rt)
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        for change in (_mkdir_subject, _rmdir, _unlink, _rename, _rmdir_prearchive, _close):
            _fails(lambda change=change: change(ops, rt))
    errors = _errors(caplog)
    for path in (f"{SUBJECTS}/NEWSUBJ", f"{SUBJECTS}/EMPTY", README, rt.session):
        assert sum(f" {path}: " in line for line in errors) == (2 if path == README else 1)
    assert any(f"{PROTOCOLS}/new.txt: " in line for line in errors)
    subjects = {n.name for n in rt.tree.listdir(SUBJECTS)}
    assert "NEWSUBJ" not in subjects and "EMPTY" in subjects  # no phantom, nothing gone
    assert {"README.txt"} <= {n.name for n in rt.tree.listdir(PROTOCOLS)}
    assert "README2.txt" not in {n.name for n in rt.tree.listdir(PROTOCOLS)}
    assert [e.path for e in rt.writer.journal.entries()] == [f"{PROTOCOLS}/new.txt"]


def test_reads_failed_by_the_open_breaker_stay_quiet(make_runtime, caplog):
    """One line per outage for reads (the breaker's WARNING), not one per stat or listing."""
    rt = make_runtime()
    _open_breaker(rt)
    ops = _adapter(rt)
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        for _ in range(3):
            assert _fails(lambda: ops.getattr(f"{SUBJECTS}/SUBJ02/experiments")) in (
                errno.EHOSTDOWN,
                errno.EIO,
            )
    assert _errors(caplog) == []


def _another_client(rt: Any, method: str, name: str, data: bytes = b"") -> None:
    query = "?inbody=true" if method == "PUT" else ""
    r = requests.request(
        method, f"{rt.emu.url}{PROTOCOLS_URI}/{name}{query}", data=data, auth=ADMIN, timeout=30
    )
    assert r.status_code in (200, 201), r.text


def _on_xnat(rt: Any, name: str) -> Any:
    r = requests.get(f"{rt.emu.url}{PROTOCOLS_URI}/{name}", auth=ADMIN, timeout=30)
    return r.content if r.status_code == 200 else r.status_code


def test_a_mv_xnat_refuses_as_a_duplicate_has_its_error_line(make_runtime, caplog):
    """Another client stored the new name after the mount listed the folder: XNAT answers the
    upload with "duplicates" (EEXIST).  Before: EEXIST and no line (EEXIST was quiet)."""
    rt = make_runtime(allow_delete=True)
    _seen(rt)
    _another_client(rt, "PUT", "README2.txt", b"the other client's\n")
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        assert _fails(lambda: _rename(_adapter(rt), rt)) == errno.EEXIST
    errors = _errors(caplog)
    assert len(errors) == 1 and README in errors[0] and "duplicates" in errors[0], errors
    assert "http://" in errors[0]
    assert _on_xnat(rt, "README2.txt") == b"the other client's\n"  # nothing half-done
    assert isinstance(_on_xnat(rt, "README.txt"), bytes)
    assert rt.writer.journal.entries() == []


def test_an_rm_xnat_answers_404_for_has_its_error_line(make_runtime, caplog):
    """Another client removed the file after the mount listed it: XNAT's DELETE answers 404,
    rm ENOENT.  Before: no line (ENOENT was quiet, as for a name that was never there)."""
    rt = make_runtime(allow_delete=True)
    _seen(rt)
    _another_client(rt, "DELETE", "README.txt")
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        assert _fails(lambda: _unlink(_adapter(rt), rt)) == errno.ENOENT
    errors = _errors(caplog)
    assert len(errors) == 1 and "DELETE http://" in errors[0] and "404" in errors[0], errors


def test_a_name_that_is_not_there_stays_quiet(make_runtime, caplog):
    """ENOENT for a name the listing does not have (no XNAT answer): an ordinary answer,
    no line (``rm -f``, shells and editors look for names that are not there)."""
    rt = make_runtime(allow_delete=True)
    ops = _adapter(rt)
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        assert _fails(lambda: ops.unlink(f"{PROTOCOLS}/never-there.txt")) == errno.ENOENT
        assert _fails(lambda: ops.rmdir(f"{SUBJECTS}/NEVER")) == errno.ENOENT
    assert _errors(caplog) == []


def test_a_mv_whose_old_name_another_client_removed_is_done(make_runtime, caplog):
    """The mount had README's bytes; another client removed it before the mv: the bytes are
    uploaded under the new name and the old one is gone, which is the move.  Before, the mv
    answered ENOENT (mv: "cannot move") with the file moved, and no line said so."""
    rt = make_runtime(allow_delete=True)
    _seen(rt)
    data = _on_xnat(rt, "README.txt")
    _another_client(rt, "DELETE", "README.txt")
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        _rename(_adapter(rt), rt)  # before: FuseOSError(ENOENT)
    assert _on_xnat(rt, "README2.txt") == data
    assert _on_xnat(rt, "README.txt") == 404
    assert "the old was gone already" in caplog.text
    assert _errors(caplog) == []
    rt.tree.invalidate(PROTOCOLS)
    names = {n.name for n in rt.tree.listdir(PROTOCOLS)}
    assert "README2.txt" in names and "README.txt" not in names


def test_a_failed_mv_does_not_say_the_copy_is_kept(make_runtime, caplog):
    """XNAT answers 500 to the upload under the new name: the mv fails (EIO, one ERROR line),
    the copy is dropped and the old name stays.  Before, the log also said "upload
    .../README2.txt: kept in the journal, retried in the background until XNAT has it": a
    file that never came."""
    rt = make_runtime(allow_delete=True)
    _seen(rt)
    rt.emu.faults.error_status = 500
    rt.emu.faults.error_rate = 1.0
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        assert _fails(lambda: _rename(_adapter(rt), rt)) == errno.EIO
    rt.emu.faults.error_rate = 0.0
    assert "kept in the journal" not in caplog.text  # before: said so
    assert f"mv {README} {PROTOCOLS}/README2.txt: not moved" in caplog.text
    assert len(_errors(caplog)) == 1
    assert rt.writer.journal.entries() == []
    assert _on_xnat(rt, "README2.txt") == 404 and isinstance(_on_xnat(rt, "README.txt"), bytes)


@pytest.mark.parametrize("change", [_mkdir_subject, _unlink], ids=lambda f: f.__name__.strip("_"))
def test_a_change_that_timed_out_is_looked_up_again(make_runtime, change):
    """XNAT takes longer than ``--read-timeout`` but does the change: the call answers
    ETIMEDOUT (its outcome unknown), and the next look at the folder asks XNAT.  Before, the
    folder's listing stayed as it was for the listing TTL (60 s): the new subject missing
    (a mkdir that said it failed, and then did not show what XNAT made), the removed file
    still shown."""
    rt = make_runtime(allow_delete=True, read_timeout=1.0)
    _seen(rt)
    rt.emu.faults.latency_ms = 2500
    try:
        assert _fails(lambda: change(_adapter(rt), rt)) == errno.ETIMEDOUT
    finally:
        rt.emu.faults.latency_ms = 0
    rt.emu.emu.wait_idle()  # XNAT finishes the change it was given
    if change is _mkdir_subject:
        # the first look may show the listing seen before while its refresh runs (stale_grace)
        wait_for(
            lambda: "NEWSUBJ" in {n.name for n in rt.tree.listdir(SUBJECTS)},
            10,
            what="the subject XNAT made to be listed",  # before: missing for the 60 s TTL
        )
    else:
        assert _on_xnat(rt, "README.txt") == 404
        wait_for(
            lambda: "README.txt" not in {n.name for n in rt.tree.listdir(PROTOCOLS)},
            10,
            what="the file XNAT removed to go from the listing",  # before: listed for 60 s
        )


def test_a_mv_that_timed_out_says_xnat_may_have_the_copy(make_runtime, caplog):
    """The upload under the new name gets no answer in time, but XNAT stores it: mv answers
    ETIMEDOUT, the old name stays, and the log says XNAT may have the copy under the new name
    too; the folder is looked up again, so the mount shows what XNAT has (both names, a
    duplicate, never a loss).  Before, the log said "not moved (the old name stays)" only (and
    before that, "kept in the journal") and the new name stayed unlisted for the 60 s TTL."""
    rt = make_runtime(allow_delete=True, read_timeout=1.0)
    _seen(rt)
    rt.emu.faults.latency_ms = 2500
    try:
        with caplog.at_level(logging.DEBUG, logger="xnatfs"):
            assert _fails(lambda: _rename(_adapter(rt), rt)) == errno.ETIMEDOUT
    finally:
        rt.emu.faults.latency_ms = 0
    rt.emu.emu.wait_idle()
    assert "XNAT may have the copy under the new name too" in caplog.text
    assert len(_errors(caplog)) == 1
    assert isinstance(_on_xnat(rt, "README.txt"), bytes)
    assert rt.writer.journal.entries() == []
    assert _on_xnat(rt, "README2.txt") == _on_xnat(rt, "README.txt")  # XNAT stored it
    wait_for(
        lambda: "README2.txt" in {n.name for n in rt.tree.listdir(PROTOCOLS)},
        10,
        what="the copy XNAT stored to be listed",  # before: unlisted for the 60 s TTL
    )


def test_a_prearchive_move_not_finished_in_time_is_looked_up_again(
    make_runtime, monkeypatch, caplog
):
    """XNAT accepts a prearchive move that takes longer than the call's deadline: mv answers
    ETIMEDOUT ("it may still finish", README) with one ERROR line, and once it has finished
    the old folder no longer lists the session.  Before, it did for the listing TTL (60 s)."""
    rt = make_runtime(fs_timeout=3.0)
    _seen(rt)
    stamp_folder = rt.session.rsplit("/", 1)[0]
    name = rt.session.rsplit("/", 1)[1]
    rt.tree.listdir(stamp_folder)
    monkeypatch.setenv("XNATFS_EMULATOR_PREARC_DELAY", "5")  # XNAT's queue, in the emulator
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        assert _fails(lambda: _mv_prearchive(_adapter(rt), rt)) == errno.ETIMEDOUT
    errors = _errors(caplog)
    assert len(errors) == 1 and rt.session in errors[0] and "may still finish" in errors[0]

    def moved() -> bool:
        r = requests.get(f"{rt.emu.url}/data/prearchive/projects/DEMO2", auth=ADMIN, timeout=30)
        return r.status_code == 200 and name in r.text

    wait_for(moved, 30, what="XNAT to finish the move")
    wait_for(
        lambda: name not in {n.name for n in rt.tree.listdir(stamp_folder)},
        10,
        what="the moved session to go from its old folder",  # before: listed for 60 s
    )
