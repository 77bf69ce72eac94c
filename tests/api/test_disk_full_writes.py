"""A user's write on a full cache disk (integ9): the content cache makes room for it.

The spool and the journal live on the cache disk.  When the bytes of a ``write`` or the
journal's sidecar at close meet a full disk (ENOSPC, EDQUOT), cached files (copies of XNAT's)
are evicted, one pass, and the step is tried once more; still full, the user gets the errno.
The full disk is injected here (the journal's ``os``); tests/reliability/test_disk_full_write.py
fills a real tmpfs through a mount.
"""

from __future__ import annotations

import errno

import pytest
import requests

from tests.conftest import ADMIN
from tests.helpers.crash import FullDiskOs
from tests.mount.helpers import wait_for
from xnatfs.uploads import journal as journal_mod

PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"


def _cache_one_file(runtime) -> str:
    """Read one file of the demo into the content cache; its path."""
    tree = runtime.tree
    name = next(n.name for n in tree.listdir(PROTOCOLS) if not n.is_dir)
    path = f"{PROTOCOLS}/{name}"
    handle = tree.open(tree.lookup(path), path)
    try:
        assert handle.read(0, 1 << 20)  # the demo's files are small: the whole file
    finally:
        handle.close()
    wait_for(lambda: runtime.content.stats["entries"] >= 1, 30, what="the file to be cached")
    return path


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_close_that_meets_a_full_disk_evicts_and_lands(runtime, monkeypatch, code):
    """The sidecar write of close's journal step meets a full disk once: cached files are
    evicted and the step is tried again; close returns 0 and the file is on XNAT.  Before,
    close answered ENOSPC (EDQUOT) with the cache untouched."""
    _cache_one_file(runtime)
    evicted = runtime.content.stats["evictions"]
    out = runtime.writer.create(f"{PROTOCOLS}/after_full.txt")
    out.write(0, b"written on a full disk\n")
    monkeypatch.setattr(journal_mod, "os", FullDiskOs(refusals=1, code=code))
    out.flush()  # before: OSError ENOSPC / EDQUOT
    out.close()
    monkeypatch.undo()
    assert runtime.content.stats["evictions"] > evicted
    r = requests.get(f"{runtime.emu.url}{PROTOCOLS_URI}/after_full.txt", auth=ADMIN, timeout=30)
    assert r.status_code == 200 and r.content == b"written on a full disk\n"


def test_a_close_on_a_disk_still_full_is_enospc_and_keeps_the_bytes(runtime, monkeypatch):
    """One eviction pass, then the errno: the bytes stay in the spool (the journal made no
    entry), the user is told, and a later close, with room again, stores them."""
    _cache_one_file(runtime)
    out = runtime.writer.create(f"{PROTOCOLS}/still_full.txt")
    out.write(0, b"kept\n")
    monkeypatch.setattr(journal_mod, "os", FullDiskOs(refusals=2))
    with pytest.raises(OSError) as info:
        out.flush()
    assert info.value.errno == errno.ENOSPC
    assert runtime.writer.journal.entries() == []
    monkeypatch.undo()
    out.flush()  # room again: the same bytes
    out.close()
    r = requests.get(f"{runtime.emu.url}{PROTOCOLS_URI}/still_full.txt", auth=ADMIN, timeout=30)
    assert r.status_code == 200 and r.content == b"kept\n"


def test_an_append_to_a_pending_file_on_a_full_disk_evicts_and_goes_on(runtime, monkeypatch):
    """``>> f`` of a file still waiting in the journal copies its bytes into a new spool
    file first; on a full disk that copy made room as a write does.  Before, the append
    answered ENOSPC with the cache untouched."""
    from xnatfs.uploads import spool as spool_mod

    writer, tree = runtime.writer, runtime.tree
    writer.temp_delay = 60.0  # a temporary name: its upload waits, the entry stays pending
    path = f"{PROTOCOLS}/notes.tmp"
    out = writer.create(path)
    out.write(0, b"first\n")
    out.flush()
    out.close()
    assert [e.path for e in writer.journal.entries()] == [path]
    _cache_one_file(runtime)
    evicted = runtime.content.stats["evictions"]
    monkeypatch.setattr(spool_mod, "os", FullDiskOs(refusals=1))
    appender = writer.open_write(tree.lookup(path), path, truncate=False)
    appender.write(6, b"second\n")  # before: OSError ENOSPC
    monkeypatch.undo()
    assert appender.read(0, 100) == b"first\nsecond\n"
    appender.close()
    assert runtime.content.stats["evictions"] > evicted


def test_a_change_in_place_on_a_full_disk_evicts_and_goes_on(make_runtime, monkeypatch):
    """Opening a file on XNAT for a change in place (``O_RDWR`` without ``O_TRUNC``,
    --allow-delete) copies its bytes into a spool first; on a full disk that copy now makes
    room as a write does.  Before, the open answered ENOSPC with the cache untouched."""
    from xnatfs.uploads import spool as spool_mod

    runtime = make_runtime(allow_delete=True)
    writer, tree = runtime.writer, runtime.tree
    cached = _cache_one_file(runtime)
    other = next(
        f"{PROTOCOLS}/{n.name}"
        for n in tree.listdir(PROTOCOLS)
        if not n.is_dir and f"{PROTOCOLS}/{n.name}" != cached
    )
    original = requests.get(
        f"{runtime.emu.url}{PROTOCOLS_URI}/{other.rsplit('/', 1)[1]}", auth=ADMIN, timeout=30
    ).content
    assert original
    evicted = runtime.content.stats["evictions"]
    monkeypatch.setattr(spool_mod, "os", FullDiskOs(refusals=1))
    handle = writer.open_write(tree.lookup(other), other, truncate=False)  # before: ENOSPC
    monkeypatch.undo()
    assert runtime.content.stats["evictions"] > evicted
    handle.write(0, b"X")
    assert handle.read(0, len(original) + 10) == b"X" + original[1:]
    handle.flush()
    handle.close()
    r = requests.get(
        f"{runtime.emu.url}{PROTOCOLS_URI}/{other.rsplit('/', 1)[1]}", auth=ADMIN, timeout=30
    )
    assert r.status_code == 200 and r.content == b"X" + original[1:]
