"""fsync(2) and close(2) after an upload failed (README: "close and fsync return only after
XNAT accepted the bytes").  An fsync that answered EIO leaves the bytes pending in the journal;
a program retrying its fsync, ``sync FILE``, or the close after it, answered 0 with nothing
new to commit, while XNAT did not have the bytes (the "fsyncgate" pattern).  Now such a call
tries the pending upload at once (``UploadPath._unconfirmed``) and answers its errno while it
fails; a version refused for good is not sent again: its refusal is answered again.
Through the runtime API, like ``test_lost_updates.py``."""

from __future__ import annotations

import errno

import requests

from tests.api.helpers import (
    PROTOCOLS,
    PROTOCOLS_URI,
    another_client_stores,
    answer,
    faults,
    on_server,
)
from tests.conftest import ADMIN
from tests.helpers.waiting import wait_for
from tests.mount.helpers import api


def test_a_second_fsync_while_xnat_is_down_tries_again_and_answers_eio(make_runtime):
    """fsync answers EIO (XNAT answers 503: the bytes are pending in the journal); the
    program calls fsync again while XNAT still answers 503: that one sends the upload again
    and answers EIO too.  Before: 0, without a request."""
    rt = make_runtime()
    path = f"{PROTOCOLS}/results.csv"
    with faults(rt.emu, error_status=503, error_rate=1.0, fault_methods="PUT"):
        handle = rt.writer.create(path)
        handle.write(0, b"a,b\n1,2\n")
        assert answer(handle.fsync) == errno.EIO
        mark = rt.emu.mark()
        assert answer(handle.fsync) == errno.EIO
        assert "PUT" in [m for m, _ in api(rt.emu.since(mark))]
        assert answer(handle.flush) == errno.EIO  # close(): the same
        handle.close()
    assert on_server(rt, "results.csv") == 404
    (pending,) = rt.writer.status()
    assert pending["state"] == "pending"  # still retried in the background


def test_an_fsync_once_xnat_answers_again_uploads_the_pending_bytes(make_runtime):
    """fsync EIO while XNAT answers 503, then XNAT answers again: the next fsync returns
    once XNAT has the bytes, not before the background retry's backoff ends.  Before: it
    returned 0 at once, with the bytes still only in the journal."""
    rt = make_runtime()
    path = f"{PROTOCOLS}/later.csv"
    with faults(rt.emu, error_status=503, error_rate=1.0, fault_methods="PUT"):
        handle = rt.writer.create(path)
        handle.write(0, b"x,y\n3,4\n")
        assert answer(handle.fsync) == errno.EIO
    handle.fsync()
    assert on_server(rt, "later.csv") == b"x,y\n3,4\n"  # right when fsync returned
    assert rt.writer.status() == []
    handle.close()


def test_a_version_refused_for_good_is_answered_again_without_a_request(make_runtime):
    """--allow-delete; a change in place of a file another XNAT client stored meanwhile:
    the close answers EEXIST (a lost update refused, the bytes kept as failed).  A later
    fsync or close of that file answers the same EEXIST again, with no request: a refusal
    for good is not retried (README: copy out, rm, copy in).  Before: 0."""
    rt = make_runtime(allow_delete=True)
    path = f"{PROTOCOLS}/README.txt"
    handle = rt.writer.open_write(rt.tree.lookup(path), path, truncate=False)
    handle.write(0, b"MINE")
    another_client_stores(rt)
    assert answer(handle.flush) == errno.EEXIST
    mark = rt.emu.mark()
    assert answer(handle.fsync) == errno.EEXIST
    assert answer(handle.flush) == errno.EEXIST
    assert api(rt.emu.since(mark)) == []
    handle.close()
    (kept,) = rt.writer.status()
    assert kept["state"] == "failed"


def test_a_version_refused_in_a_background_retry_answers_eio_with_its_error(make_runtime):
    """A new file's close answers EIO (XNAT answers 503), another XNAT client stores that
    name meanwhile, and the background retry is refused for good (XNAT's "duplicates":
    failed).  A later fsync answers EIO, naming the recorded refusal, without a request
    (the errno of a refusal no close() got is not known).  Before: 0."""
    rt = make_runtime()
    name = "theirs-too.txt"
    path = f"{PROTOCOLS}/{name}"
    with faults(rt.emu, error_status=503, error_rate=1.0, fault_methods="PUT"):
        handle = rt.writer.create(path)
        handle.write(0, b"mine\n")
        assert answer(handle.fsync) == errno.EIO
    r = requests.put(
        f"{rt.emu.url}{PROTOCOLS_URI}/{name}?inbody=true",
        data=b"the other client's file\n",
        auth=ADMIN,
        timeout=30,
    )
    assert r.status_code in (200, 201)
    rt.writer.uploader.retry_soon()
    wait_for(
        lambda: [s["state"] for s in rt.writer.status()] == ["failed"],
        timeout=30,
        what="the background retry refused",
    )
    mark = rt.emu.mark()
    try:
        handle.fsync()
        raise AssertionError("fsync answered 0")
    except OSError as exc:
        assert exc.errno == errno.EIO and "kept as failed" in str(exc), exc
    assert api(rt.emu.since(mark)) == []
    handle.close()
    assert on_server(rt, name) == b"the other client's file\n"


def test_a_truncate_by_name_that_cannot_upload_says_so_at_error(make_runtime, caplog):
    """``truncate -s N PATH`` while a program holds the file open (no flush of its own: the
    truncate's handle uploads at its release) and XNAT answers 503: the bytes stay pending in
    the journal, and one ERROR line names the path.  Before: DEBUG only (the release's
    failure was taken for one a flush had already reported)."""
    rt = make_runtime()
    path = f"{PROTOCOLS}/cut.csv"
    held = rt.writer.create(path)
    held.write(0, b"a,b\n1,2\n3,4\n")
    held.fsync()
    with faults(rt.emu, error_status=503, error_rate=1.0, fault_methods="PUT"):
        with caplog.at_level("DEBUG", logger="xnatfs"):
            rt.writer.truncate(path, 8)
    errors = [r for r in caplog.records if r.levelname == "ERROR" and path in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records if path in r.getMessage()]
    held.close()
    wait_for(lambda: on_server(rt, "cut.csv") == b"a,b\n1,2\n", what="the cut file on XNAT")
