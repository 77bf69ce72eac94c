"""The read path under faults of the cache disk and of a cache directory shared by processes.

Each test drives the real ``ContentCache`` with an injected fetch (``FakeFetch``), damages what
the fault damages, and checks the rule: a read returns XNAT's bytes or an error, never other
bytes — a short read is other bytes (the kernel takes it for the end of the file, and ``cp``
exits 0 with a truncated copy).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sqlite3

import pytest

from tests.unit.test_content_cache import (
    Failure,
    FakeFetch,
    _bulk_setup,
    key_for,
    later,
    payload,
    read_all,
)
from xnatfs.cache.content import ContentCache
from xnatfs.cache.download import INLINE_HASH_MAX
from xnatfs.fs.ops import XnatOperations


class _TreeSpan:
    """What ``XnatOperations._copy_into`` is given: a tree handle's ``span(offset, size)``,
    here a content handle's with a generous deadline."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def span(self, offset: int, size: int):
        return self._handle.span(offset, size, later())


def _copy(handle, offset: int, size: int) -> bytes:
    """The mount's read (``read_into``): span, then ``preadv`` into libfuse's buffer."""
    buf = ctypes.create_string_buffer(size)
    n = XnatOperations._copy_into(_TreeSpan(handle), ctypes.addressof(buf), size, offset)
    return buf.raw[:n]


@pytest.mark.parametrize("how", ["read", "span"])
def test_a_cached_file_truncated_while_open_is_eio_not_a_short_read(make_cache, how):
    """A viewer holds a cached file open; the cache file shrinks behind the daemon (a disk
    fault, a hand in the cache directory).  The open passed its size check before; the read
    must not come back short as if the file ended there."""
    data = payload(50_000)
    fetch = FakeFetch({"/f": data})
    cc = make_cache(fetch)
    key = key_for("/f", data)
    assert read_all(cc, key) == data
    with cc.open(key) as h:
        assert h.verified  # served from the cached copy
        os.truncate(cc._stored_path(key.hexname()), 1000)
        with pytest.raises(OSError) as err:
            got = h.read(0, 60_000, later()) if how == "read" else _copy(h, 0, 60_000)
            pytest.fail(f"a short read of {len(got)} bytes, not EIO")  # pragma: no cover
        assert err.value.errno == errno.EIO
        # bytes before the cut are still XNAT's; only a read past it fails
        assert (h.read(0, 1000, later()) if how == "read" else _copy(h, 0, 1000)) == data[:1000]
    # the next open sees the wrong size and fetches the file again
    assert read_all(cc, key) == data and fetch.calls["/f"] == 2


@pytest.mark.parametrize("how", ["read", "span"])
def test_a_downloaded_file_truncated_while_open_is_eio_not_a_short_read(make_cache, how):
    """The same for an open that followed the download: its fd is the partial file's, which
    is the cached file once adopted."""
    data = payload(50_000)
    fetch = FakeFetch({"/f": data})
    cc = make_cache(fetch)
    key = key_for("/f", data)
    with cc.open(key) as h:
        assert h.read(0, 10, later()) == data[:10]
        assert h.wait(later())
        os.truncate(cc._stored_path(key.hexname()), 1000)
        with pytest.raises(OSError) as err:
            got = h.read(0, 60_000, later()) if how == "read" else _copy(h, 0, 60_000)
            pytest.fail(f"a short read of {len(got)} bytes, not EIO")  # pragma: no cover
        assert err.value.errno == errno.EIO


def test_reads_at_and_past_the_end_are_still_empty(make_cache):
    """What the short-read check must not break: EOF is b"" and a read across the end is
    short by exactly what the file lacks."""
    data = payload(5_000)
    cc = make_cache(FakeFetch({"/f": data}))
    key = key_for("/f", data)
    assert read_all(cc, key) == data
    with cc.open(key) as h:
        assert h.read(4_000, 4_096, later()) == data[4_000:]
        assert h.read(5_000, 4_096, later()) == b""
        assert h.read(9_000, 4_096, later()) == b""
        assert _copy(h, 4_000, 4_096) == data[4_000:]
        assert _copy(h, 5_000, 4_096) == b""


