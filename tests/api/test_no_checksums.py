"""Writes to a site with checksums off: XNAT's listings carry no MD5 (docs/XNAT-API.md §1.8,
the emulator's ``checksums=False``), so a listed file of the right size may be the user's new
bytes or the old ones they replace.  README: such files "cannot be told equal and count as
other bytes".  Through the runtime API, like ``test_lost_updates.py``."""

from __future__ import annotations

import errno

import pytest
import requests

from tests.api.helpers import (
    PROTOCOLS,
    PROTOCOLS_URI,
    another_client_stores,
    faults,
    lost_answer,
    on_server,
)
from tests.conftest import ADMIN
from tests.mount.helpers import wait_for
from xnatfs.fs.errmap import errno_for

NO_CHECKSUMS = {"checksums": False}


def same_size_change(data: bytes) -> bytes:
    """Other bytes of the same size (a fixed-width edit): letters' case swapped."""
    change = data.swapcase()
    assert change != data and len(change) == len(data)
    return change


def xnat_down(rt):
    """XNAT answers every PUT with 503 for the ``with`` block."""
    return faults(rt.emu, error_status=503, error_rate=1.0, fault_methods="PUT")


def change_in_place(rt, path: str, change: bytes) -> None:
    """Change the file on XNAT at ``path`` in place to ``change`` while XNAT answers 503:
    close() answers EIO, the change kept in the journal and retried in the background."""
    handle = rt.writer.open_write(rt.tree.lookup(path), path, truncate=False)
    handle.write(0, change)
    with pytest.raises(Exception) as got:
        handle.flush()
    assert errno_for(got.value) == errno.EIO
    handle.close()
    assert [s["state"] for s in rt.writer.status()] == ["pending"]


def test_the_emulator_lists_no_md5_with_checksums_off(make_runtime):
    rt = make_runtime(emulator=NO_CHECKSUMS)
    node = rt.tree.lookup(f"{PROTOCOLS}/README.txt")
    assert node.size and node.digest == ""


def test_a_same_size_change_retried_without_checksums_is_sent(make_runtime):
    """--allow-delete; a same-size change of README.txt meets a 503 and is retried.  The
    retry asks XNAT first (an earlier attempt may have landed): its listing shows the old
    file, of the same size, without MD5.  Before, that was taken for "landed": the entry
    left the journal unsent and XNAT kept the old bytes."""
    rt = make_runtime(allow_delete=True, emulator=NO_CHECKSUMS)
    path = f"{PROTOCOLS}/README.txt"
    change = same_size_change(on_server(rt, "README.txt"))
    with xnat_down(rt):
        change_in_place(rt, path, change)
    rt.writer.uploader.retry_soon()
    wait_for(lambda: not rt.writer.status(), 30, what="the retry")
    assert on_server(rt, "README.txt") == change


def test_a_same_size_change_pending_at_a_restart_is_sent_by_the_next_mount(runtimes):
    """The same, with the mount stopped while the change is pending (as a kill -9 leaves
    it): the next mount checks every entry it resumes on XNAT first, and before dropped
    this one unsent."""
    rt = runtimes(allow_delete=True, emulator=NO_CHECKSUMS)
    path = f"{PROTOCOLS}/README.txt"
    change = same_size_change(on_server(rt, "README.txt"))
    with xnat_down(rt):
        change_in_place(rt, path, change)
        rt.close()  # while XNAT still answers 503: the entry stays pending
    rt = runtimes(allow_delete=True)
    wait_for(lambda: not rt.writer.status(), 30, what="the resumed upload")
    assert on_server(rt, "README.txt") == change


def test_a_new_file_whose_answer_was_lost_is_found_without_checksums(make_runtime):
    """A new file's PUT lands and its answer is lost.  The retry cannot be told by an MD5
    that XNAT has the file: XNAT's copy is hashed instead, found to be the user's, and the
    entry is done, neither sent again (a "duplicates" refusal) nor kept as failed."""
    rt = make_runtime(emulator=NO_CHECKSUMS)
    puts = lost_answer(rt, "new.dat")
    handle = rt.writer.create(f"{PROTOCOLS}/new.dat")
    handle.write(0, b"stored, its answer lost\n")
    with pytest.raises(Exception) as got:
        handle.flush()
    assert errno_for(got.value) == errno.ETIMEDOUT
    handle.close()
    rt.writer.uploader.retry_soon()
    wait_for(lambda: not rt.writer.status(), 30, what="the retry")
    assert puts == ["new.dat"]
    assert on_server(rt, "new.dat") == b"stored, its answer lost\n"


def test_another_clients_new_file_of_the_same_size_is_not_taken_for_the_users(make_runtime):
    """A new file pending (XNAT answered 503); another client stores other bytes of the
    same size at its name meanwhile.  Without MD5s the listing cannot tell them apart: the
    retry hashes XNAT's copy, finds other bytes and sends the user's, which XNAT refuses as
    a duplicate: kept as failed (EEXIST), never dropped as landed."""
    rt = make_runtime(emulator=NO_CHECKSUMS)
    mine = b"the user's bytes\n"
    with xnat_down(rt):
        handle = rt.writer.create(f"{PROTOCOLS}/new.dat")
        handle.write(0, mine)
        with pytest.raises(Exception):  # noqa: B017 - the 503's EIO; kept pending
            handle.flush()
        handle.close()
    theirs = mine.swapcase()
    r = requests.put(
        f"{rt.emu.url}{PROTOCOLS_URI}/new.dat?inbody=true", data=theirs, auth=ADMIN, timeout=30
    )
    assert r.status_code in (200, 201), r.text
    rt.writer.uploader.retry_soon()
    wait_for(lambda: [s["state"] for s in rt.writer.status()] == ["failed"], 30, what="refusal")
    assert on_server(rt, "new.dat") == theirs
    assert "duplicates" in rt.writer.status()[0]["last_error"]


def test_writes_after_an_fsync_do_not_continue_from_another_clients_bytes(make_runtime):
    """As in ``test_lost_updates.py``, with no MD5 in the listing to compare: a descriptor
    that wrote and fsync'ed a file writes on after another client stored other bytes of the
    same size there.  XNAT's copy is hashed as it is downloaded and is not the one confirmed:
    the write answers EEXIST and XNAT keeps the other client's file."""
    rt = make_runtime(emulator=NO_CHECKSUMS)
    handle = rt.writer.create(f"{PROTOCOLS}/state.db")
    handle.write(0, b"AAAA")
    handle.fsync()
    another_client_stores(rt, "state.db", b"ZZZZ")
    with pytest.raises(OSError) as got:
        handle.write(4, b"B")  # before: continued from ZZZZ, uploaded ZZZZB at close
    assert got.value.errno == errno.EEXIST, got.value
    with pytest.raises(OSError):
        handle.flush()
    handle.close()
    assert on_server(rt, "state.db") == b"ZZZZ"
