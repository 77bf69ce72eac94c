"""Listings carry each entry's attributes (readdirplus, issue 12): a cold walk sends no LOOKUP
per name, and shows exactly what per-name lookups show (``--names-only-listings``)."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

from tests.conftest import needs_fuse
from tests.mount.helpers import put_file, sh, wait_for

pytestmark = [needs_fuse]

RESOURCE = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1/resources/DICOM/files"


def _calls(mount: Path) -> dict:
    return json.loads((mount / ".xnatfs" / "stats").read_text())["fuse_calls"]


def _walk(root: Path) -> list:
    """What ``find`` shows of every path below ``root``: type, size, mode and mtime (a time
    XNAT does not give is the mount's start, the root's own time: shown as "start")."""
    out = sh(["find", str(root), "-printf", r"%P\t%y\t%s\t%m\t%T@\n"]).stdout.splitlines()
    rows = [line.split("\t") for line in out]
    start = next(row[4] for row in rows if row[0] == "")
    return sorted(tuple(row[:4] + ["start" if row[4] == start else row[4]]) for row in rows)


def _cold_walk(emu, make_mount, *switch: str):
    m = make_mount(emu.url, "--walk-ahead", "0", *switch)
    before = _calls(m.path)
    walk = _walk(m.path / "DEMO1")
    after = _calls(m.path)
    return walk, after["getattr"] - before["getattr"], after["readdir"] - before["readdir"], m


def test_a_cold_walk_sends_no_lookup_per_name_and_shows_the_same(shared_emulator, make_mount):
    emu = shared_emulator
    names_only, lookups_names_only, _, _ = _cold_walk(emu, make_mount, "--names-only-listings")
    plus, lookups_plus, chunks, mount = _cold_walk(emu, make_mount)
    assert plus == names_only
    files = [row for row in plus if row[1] == "f"]
    assert len(plus) > 100 and files
    # one lookup per name without; with, only the stats file read around the walk
    assert lookups_names_only >= len(plus), (lookups_names_only, len(plus))
    assert lookups_plus < len(plus) // 10, (lookups_plus, len(plus))
    assert chunks >= 1
    metrics = (mount.path / ".xnatfs" / "metrics").read_text()
    assert 'xnatfs_fuse_requests_total{op="getattr"}' in metrics


def _names_in_small_chunks(folder: Path, bufsize: int = 4096) -> list:
    """The names of ``folder`` read with getdents64 into a ``bufsize`` buffer (glibc's
    ``readdir`` sizes its buffer by ``st_blksize``: 1 MiB here, one chunk per folder)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(bufsize)
    names = []
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while True:
            n = libc.syscall(217, fd, buf, bufsize)  # SYS_getdents64 on x86-64
            assert n >= 0, os.strerror(ctypes.get_errno())
            if n == 0:
                return names
            pos = 0
            while pos < n:
                reclen = int.from_bytes(buf.raw[pos + 16 : pos + 18], "little")
                name = buf.raw[pos + 19 : pos + reclen].split(b"\0", 1)[0].decode()
                if name not in (".", ".."):
                    names.append(name)
                pos += reclen
    finally:
        os.close(fd)


def test_every_chunk_of_a_large_folder_carries_attributes(make_emulator, make_mount):
    """A reader with a small buffer reads a folder in many chunks; with libfuse's default
    READDIRPLUS_AUTO only the first carried attributes, and each later name cost a LOOKUP."""
    emu = make_emulator()
    uri = "/data/projects/DEMO1/resources/many/files"
    names = [f"1.2.840.113619.2.55.3.604688119.969.1234567890.{i:04d}.dcm" for i in range(120)]
    for name in names:
        put_file(emu.url, f"{uri}/{name}", name.encode())
    m = make_mount(emu.url, "--walk-ahead", "0")
    folder = m.path / "DEMO1" / "resources" / "many" / "files"
    os.listdir(folder.parent)
    before = _calls(m.path)
    listed = _names_in_small_chunks(folder)
    sizes = {name: os.stat(folder / name).st_size for name in listed}
    after = _calls(m.path)
    assert sizes == {name: len(name) for name in names}
    assert after["getattr"] - before["getattr"] < 10, (before, after)
    assert after["readdir"] - before["readdir"] > 4  # several chunks


def test_a_listing_after_the_ttl_shows_the_new_size(make_emulator, make_mount):
    emu = make_emulator()
    m = make_mount(emu.url, "--walk-ahead", "0", "--listing-ttl", "1")
    folder = m.path / RESOURCE
    sizes = {e.name: e.stat().st_size for e in os.scandir(folder)}
    name = sorted(sizes)[0]
    uri = "/data/projects/" + RESOURCE.replace("/files", "") + "/files/" + name
    put_file(emu.url, uri, b"shorter")

    def listed_size() -> int:
        with os.scandir(folder) as entries:
            return {e.name: e.stat().st_size for e in entries}[name]

    wait_for(lambda: listed_size() == 7, 20, interval=0.2, what="the new size in the listing")
    assert (folder / name).read_bytes() == b"shorter"


def test_files_being_written_and_generated_files_are_looked_up(shared_emulator, make_mount):
    m = make_mount(shared_emulator.url, "--walk-ahead", "0")
    folder = m.path / "DEMO1" / "resources"
    os.listdir(folder)
    target = folder / "readdirplus-test" / "files" / "growing.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        out.write(b"abc")
        out.flush()
        assert {e.name: e.stat().st_size for e in os.scandir(target.parent)} == {"growing.txt": 3}
        out.write(b"defg")
        out.flush()
        assert {e.name: e.stat().st_size for e in os.scandir(target.parent)} == {"growing.txt": 7}
    assert target.read_bytes() == b"abcdefg"
    session = m.path / "DEMO1" / "subjects" / "SUBJ01" / "experiments" / "SUBJ01_MR1"
    os.listdir(session)
    assert (session / ".xnat.json").stat().st_size == len((session / ".xnat.json").read_bytes())