def test_a_cached_archive_of_unknown_size_still_reads_to_its_end(tmp_path):
    """A virtual ``.zip`` (size unknown until made) cached: a read across its end is short by
    what it lacks, through ``read`` and through the mount's span + preadv, not EIO."""
    from xnatfs.cache.content import ContentKey

    blob = payload(30_000, seed=3)
    archive = ContentKey.archive("/data/experiments/E1", mtime="2024-01-01")
    fetch = FakeFetch({archive.uri: blob})
    with ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch) as cc:
        with cc.open(archive) as h:
            assert h.read(0, 40_000, later()) == blob
            assert h.wait(later())
        with cc.open(archive) as h:
            assert h.verified  # the cached copy
            assert h.read(20_000, 40_000, later()) == blob[20_000:]
            assert _copy(h, 20_000, 40_000) == blob[20_000:]
            assert _copy(h, 30_000, 4096) == b""


# -- a cache directory shared by processes; an index that refuses a verified file -----------------


def test_a_second_process_starting_on_the_cache_leaves_running_downloads_alone(make_cache):
    """A second mount of the same cache directory, or ``xnatfs cache usage`` beside a mount,
    removed every partial file at its start: the running mount's download then failed at its
    adoption (ENOENT) and a reader got "No such file or directory" in the middle of a file
    whose bytes were right."""
    data = payload(50_000)
    fetch = FakeFetch({"/f": data}, hold_at=20_000)
    cc = make_cache(fetch)
    key = key_for("/f", data)
    with cc.open(key) as h:
        assert fetch.held.wait(10)
        assert h.read(0, 1000, later()) == data[:1000]
        other = make_cache(FakeFetch({}))  # starts on the same directory, then ends
        other.close(later(5))
        fetch.gate.set()
        assert h.wait(later())
        assert h.read(1000, 60_000, later()) == data[1000:]  # after the download ended
    assert cc.state(key) == "cached" and fetch.calls["/f"] == 1
    assert read_all(cc, key) == data and fetch.calls["/f"] == 1


def test_partials_of_a_process_that_is_gone_are_still_removed(make_cache, tmp_path):
    """What the start's sweep is for: a crashed daemon's partial files (its lock file left,
    unlocked), and those of an older version (no lock file at all)."""
    cc = make_cache(FakeFetch({}))
    cc.close(later(5))
    partial, owners = tmp_path / "cc" / "partial", tmp_path / "cc" / "owners"
    dead = partial / ("ab" * 32 + ".deadbeef0.part")
    old = partial / ("cd" * 32 + ".0badf00d7.part")
    dead.write_bytes(b"x" * 100)
    old.write_bytes(b"y" * 100)
    (owners / "deadbeef.lock").write_bytes(b"")
    make_cache(FakeFetch({}))
    assert not dead.exists() and not old.exists()
    assert [p.name for p in owners.iterdir()] == [f"{make_cache_tag(tmp_path)}.lock"]


def make_cache_tag(tmp_path) -> str:
    """The tag of the one live owner (the test's last cache)."""
    names = [p.name for p in (tmp_path / "cc" / "owners").iterdir()]
    assert len(names) == 1, names
    return names[0][: -len(".lock")]


def _refusing_index(cc: ContentCache, monkeypatch) -> None:
    """The index refuses every adoption, as SQLite does when its file is damaged or the disk
    under it fails (the fault is injected into the index; the bytes are real)."""

    def refuse(items):
        return [OSError(errno.EIO, "disk I/O error (injected)") for _ in items]

    monkeypatch.setattr(cc._index, "adopt_many", refuse)


def test_a_verified_download_the_index_refuses_is_served_not_kept(make_cache, monkeypatch, caplog):
    data = payload(50_000)
    fetch = FakeFetch({"/f": data}, hold_at=20_000)
    cc = make_cache(fetch)
    key = key_for("/f", data)
    _refusing_index(cc, monkeypatch)
    with cc.open(key) as h:
        assert fetch.held.wait(10)
        assert h.read(0, 1000, later()) == data[:1000]
        fetch.gate.set()
        assert h.wait(later())
        # the bytes were right: this open reads them to the end (before: the adoption's
        # error, EIO, in the middle of the file)
        assert h.read(1000, 60_000, later()) == data[1000:]
    assert cc.state(key) == "absent"
    assert [r for r in caplog.records if "/f" in r.getMessage() and "not kept" in r.getMessage()]
    monkeypatch.undo()
    assert read_all(cc, key) == data and fetch.calls["/f"] == 2  # fetched again, then kept
    assert cc.state(key) == "cached"


