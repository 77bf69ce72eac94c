"""A file written through the mount is named on the wire as XNAT's listings name it: every
later request about its upload (the checksums-off check of XNAT's copy, the refill of a
descriptor after fsync) and the keys and attributes kept for it use the listing's URI,
percent-encoded (docs/XNAT-API.md §1.8, §10.17).  Before, those took the target's URI with the
name raw: ``e%41f.txt`` was asked for as ``eAf.txt`` (another file), ``a?b.txt`` as ``a``
with a query.  Through the runtime API, like ``test_no_checksums.py``."""

from __future__ import annotations

import errno
from urllib.parse import quote

import pytest
import requests

from tests.api.helpers import PROTOCOLS, another_client_stores, faults, lost_answer, on_server
from tests.conftest import ADMIN
from tests.helpers.waiting import wait_for
from xnatfs.fs.errmap import errno_for
from xnatfs.uploads.journal import DONE

#: ``plain.txt`` (the control: never broken) and names that need encoding in a URL.  Raw,
#: ``e%41f.txt`` is ``eAf.txt`` once decoded (stored beside it with other bytes of the same
#: size) and ``a?b.txt`` is ``a`` with a query: requests for those two named another file
#: before; the others were fetched right (the client's ``_url`` encodes them) but keyed
#: and shown under a URI no listing gives
NAMES = ["plain.txt", "a?b.txt", "c#d.txt", "e%41f.txt", "g h.txt", "ümlaut.txt", "50%.txt"]
DECOY = "eAf.txt"
#: a time in the past, to the nanosecond
SET_NS = 1_500_000_000_123_456_789


def stored(rt, name: str) -> "bytes | int":
    """What XNAT holds at protocols file ``name`` (the name encoded for the URL)."""
    return on_server(rt, quote(name, safe=""))


def with_decoy(rt, size: int) -> bytes:
    """``eAf.txt`` on XNAT: other bytes of ``size``, what ``e%41f.txt`` raw would fetch."""
    decoy = (b"DECOY" * size)[:size]
    another_client_stores(rt, DECOY, decoy)
    return decoy


def retried(rt) -> list:
    """The journal's entries once the retry of the one entry ended: [] when it is done, the
    entry itself (state, tries, last error) when it failed or is waiting for another try."""

    def ended() -> bool:
        status = rt.writer.status()
        return not status or status[0]["state"] == "failed" or status[0]["tries"] >= 2

    wait_for(ended, 30, what="the retry")
    return rt.writer.status()


@pytest.mark.parametrize("name", NAMES)
def test_a_lost_answer_without_checksums_hashes_this_files_copy(make_runtime, name):
    """Checksums off; a new file's PUT lands and its answer is lost.  The retry hashes
    XNAT's copy of the file to know it landed.  Before, ``e%41f.txt`` hashed ``eAf.txt``
    (other bytes: the file was sent again, refused as a duplicate) and ``a?b.txt`` asked
    for ``a`` (404): both kept as failed, though XNAT had the user's bytes."""
    rt = make_runtime(emulator={"checksums": False})
    data = b"stored, its answer lost\n"
    decoy = with_decoy(rt, len(data))
    puts = lost_answer(rt, name)
    handle = rt.writer.create(f"{PROTOCOLS}/{name}")
    handle.write(0, data)
    with pytest.raises(Exception) as got:
        handle.flush()
    assert errno_for(got.value) == errno.ETIMEDOUT
    handle.close()
    rt.writer.uploader.retry_soon()
    assert retried(rt) == []
    assert puts == [name]
    assert stored(rt, name) == data
    assert stored(rt, DECOY) == decoy


@pytest.mark.parametrize("name", NAMES)
def test_writes_after_an_fsync_continue_from_this_files_bytes(make_runtime, name):
    """write, fsync (XNAT confirms it), write more, close: XNAT gets the whole file.  The
    second write refills the descriptor from XNAT's copy.  Before, ``e%41f.txt`` was refilled
    from ``eAf.txt`` (refused: EEXIST, "another client stored it") and ``a?b.txt`` from
    ``a`` (ENOENT): the write failed and XNAT kept only the first part."""
    rt = make_runtime()
    first, more = b"first part, confirmed\n", b"and more\n"
    decoy = with_decoy(rt, len(first))
    handle = rt.writer.create(f"{PROTOCOLS}/{name}")
    handle.write(0, first)
    handle.fsync()
    assert stored(rt, name) == first
    handle.write(len(first), more)
    handle.flush()
    handle.close()
    assert stored(rt, name) == first + more
    assert stored(rt, DECOY) == decoy


@pytest.mark.parametrize("name", NAMES)
def test_a_time_set_as_the_upload_is_confirmed_sticks(make_runtime, monkeypatch, name):
    """A utimens that comes as XNAT confirms the upload (the journal let go of the entry, the
    writer not yet told) keeps the time in the times index, under the key the file's listing
    row is looked up by (the row that confirmed it, ``LocalFile.landed``).  Before, the key
    was the URI with the name raw, never looked up for such a name: the file showed the time
    it was written, not the one set (rsync -t and make saw it changed).  The window is made
    here by a utimens just before the uploader tells the writer (``_on_change``)."""
    rt = make_runtime()
    path = f"{PROTOCOLS}/{name}"
    writer = rt.writer
    tell = writer.uploader._on_change
    dated = []

    def date_then_tell(entry):
        if entry.state == DONE and not dated:
            assert writer.journal.get(entry.id) is None  # XNAT has it: the journal let go
            writer.set_mtime(path, SET_NS)
            dated.append(entry.id)
        tell(entry)

    monkeypatch.setattr(writer.uploader, "_on_change", date_then_tell)
    handle = writer.create(path)
    handle.write(0, b"dated\n")
    handle.fsync()
    assert dated
    handle.close()
    rt.tree.invalidate(PROTOCOLS)
    node = rt.tree.lookup(path)
    assert not node.is_local  # XNAT's listing row: its time comes from the times index
    assert rt.tree.mtime_ns(node) == SET_NS


@pytest.mark.parametrize("name", NAMES)
def test_the_uri_attribute_of_a_pending_file_names_it(make_runtime, name):
    """A file pending in the journal (XNAT answered 503) shows ``user.xnat.uri``: the URI
    XNAT's listing gives it once it lands, and a GET of it is the file.  Before, it was the
    raw name's (``.../files/e%41f.txt``, which is ``eAf.txt``), another value once listed."""
    rt = make_runtime()
    path = f"{PROTOCOLS}/{name}"
    data = b"pending a while\n"
    with_decoy(rt, len(data))
    with faults(rt.emu, error_status=503, error_rate=1.0, fault_methods="PUT"):
        handle = rt.writer.create(path)
        handle.write(0, data)
        with pytest.raises(Exception):  # noqa: B017 - the 503's EIO; kept pending
            handle.flush()
        handle.close()
        pending = rt.tree.xattrs(rt.tree.lookup(path))["uri"]
    rt.writer.uploader.retry_soon()
    wait_for(lambda: not rt.writer.status(), 30, what="the retry")
    rt.tree.invalidate(PROTOCOLS)
    assert rt.tree.xattrs(rt.tree.lookup(path))["uri"] == pending
    r = requests.get(f"{rt.emu.url}{pending}", auth=ADMIN, timeout=30)
    assert (r.status_code, r.content) == (200, data)
