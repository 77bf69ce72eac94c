"""The upload's check keeps its listing (tree/uploading.py ``KEEP_VERIFY_LISTING``): the
listing fetched to see the new file is the folder's listing afterwards, so the next lookup
there costs no request, and a local change after the check's request wins over it.

A Runtime (client, caches, tree, writer) against the emulator, driven through the calls the
FUSE adapter makes; requests counted from the emulator's access log.
"""

from __future__ import annotations

import hashlib
import re
import threading

import pytest

from xnatfs.tree import uploading

FOLDER = "/DEMO1/resources/protocols/files"
#: the listing of a resource of DEMO1 (the mount names it by its ID)
LISTING = re.compile(r"^/data/projects/DEMO1/resources/[^/]+/files\?")


def _write(writer, path: str, data: bytes) -> None:
    handle = writer.create(path)
    handle.write(0, data)
    handle.flush()
    handle.close()


def _listings(emu, mark) -> int:
    return sum(1 for r in emu.access_records()[mark:] if LISTING.match(r.path_qs))


def test_files_written_one_after_another_cost_one_listing_each(runtime):
    """tar x: look the name up, create, write, close (PUT and the check), set its time; the
    next name's lookup.  Before: the close dropped the folder's listing, and the next lookup
    fetched it again, two listings per file."""
    tree, writer, emu = runtime.tree, runtime.writer, runtime.emu.emu
    tree.listdir(FOLDER)
    mark = len(emu.access_records())
    names = [f"tar{i}.dat" for i in range(6)]
    for i, name in enumerate(names):
        with pytest.raises(FileNotFoundError):
            tree.lookup(f"{FOLDER}/{name}")  # tar's look before it creates
        _write(writer, f"{FOLDER}/{name}", bytes([i]) * (100 + i))
        writer.set_mtime(f"{FOLDER}/{name}", 1_000_000_000 * (i + 1))  # tar's utimens
    assert _listings(emu, mark) == len(names)  # the checks' own, nothing more
    for i, name in enumerate(names):
        node = tree.lookup(f"{FOLDER}/{name}")
        assert not writer.owns(node)  # XNAT's listing row, with XNAT's size and MD5
        data = bytes([i]) * (100 + i)
        assert (node.size, node.digest) == (len(data), hashlib.md5(data).hexdigest())
        assert tree.mtime_ns(node) == 1_000_000_000 * (i + 1)
    assert _listings(emu, mark) == len(names)


def test_without_the_switch_each_file_costs_two_listings(runtime, monkeypatch):
    monkeypatch.setattr(uploading, "KEEP_VERIFY_LISTING", False)
    tree, writer, emu = runtime.tree, runtime.writer, runtime.emu.emu
    tree.listdir(FOLDER)
    mark = len(emu.access_records())
    for i in range(3):
        with pytest.raises(FileNotFoundError):
            tree.lookup(f"{FOLDER}/old{i}.dat")
        _write(writer, f"{FOLDER}/old{i}.dat", b"x" * (10 + i))
    assert _listings(emu, mark) == 3 + 2  # the checks, and a lookup after each close but the first


def test_a_local_change_after_the_checks_request_wins_over_its_listing(runtime, monkeypatch):
    """File A's check fetches the listing (no B in it); before A's close stores it, B is
    written and confirmed through the mount.  Stored, A's listing would hide B: the overlay
    no longer shows B (XNAT has it) and the listing would not either (ENOENT for a file just
    written).  B's confirmation invalidated the folder after A's mark: A's listing is not
    stored, and both names resolve."""
    # B's check runs inside A's listing call here: shared, it would wait for that call
    monkeypatch.setattr(uploading, "SHARE_CHECKS", False)
    tree, writer = runtime.tree, runtime.writer
    tree.listdir(FOLDER)
    client = writer.client
    real = client.list_files
    state = {"inside": False}

    def list_files(uri):
        rows = real(uri)
        if not state["inside"] and not any(r.path == "b.dat" for r in rows):
            state["inside"] = True  # B's own check runs the real call only
            _write(writer, f"{FOLDER}/b.dat", b"B" * 30)
            assert tree.lookup(f"{FOLDER}/b.dat").size == 30  # as tar's utimens: the folder
            # is looked up again, so A's close finds its node (and could store A's listing)
        return rows

    monkeypatch.setattr(client, "list_files", list_files)
    refused = tree.meta.stats["refreshes_refused"]
    _write(writer, f"{FOLDER}/a.dat", b"A" * 20)
    assert state["inside"]
    a, b = tree.lookup(f"{FOLDER}/a.dat"), tree.lookup(f"{FOLDER}/b.dat")
    assert not writer.owns(a) and not writer.owns(b)
    assert (a.size, b.size) == (20, 30)
    assert {n.name for n in tree.listdir(FOLDER)} >= {"a.dat", "b.dat"}
    assert tree.meta.stats["refreshes_refused"] == refused + 1


def test_uploads_to_one_resource_ending_together_share_their_checks_listing(runtime):
    """Six files closed at once (each close() PUTs, then checks): the checks that come while
    one listing is under way share the next one (uploads/checks.py), never one begun before
    their PUT returned; every file is on XNAT and looks up with its size."""
    tree, writer, emu = runtime.tree, runtime.writer, runtime.emu.emu
    tree.listdir(FOLDER)
    handles = {}
    for i in range(6):
        handles[i] = writer.create(f"{FOLDER}/together{i}.dat")
        handles[i].write(0, bytes([65 + i]) * (50 + i))
    mark = len(emu.access_records())
    emu.faults.latency_ms = 300  # the PUTs end together, each check comes during another's
    start = threading.Barrier(6)
    errors: list = []

    def close(i: int) -> None:
        try:
            start.wait(10)
            handles[i].flush()
            handles[i].close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=close, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    emu.faults.latency_ms = 0
    assert errors == []
    assert _listings(emu, mark) < 6
    assert writer._checks.stats["shared"] >= 1
    for i in range(6):
        node = tree.lookup(f"{FOLDER}/together{i}.dat")
        assert not writer.owns(node) and node.size == 50 + i