def test_bulk_member_readers_get_their_bytes_when_the_index_refuses_them(make_cache, monkeypatch):
    """The same for the members of a bulk zip (``BulkFetches._settle``)."""
    files = {f"/f{i:02d}": payload(5000, seed=i) for i in range(4)}
    fetch, keys, key_of = _bulk_setup(files, hold_at=4096)
    cc = make_cache(fetch)
    _refusing_index(cc, monkeypatch)
    assert cc.bulk("/zip", keys.values(), key_of) == 4
    assert fetch.held.wait(10)  # the zip is on its way: the opens join its members
    handles = {uri: cc.open(key) for uri, key in keys.items()}
    fetch.gate.set()
    try:
        for uri, h in handles.items():
            assert h.wait(later())
            assert h.read(0, 6000, later()) == files[uri]
    finally:
        for h in handles.values():
            h.close()
    assert all(cc.state(k) == "absent" for k in keys.values())
    assert fetch.calls["/zip"] == 1 and sum(fetch.calls.values()) == 1


# -- a damaged index -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "malformed"])
def test_a_damaged_index_starts_an_empty_cache_instead_of_failing(
    make_cache, tmp_path, damage, caplog
):
    """The index's SQLite file overwritten (a disk fault): every start raised "file is not a
    database" — the mount's, and ``xnatfs cache clear``'s too, so only deleting the cache
    directory by hand got the user going again."""
    data = payload(50_000)
    fetch = FakeFetch({"/f": data})
    cc = make_cache(fetch)
    key = key_for("/f", data)
    assert read_all(cc, key) == data
    cc.close(later(5))
    db = tmp_path / "cc" / "index" / "cache.db"
    with open(db, "r+b") as f:
        if damage == "garbage":
            f.write(os.urandom(4096))  # the header too: "file is not a database"
        else:
            f.seek(4096)  # the header kept, the pages after it wrong: "malformed"
            f.write(b"\xff" * (os.path.getsize(db) - 4096))
    with caplog.at_level(logging.WARNING, logger="xnatfs.cache.content"):
        again = make_cache(fetch)
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "cache.db" in line and "damaged" in line], lines
    assert again.state(key) == "absent"
    assert read_all(again, key) == data and fetch.calls["/f"] == 2
    assert again.state(key) == "cached"
    assert not list((tmp_path / "cc").glob("index.damaged*"))


def test_a_locked_index_is_not_taken_for_a_damaged_one():
    """Only a damaged file sets the index aside: "database is locked" (another process
    writing) or a full disk must not empty the cache."""
    from xnatfs.cache.index import damaged

    assert not damaged(sqlite3.OperationalError("database is locked"))
    assert damaged(sqlite3.DatabaseError("file is not a database"))
    assert damaged(sqlite3.DatabaseError("database disk image is malformed"))


def test_cache_verify_reports_a_damaged_index_and_repair_empties_it(make_cache, tmp_path):
    """``xnatfs cache verify`` ended in a traceback on a damaged index; now it is one bad
    entry, and ``--repair`` does what the next start would do."""
    from xnatfs.cache.index import verify_entries

    data = payload(5_000)
    cc = make_cache(FakeFetch({"/f": data}))
    assert read_all(cc, key_for("/f", data)) == data
    cc.close(later(5))
    with open(tmp_path / "cc" / "index" / "cache.db", "r+b") as f:
        f.write(os.urandom(4096))
    report = verify_entries(tmp_path / "cc")
    assert report.bad == 1 and "damaged" in report.problems[0], report
    report = verify_entries(tmp_path / "cc", repair=True)
    assert report.bad == 1 and report.dropped == 1
    report = verify_entries(tmp_path / "cc")
    assert report.bad == 0 and report.checked == 0


