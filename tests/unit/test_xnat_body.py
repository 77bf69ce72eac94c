"""``body.read_body``: the whole-body deadline, the decoded-size cap and bounded inflation
(issue 17 §1, §4), on fake raw responses (no sockets)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from tests.helpers.clock import FakeClock
from xnatfs.xnat import body


class FakeRaw:
    """A urllib3-like response: ``read1`` hands out the given pieces, one per call."""

    def __init__(self, pieces, clock=None, step=0.0):
        self.pieces = list(pieces)
        self.clock, self.step = clock, step
        self.reads = 0

    def read1(self, amt, decode_content=False):
        assert decode_content is False  # never let urllib3 inflate
        self.reads += 1
        if self.clock is not None:
            self.clock.now += self.step
        return self.pieces.pop(0) if self.pieces else b""


def chunks(data: bytes, n: int = 1 << 16):
    return [data[i : i + n] for i in range(0, len(data), n)]


def test_identity_body_is_returned_whole():
    assert body.read_body(FakeRaw([b"ab", b"cd"]), "", deadline=1e18) == b"abcd"


@pytest.mark.parametrize(
    "encoding, pack",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("x-gzip", gzip.compress)],
)
def test_gzip_and_deflate_are_inflated(encoding, pack):
    data = b'{"ResultSet": {"Result": []}}' * 1000
    assert body.read_body(FakeRaw(chunks(pack(data), 100)), encoding, deadline=1e18) == data


def test_a_gzip_bomb_stops_at_the_cap_without_inflating_the_rest():
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(c.compress(b"\0" * (1 << 20)) for _ in range(64)) + c.flush()  # 64 MiB
    raw = FakeRaw(chunks(bomb, 1024))
    with pytest.raises(body.BodyTooLarge):
        body.read_body(raw, "gzip", deadline=1e18, limit=1 << 20)
    assert raw.pieces, "the whole bomb was read although the cap was passed early"


def test_an_identity_body_over_the_cap_is_refused():
    with pytest.raises(body.BodyTooLarge):
        body.read_body(FakeRaw([b"x" * 600, b"x" * 600]), "identity", deadline=1e18, limit=1000)


def test_the_deadline_ends_a_trickle_whatever_the_per_read_timeout():
    clock = FakeClock(start=0.0)
    raw = FakeRaw([b"x"] * 1000, clock=clock, step=0.5)  # a byte every 0.5 "seconds"
    with pytest.raises(body.BodyDeadline):
        body.read_body(raw, "", deadline=3.0, clock=clock)
    assert raw.reads <= 7


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress"])
def test_an_encoding_not_asked_for_is_refused(encoding):
    with pytest.raises(body.BadEncoding):
        body.read_body(FakeRaw([b"x"]), encoding, deadline=1e18)


def test_a_corrupt_gzip_body_is_an_error_not_data():
    with pytest.raises(body.BadEncoding):
        body.read_body(FakeRaw([b"\x1f\x8b\x08\x00garbage-garbage"]), "gzip", deadline=1e18)
