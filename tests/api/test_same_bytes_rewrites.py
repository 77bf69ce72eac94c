"""Writing back the bytes a file on XNAT had when it was opened (README, "Rewriting the same
bytes is a no-op").  rsync, cp, tar and make rewrite unchanged files: that uploads nothing
and needs no --allow-delete.  The close used to compare the bytes with the file as it was at
open (``LocalFile.replaces``) and take that for XNAT's: after a version of this mount's was
confirmed (fsync) or while one was pending (a close that failed), or after another XNAT
client stored other bytes, close() answered 0 "the same bytes as on XNAT: nothing uploaded"
and XNAT kept, or later got, bytes the user had replaced.  Now the close asks XNAT (one
listing, ``UploadPath._held_by_xnat``).  Through the runtime API, like
``test_lost_updates.py``."""

from __future__ import annotations

import errno

import pytest

from tests.api.helpers import (
    PROTOCOLS,
    another_client_stores,
    answer,
    faults,
    on_server,
)
from tests.helpers.waiting import wait_for
from tests.mount.helpers import api

README = f"{PROTOCOLS}/README.txt"


def shown(rt, path):
    """The bytes the mount shows at ``path`` (through a fresh read handle)."""
    rt.tree.invalidate(path.rsplit("/", 1)[0])
    node = rt.tree.lookup(path)
    if node.local_file is None:
        handle = rt.tree.open(node, path)
    else:
        handle = rt.writer.local_read_handle(node)
    try:
        return handle.read(0, 1 << 20)
    finally:
        handle.close()


def test_the_original_bytes_written_back_after_an_fsynced_change_reach_xnat(make_runtime):
    """--allow-delete; a file on XNAT opened read-write, changed, fsync'ed (XNAT confirms the
    change), then its original bytes written back and closed.  Before: close() answered 0,
    uploaded nothing ("the same bytes as on XNAT") and XNAT kept the changed bytes."""
    rt = make_runtime(allow_delete=True)
    original = on_server(rt)
    assert isinstance(original, bytes) and original
    handle = rt.writer.open_write(rt.tree.lookup(README), README, truncate=False)
    changed = b"X" * len(original)
    handle.write(0, changed)
    handle.fsync()
    assert on_server(rt) == changed
    handle.write(0, original)  # the user puts the original text back
    handle.flush()
    handle.close()
    assert on_server(rt) == original
    assert rt.writer.status() == []


def test_the_original_bytes_copied_back_over_a_pending_change_win(make_runtime):
    """--allow-delete; `cp new f` while XNAT answers 503 (EIO, the change pending in the
    journal), then `cp orig f` (the user undoes it): close() answers 0, since XNAT holds
    those bytes, and the undone change leaves the journal.  Before: the pending change
    stayed queued and landed once XNAT answered: XNAT and the mount ended with the bytes
    the user had replaced."""
    rt = make_runtime(allow_delete=True)
    original = on_server(rt)
    assert isinstance(original, bytes) and original
    with faults(rt.emu, error_status=503, error_rate=1.0, fault_methods="PUT"):
        handle = rt.writer.create(README, truncate=True)  # cp new f
        handle.write(0, b"a change the user then undoes\n")
        assert answer(handle.flush) == errno.EIO  # pending, retried in the background
        handle.close()
        handle = rt.writer.create(README, truncate=True)  # cp orig f
        handle.write(0, original)
        assert answer(handle.flush) == 0
        handle.close()
        assert rt.writer.status() == []  # the undone change is not queued any more
    rt.writer.uploader.retry_soon()
    wait_for(lambda: not rt.writer.status(), timeout=30, what="an empty journal")
    assert on_server(rt) == original
    assert shown(rt, README) == original


@pytest.mark.parametrize("allow_delete", [True, False])
def test_the_opened_bytes_over_another_clients_newer_copy_are_refused_and_kept(
    make_runtime, allow_delete
):
    """`cp orig f` (O_TRUNC) over a file on XNAT, and another XNAT client stores other bytes
    there before the close.  The close answers what any other bytes get over another
    client's newer copy: EEXIST, the user's bytes kept in the journal as failed, XNAT's
    copy not overwritten; without --allow-delete too (the version replaces only the bytes
    it was made over, ``NotReplaced``).  Before: close() answered 0 ("the same bytes as on
    XNAT"), XNAT held the other client's bytes and the user's were nowhere."""
    rt = make_runtime(allow_delete=allow_delete)
    original = on_server(rt)
    handle = rt.writer.create(README, truncate=True)
    handle.write(0, original)
    another_client_stores(rt)
    assert answer(handle.flush) == errno.EEXIST
    handle.close()
    assert on_server(rt) == b"the other client's version\n"
    (kept,) = rt.writer.status()
    assert kept["state"] == "failed" and kept["size"] == len(original)


def test_rewriting_the_same_bytes_costs_one_listing_and_no_upload(make_runtime):
    """The no-op stays a no-op, without --allow-delete: no PUT, nothing journalled, and one
    request (the resource's listing that says XNAT holds these bytes; none before, when the
    file as opened was taken for XNAT's)."""
    rt = make_runtime()
    original = on_server(rt)
    handle = rt.writer.open_write(rt.tree.lookup(README), README, truncate=True)
    handle.write(0, original)
    mark = rt.emu.mark()
    handle.flush()
    handle.close()
    sent = api(rt.emu.since(mark))
    assert [m for m, _ in sent] == ["GET"] and "/files" in sent[0][1], sent
    assert rt.writer.status() == []
    assert on_server(rt) == original