# -- a connection dropped in the middle of a body --------------------------------------------------


class Dropped(ConnectionError):
    """What the client raises for a connection reset mid-body (``Unreachable``): retryable."""

    retryable = True


@pytest.mark.parametrize("size", [50_000, INLINE_HASH_MAX + 300_000])  # inline / thread MD5
def test_a_body_cut_mid_way_goes_on_from_a_new_get_without_failing_its_readers(make_cache, size):
    """XNAT has no Range, so a GET cut after N bytes is answered again from byte 0: the first
    N bytes are compared with those already served, and the rest appended.  Before, the
    download failed: every reader of a right file got EIO (the client retries only before
    the first byte)."""
    data = payload(size)
    cut = size // 3
    fetch = FakeFetch({"/f": [Failure(data[:cut], Dropped("reset")), data]}, hold_at=cut)
    cc = make_cache(fetch)
    key = key_for("/f", data)
    with cc.open(key) as h:
        assert fetch.held.wait(10)
        assert h.read(0, 1000, later()) == data[:1000]  # bytes of the first GET, served
        fetch.gate.set()
        assert h.read(1000, size + 1, later()) == data[1000:]  # to the end, with success
        assert h.wait(later())
    assert fetch.calls["/f"] == 2 and cc.state(key) == "cached"
    assert read_all(cc, key) == data and fetch.calls["/f"] == 2


def test_a_body_cut_mid_way_whose_next_get_differs_before_the_cut_is_never_mixed(make_cache):
    """The file changed on XNAT between the two GETs, inside the bytes already served: the
    open that read them ends in EIO (never a mix); the next open reads the new file whole."""
    old, new = payload(50_000), payload(50_000, seed=9)
    fetch = FakeFetch({"/f": [Failure(old[:20_000], Dropped("reset")), new]}, hold_at=20_000)
    cc = make_cache(fetch)
    key = key_for("/f", new)  # the listing already shows the new version
    with cc.open(key) as h:
        assert fetch.held.wait(10)
        assert h.read(0, 1000, later()) == old[:1000]  # the old bytes: before the check
        fetch.gate.set()
        with pytest.raises(OSError) as err:
            h.read(1000, 60_000, later())
        assert err.value.errno == errno.EIO
    assert read_all(cc, key) == new


def test_a_body_cut_mid_way_again_and_again_ends_in_the_error(make_cache):
    """Bounded: a server that cuts every GET gives the reader the error, not a loop."""
    data = payload(50_000)
    fetch = FakeFetch({"/f": Failure(data[:20_000], Dropped("reset"))})
    cc = make_cache(fetch)
    with cc.open(key_for("/f", data)) as h:
        with pytest.raises(Dropped):
            h.read(0, 60_000, later())
    assert 2 <= fetch.calls["/f"] <= 4


def test_a_bulk_zip_cut_inside_a_member_goes_on_with_that_member_for_its_reader(make_cache):
    """A zip cut in the middle of a member that a reader is reading (``cp -r`` waits on the
    member being fed): that member's own GET goes on from where the zip stopped.  Before, the
    member was fetched again as a new attempt and its reader, who had read bytes of the zip's,
    got EIO at the end of a right file."""
    files = {f"/f{i:02d}": os.urandom(40_000) for i in range(4)}
    fetch, keys, key_of = _bulk_setup(files, chunk=4096)
    blob = fetch.answers["/zip"]
    at = blob.index(files["/f01"][:64]) + 20_000  # inside the second member
    fetch.answers["/zip"] = Failure(blob[:at], Dropped("reset"))
    fetch.hold_at = at  # held there until the reader has read from the member
    cc = make_cache(fetch)
    assert cc.bulk("/zip", keys.values(), key_of) == 4
    assert fetch.held.wait(10)
    with cc.open(keys["/f01"]) as h:
        assert h.read(0, 1000, later()) == files["/f01"][:1000]  # bytes fed from the zip
        fetch.gate.set()
        assert h.read(1000, 50_000, later()) == files["/f01"][1000:]  # to the end: success
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]
    assert fetch.calls["/zip"] == 1 and fetch.calls["/f00"] == 0
