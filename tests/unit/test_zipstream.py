"""ZipSplitter: members out of a zip as it streams in, whatever the chunking.

The archives are written by Python's zipfile, to a seekable file (sizes in the local headers)
and to an unseekable stream (data descriptors, zero sizes in the headers: what the emulator
sends, §3.3), stored and deflated, with zip64 and non-ASCII names.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Dict, List, Optional, Tuple

import pytest

from tests.unit.ziphelp import streamed_zip
from xnatfs.cache.zipstream import ZipSplitter, ZipStreamError

FILES = {
    "S/scans/1/resources/DICOM/files/a.dcm": os.urandom(70_000),
    "S/scans/1/resources/DICOM/files/sub/b.dcm": b"x" * 5000,
    "S/scans/1/resources/DICOM/files/empty.txt": b"",
    "S/scans/1/resources/DICOM/files/résumé – notes.txt": "é".encode() * 300,
}


def make_zip(
    method: int, streamed: bool, zip64: bool = False, files: Dict[str, bytes] = FILES
) -> bytes:
    if streamed:
        return streamed_zip(files, method, zip64)
    target = io.BytesIO()
    with zipfile.ZipFile(target, "w", method, allowZip64=True) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=zip64) as out:
                out.write(data)
    return target.getvalue()


def split(
    blob: bytes, chunk: int, sizes: Optional[Dict[str, int]] = None, skip: Tuple[str, ...] = ()
) -> Tuple[Dict[str, bytes], List[Tuple[str, bool]]]:
    got: Dict[str, bytearray] = {}
    ends: List[Tuple[str, bool]] = []
    known = {n: len(d) for n, d in FILES.items()} if sizes is None else sizes

    def on_start(name: str):
        if name in skip:
            return None
        got[name] = bytearray()
        return got[name].extend  # copies: the splitter may hand out views of its buffer

    splitter = ZipSplitter(known.get, on_start, lambda n, ok: ends.append((n, ok)))
    for off in range(0, len(blob), chunk):
        splitter.feed(blob[off : off + chunk])
    splitter.close()
    return {n: bytes(d) for n, d in got.items()}, ends


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("streamed", [True, False])
@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_every_member_arrives_whole(method, streamed, zip64, chunk):
    blob = make_zip(method, streamed, zip64)
    got, ends = split(blob, chunk)
    assert got == FILES
    assert ends == [(n, True) for n in FILES]


def test_skipped_members_are_read_past():
    blob = make_zip(zipfile.ZIP_STORED, streamed=True)
    first = next(iter(FILES))
    got, ends = split(blob, 999, skip=(first,))
    assert first not in got and len(got) == len(FILES) - 1
    assert [n for n, _ in ends] == list(FILES)


def test_a_corrupted_member_ends_not_ok_and_the_rest_still_arrive():
    blob = bytearray(make_zip(zipfile.ZIP_STORED, streamed=True))
    data = FILES["S/scans/1/resources/DICOM/files/a.dcm"]
    at = bytes(blob).index(data[:64])
    blob[at + 100] ^= 0xFF
    got, ends = split(bytes(blob), 4096)
    assert ends[0] == ("S/scans/1/resources/DICOM/files/a.dcm", False)
    assert all(ok for _, ok in ends[1:])
    assert got["S/scans/1/resources/DICOM/files/sub/b.dcm"] == b"x" * 5000


def test_stored_member_of_unknown_size_stops_the_split():
    blob = make_zip(zipfile.ZIP_STORED, streamed=True)
    with pytest.raises(ZipStreamError, match="unknown size"):
        split(blob, 4096, sizes={})


def test_a_wrong_listed_size_is_caught():
    blob = make_zip(zipfile.ZIP_STORED, streamed=True)
    sizes = {n: len(d) for n, d in FILES.items()}
    sizes["S/scans/1/resources/DICOM/files/a.dcm"] -= 10
    ends: List[Tuple[str, bool]] = []
    splitter = ZipSplitter(sizes.get, lambda n: None, lambda n, ok: ends.append((n, ok)))
    with pytest.raises(ZipStreamError):
        splitter.feed(blob)
    assert ends == [("S/scans/1/resources/DICOM/files/a.dcm", False)]


def test_a_cut_stream_is_an_error_at_close():
    blob = make_zip(zipfile.ZIP_DEFLATED, streamed=True)
    splitter = ZipSplitter(lambda n: None, lambda n: None, lambda n, ok: None)
    splitter.feed(blob[: len(blob) // 2])
    with pytest.raises(ZipStreamError):
        splitter.close()


def test_not_a_zip():
    splitter = ZipSplitter(lambda n: None, lambda n: None, lambda n, ok: None)
    with pytest.raises(ZipStreamError):
        splitter.feed(b"<html><body>login</body></html>")


def test_without_crc_a_damaged_member_still_ends_ok_by_size():
    """check_crc=False is for callers that verify each member's MD5 themselves."""
    blob = bytearray(make_zip(zipfile.ZIP_STORED, streamed=True))
    data = FILES["S/scans/1/resources/DICOM/files/a.dcm"]
    at = bytes(blob).index(data[:64])
    blob[at + 100] ^= 0xFF
    ends: List[Tuple[str, bool]] = []
    sizes = {n: len(d) for n, d in FILES.items()}
    splitter = ZipSplitter(
        sizes.get, lambda n: None, lambda n, ok: ends.append((n, ok)), check_crc=False
    )
    splitter.feed(bytes(blob))
    splitter.close()
    assert ends == [(n, True) for n in FILES]


# -- bounds (issue 17 §4: a member inflating to 1 GiB reached 2.1 GB of memory) ---------------

