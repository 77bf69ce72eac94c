"""A time set on a file still open after its fsync'ed upload was confirmed (``utimens`` on
its descriptor or its name, then ``close``), through the runtime API against the emulator.
Before: the open file kept the time in memory only (``LocalFile.mtime_ns``) and lost it at
close, the file showing its upload's time; rsync, make and tar saw the file changed."""

from __future__ import annotations

import hashlib

import pytest

from tests.api.helpers import on_server

PROTOCOLS = "/DEMO1/resources/protocols/files"
#: a time in the past, to the nanosecond (rsync and make compare nanoseconds)
SET_NS = 978_307_200_123_456_789


def shown(rt, path: str) -> int:
    rt.tree.invalidate(PROTOCOLS)
    return rt.tree.mtime_ns(rt.tree.lookup(path))


@pytest.mark.parametrize("checksums", [True, False], ids=["md5", "no-checksums"])
def test_a_time_set_after_fsync_sticks_at_close_and_across_a_restart(runtimes, checksums):
    make = runtimes
    rt = make(emulator={"checksums": checksums})
    path = f"{PROTOCOLS}/synced.txt"
    handle = rt.writer.create(path)
    handle.write(0, b"synced, then dated\n")
    handle.fsync()  # XNAT confirmed the upload
    assert not rt.writer.status()
    rt.writer.set_mtime(path, SET_NS)
    handle.close()
    assert shown(rt, path) == SET_NS
    rt.close()
    rt = make()  # the next mount on the same cache
    assert shown(rt, path) == SET_NS


@pytest.mark.parametrize("checksums", [True, False], ids=["md5", "no-checksums"])
def test_a_time_set_while_the_upload_is_being_confirmed_is_kept(make_runtime, checksums):
    """The window between the check that confirmed an upload (``_landed``, which keeps the
    file's time then) and the journal letting go of the entry: a time set there went into
    the journal record only, dropped with it a moment later."""
    rt = make_runtime(emulator={"checksums": checksums})
    path = f"{PROTOCOLS}/window.txt"
    writer = rt.writer
    landed = writer._landed

    def landed_then_dated(entry, listed):
        landed(entry, listed)
        writer.set_mtime(path, SET_NS)

    writer._landed = landed_then_dated
    handle = writer.create(path)
    handle.write(0, b"dated in the window\n")
    handle.close()
    writer._landed = landed
    assert shown(rt, path) == SET_NS


def test_a_time_set_after_fsync_of_the_same_bytes_sticks_at_close(runtimes):
    """The same bytes written over a file on XNAT (``O_TRUNC``), fsync'ed (nothing
    uploaded: the write's time kept for XNAT's file), then dated while still open."""
    make = runtimes
    rt = make()
    path = f"{PROTOCOLS}/README.txt"
    node = rt.tree.lookup(path)
    data = on_server(rt)
    assert isinstance(data, bytes) and len(data) == node.size
    handle = rt.writer.open_write(node, path, truncate=True)
    handle.write(0, data)
    handle.fsync()  # the same bytes as on XNAT: nothing uploaded
    rt.writer.set_mtime(path, SET_NS)
    handle.close()
    assert shown(rt, path) == SET_NS
    rt.close()
    rt = make()
    assert shown(rt, path) == SET_NS


def test_a_time_set_after_newer_writes_is_not_kept_for_the_older_upload(make_runtime):
    """Bytes written while an fsync's upload is being confirmed: the confirmation came after
    the write (which clears the confirmed row, ``_reopen_spool``) and set the row again, so a
    time set then was kept for the older bytes on XNAT (a review finding); it goes with the
    newer bytes, at their upload."""
    rt = make_runtime()
    path = f"{PROTOCOLS}/rewritten.txt"
    writer = rt.writer
    landed = writer._landed
    handle = writer.create(path)
    handle.write(0, b"first\n")

    def written_then_landed(entry, listed):
        handle.write(6, b"second\n")  # more bytes before the first ones are confirmed
        landed(entry, listed)

    writer._landed = written_then_landed
    handle.fsync()
    writer._landed = landed
    assert on_server(rt, "rewritten.txt") == b"first\n"
    writer.set_mtime(path, SET_NS)
    resource = "/data/projects/DEMO1/resources/protocols"
    row = next(e for e in rt.client.list_files(resource) if e.path == "rewritten.txt")
    assert row.digest == hashlib.md5(b"first\n").hexdigest()
    assert rt.tree.times.get(row.uri, row.size, row.digest) != SET_NS
    handle.close()
    assert on_server(rt, "rewritten.txt") == b"first\nsecond\n"
    assert shown(rt, path) == SET_NS