BOMB = 64 << 20  # zeros: deflate to ~64 KiB


@pytest.fixture(scope="module")
def bomb_zip() -> bytes:
    return streamed_zip({"bomb.bin": bytes(BOMB), "after.txt": b"after"}, zipfile.ZIP_DEFLATED)


def test_a_bomb_is_inflated_in_bounded_steps(bomb_zip):
    """Size unknown to the listing: the member is inflated whole, but never more than
    INFLATE_STEP at a time (the old code made one 64 MiB bytes from one feed)."""
    from xnatfs.cache.zipstream import INFLATE_STEP

    largest = [0]
    total = [0]

    def sink(data) -> None:
        largest[0] = max(largest[0], len(data))
        total[0] += len(data)

    ends: List[Tuple[str, bool]] = []
    splitter = ZipSplitter(
        lambda n: None,
        lambda n: sink if n == "bomb.bin" else None,
        lambda n, ok: ends.append((n, ok)),
    )
    splitter.feed(bomb_zip)  # one chunk holding the whole archive
    splitter.close()
    assert total[0] == BOMB and 0 < largest[0] <= INFLATE_STEP
    assert ends == [("bomb.bin", True), ("after.txt", True)]


def test_a_member_inflating_past_its_listed_size_is_cut(bomb_zip):
    got = bytearray()
    ends: List[Tuple[str, bool]] = []
    splitter = ZipSplitter(
        {"bomb.bin": 1000, "after.txt": 5}.get,
        lambda n: got.extend if n == "bomb.bin" else None,
        lambda n, ok: ends.append((n, ok)),
    )
    with pytest.raises(ZipStreamError, match="listed size"):
        splitter.feed(bomb_zip)
    assert len(got) <= 1000 and ends == []


# -- zero copy and damage at any chunking (issue 12, B2: the bulk zip path's CPU) --------------


def test_stored_members_are_handed_out_as_views_of_the_fed_chunk():
    """Headers and descriptors are parsed in place: a stored member's bytes reach the sink as
    a view of the very chunk fed, not of a copy (the old parser copied the rest of the chunk
    twice per member: 0.43 s of CPU for 2,000 x 64 KiB fed in 1 MiB chunks, 0.015 s now)."""
    files = {f"S/resources/DICOM/files/IM{i}.dcm": os.urandom(3000 + i) for i in range(20)}
    blob = streamed_zip(files, zipfile.ZIP_STORED)
    owners: List[object] = []
    ends: List[Tuple[str, bool]] = []

    def sink(data) -> None:
        owners.append(data.obj if isinstance(data, memoryview) else data)

    sizes = {n: len(d) for n, d in files.items()}
    splitter = ZipSplitter(sizes.get, lambda n: sink, lambda n, ok: ends.append((n, ok)))
    splitter.feed(blob)
    splitter.close()
    assert ends == [(n, True) for n in files]
    assert len(owners) == len(files) and all(o is blob for o in owners)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("chunk", [1, 5, 13, 4096, 1 << 20])
def test_a_crc_mismatch_is_caught_at_any_chunking(method, chunk):
    """A flipped byte inside a member's data (stored) or its CRC field in the descriptor
    (deflated: a flipped data byte would break the deflate stream itself) ends that member
    not ok, however the bytes are cut; the members after it still arrive whole."""
    blob = bytearray(make_zip(method, streamed=True))
    name = "S/scans/1/resources/DICOM/files/a.dcm"
    if method == zipfile.ZIP_STORED:
        blob[bytes(blob).index(FILES[name][:64]) + 100] ^= 0xFF
    else:
        crc = zipfile.crc32(FILES[name]).to_bytes(4, "little")
        at = bytes(blob).index(b"PK\x07\x08" + crc)
        blob[at + 4] ^= 0xFF
    got, ends = split(bytes(blob), chunk)
    assert ends[0] == (name, False)
    assert ends[1:] == [(n, True) for n in list(FILES)[1:]]
    assert all(got[n] == FILES[n] for n in list(FILES)[1:])


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_stream_cut_anywhere_fails_or_ended_every_member_it_began(method):
    """Cut the archive at every offset, fed in pieces of 7: either ``close`` says the stream
    ended inside something, or every member begun has ended, each whole and right."""
    files = {"d/a.dcm": os.urandom(300), "d/empty": b"", "d/c.txt": b"x" * 50}
    blob = streamed_zip(files, method)
    sizes = {n: len(d) for n, d in files.items()}
    whole = 0
    for cut in range(len(blob) + 1):
        got: Dict[str, bytearray] = {}
        ends: List[Tuple[str, bool]] = []

        def on_start(name: str, got=got):
            got[name] = bytearray()
            return got[name].extend

        splitter = ZipSplitter(sizes.get, on_start, lambda n, ok, ends=ends: ends.append((n, ok)))
        try:
            for off in range(0, cut, 7):
                splitter.feed(blob[off : min(cut, off + 7)])
            splitter.close()
        except ZipStreamError:
            continue
        assert [n for n, _ in ends] == list(got)
        assert all(ok for _, ok in ends) and all(got[n] == files[n] for n in got)
        whole += len(got) == len(files)
    assert whole >= 1  # the whole archive (and cuts inside its central directory) pass


def test_garbage_where_the_next_header_belongs_stops_the_split():
    blob = make_zip(zipfile.ZIP_STORED, streamed=True)
    first_end = blob.index(b"PK\x03\x04", 4)  # the second member's header
    broken = blob[:first_end] + b"JUNK" + blob[first_end + 4 :]
    for chunk in (1, 3, 4096):
        with pytest.raises(ZipStreamError, match="no local file header"):
            split(broken, chunk)
