"""``StreamHandle`` (cache/stream.py): a file larger than the cache, served from a live GET.

What an idle reader costs: no GET before the first read, a paused GET dropped after the idle
limit (its slot given back), and the resume that follows, checked against the MD5 state of
what was served.  The fetch is injected; it counts the GETs in flight the way the client's
request limiter counts slots (taken when the GET starts, given back when it returns or
raises).  Waits are on conditions (``wait_for``) with a tiny idle limit, never sleeps.
"""

from __future__ import annotations

import errno
import hashlib
import random
import threading
import time
from typing import List, Optional

import pytest

from tests.helpers.waiting import wait_for
from xnatfs.cache import stream
from xnatfs.cache.content import ContentCache, ContentKey
from xnatfs.cache.stream import StreamHandle

WAIT = 10.0  # seconds; deadlines of conditions that hold almost at once
KIB = 1 << 10
CHUNK = 64 * KIB
BLOCK = 128 * KIB  # one reader's read
IDLE = 0.05  # the idle limit of these tests (seconds)


def later(seconds: float = WAIT) -> float:
    return time.monotonic() + seconds


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def key_for(uri: str, data: bytes, digest: Optional[str] = None) -> ContentKey:
    return ContentKey(uri, len(data), hashlib.md5(data).hexdigest() if digest is None else digest)


class Dropped(OSError):
    """What the client raises when the server drops a connection (``Unreachable``)."""

    retryable = True


class SlotFetch:
    """``fetch(uri, sink)``: call n sends ``answers[n]`` (the last repeats) in ``CHUNK``s.
    ``in_flight`` counts running calls (a request slot each).  ``drop_after``: the first call
    raises ``Dropped`` once it has sent that many bytes (the server hung up)."""

    def __init__(self, answers: List[bytes], drop_after: Optional[int] = None) -> None:
        self.answers = answers
        self.drop_after = drop_after
        #: every call hangs up at ``drop_after``, not only the first
        self.always = False
        self.calls = 0
        self.in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, uri: str, sink) -> None:
        with self._lock:
            n = self.calls
            self.calls += 1
            self.in_flight += 1
        try:
            data = self.answers[min(n, len(self.answers) - 1)]
            for off in range(0, len(data), CHUNK):
                cuts = n == 0 or self.always
                if cuts and self.drop_after is not None and off >= self.drop_after:
                    raise Dropped(errno.ECONNRESET, f"GET {uri}: connection reset")
                sink(data[off : off + CHUNK])
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture
def small_window(monkeypatch):
    """A window of 256 KiB ahead, 128 KiB behind: a 2 MiB file pauses its GET."""
    monkeypatch.setattr(stream, "AHEAD", 256 * KIB)
    monkeypatch.setattr(stream, "BEHIND", 128 * KIB)


def read_from(h: StreamHandle, pos: int) -> bytes:
    """Sequential reads of ``BLOCK`` from ``pos`` to the end of the file."""
    got = bytearray()
    while True:
        chunk = h.read(pos, BLOCK, later())
        if not chunk:
            return bytes(got)
        got += chunk
        pos += len(chunk)


def dropped_for_idle(h: StreamHandle, fetch: SlotFetch, stops: int = 1) -> None:
    """Wait until the handle's GET was dropped for an idle reader: slot and thread gone."""
    wait_for(
        lambda: h.idle_stops == stops and fetch.in_flight == 0 and not h.fetching,
        timeout=WAIT,
        what="the idle GET to be dropped",
        interval=0.005,
    )


# -- (a) the GET starts at the first read ---------------------------------------------------------


def test_no_get_before_the_first_read(tmp_path):
    """``ContentCache.open`` of a too-big file starts nothing; the first read starts one GET."""
    big = payload(3 << 20, seed=1)
    fetch = SlotFetch([big])
    cc = ContentCache(tmp_path / "cc", size_limit=1 << 20, fetch=fetch)
    cc.start()
    try:
        handles = [cc.open(key_for("/big", big)) for _ in range(20)]  # more than any slot cap
        assert all(isinstance(h, StreamHandle) for h in handles)
        assert (fetch.calls, fetch.in_flight) == (0, 0)
        assert not any(h.fetching for h in handles)
        assert handles[0].wait(later())  # nothing in flight: nothing to wait for
        assert handles[0].read(1000, 100, later()) == big[1000:1100]
        assert fetch.calls == 1 and handles[0].fetches == 1
        for h in handles:
            h.close()
        wait_for(lambda: fetch.in_flight == 0, timeout=WAIT, what="the GET to end on close")
        assert cc.stats["streamed"] == 20
    finally:
        cc.close()


# -- (b) an idle GET is dropped, and the next read resumes it --------------------------------------


def test_an_idle_get_is_dropped_and_the_next_read_resumes_it(tmp_path, small_window):
    """The reader reads 128 KiB and stops: the GET fills the window, pauses, and after the idle
    limit gives its slot back and ends its thread.  The next read starts a GET again from the
    first byte, checks it against what was served, and the file reads to its end with success
    (the verdict covers the bytes of the dropped GET too)."""
    big = payload(2 << 20, seed=2)
    fetch = SlotFetch([big])
    cc = ContentCache(tmp_path / "cc", size_limit=1 << 20, fetch=fetch, stream_idle=IDLE)
    cc.start()
    try:
        with cc.open(key_for("/big", big)) as h:
            assert h.read(0, BLOCK, later()) == big[:BLOCK]
            dropped_for_idle(h, fetch)
            assert fetch.calls == 1
            assert read_from(h, BLOCK) == big[BLOCK:]  # to the end: verified, no EIO
            assert fetch.calls == 2 and h.fetches == 2
            assert h.read(len(big) - 10, 10, later()) == big[-10:]  # the window: no GET
            assert fetch.calls == 2
    finally:
        cc.close()


def test_an_idle_get_dropped_twice_resumes_twice(small_window):
    """A resumed GET that goes idle in turn is dropped and resumed again; the checkpoint
    moves on with it, so the end is still verified."""
    big = payload(3 << 20, seed=3)
    fetch = SlotFetch([big])
    with StreamHandle(key_for("/big", big), fetch, idle_limit=IDLE) as h:
        assert h.read(0, BLOCK, later()) == big[:BLOCK]
        dropped_for_idle(h, fetch, stops=1)
        assert h.read(BLOCK, BLOCK, later()) == big[BLOCK : 2 * BLOCK]
        dropped_for_idle(h, fetch, stops=2)
        assert read_from(h, 2 * BLOCK) == big[2 * BLOCK :]
        assert fetch.calls == 3


def test_a_reader_that_keeps_reading_is_not_idle(small_window):
    """Reads inside the window (the kernel re-reading what it had) keep the GET alive:
    idle means nobody read for the limit, not that the window did not move."""
    big = payload(2 << 20, seed=4)
    fetch = SlotFetch([big])
    with StreamHandle(key_for("/big", big), fetch, idle_limit=0.2) as h:
        assert h.read(0, BLOCK, later()) == big[:BLOCK]
        wait_for(lambda: h.paused, timeout=WAIT, what="the GET to pause", interval=0.005)
        end = time.monotonic() + 0.6  # three idle limits of reads inside the window
        while time.monotonic() < end:  # reads back to back: never idle for the limit
            assert h.read(0, 4096, later()) == big[:4096]
            assert h.idle_stops == 0 and h.fetching
        assert read_from(h, BLOCK) == big[BLOCK:]
        assert fetch.calls == 1


def test_a_get_the_server_dropped_during_a_pause_resumes(small_window):
    """A server that hangs up on a paused GET (``--read-timeout`` above its own send
    timeout): the error comes when the reader is back; the GET resumes, no EIO."""
    big = payload(2 << 20, seed=5)
    # the window is full at 384 KiB (+ the chunk that waits): the hang-up follows that chunk
    fetch = SlotFetch([big], drop_after=448 * KIB)
    with StreamHandle(key_for("/big", big), fetch, idle_limit=WAIT * 10) as h:
        assert h.read(0, BLOCK, later()) == big[:BLOCK]
        wait_for(lambda: h.paused, timeout=WAIT, what="the GET to pause", interval=0.005)
        assert read_from(h, BLOCK) == big[BLOCK:]
        assert fetch.calls == 2 and h.idle_stops == 0


def test_a_get_cut_mid_body_that_never_paused_resumes(monkeypatch):
    """A connection lost while the reader was asking for bytes (a reset, a proxy's timeout)
    resumes too, checked against what was served: before, the reader got the error for a
    right file (as for a single download, ``test_read_faults.py``)."""
    monkeypatch.setattr(stream, "AHEAD", 4 << 20)  # never full: no pause
    big = payload(2 << 20, seed=6)
    fetch = SlotFetch([big], drop_after=256 * KIB)
    with StreamHandle(key_for("/big", big), fetch, idle_limit=IDLE) as h:
        assert read_from(h, 0) == big
        assert fetch.calls == 2


def test_a_server_that_always_cuts_at_one_byte_is_an_error_not_a_loop(monkeypatch):
    """Bounded: a cut GET resumes only when it got further than any cut before."""
    monkeypatch.setattr(stream, "AHEAD", 4 << 20)
    big = payload(2 << 20, seed=6)
    fetch = SlotFetch([big], drop_after=256 * KIB)
    fetch.always = True  # every call hangs up there
    with StreamHandle(key_for("/big", big), fetch, idle_limit=IDLE) as h:
        with pytest.raises(Dropped):
            read_from(h, 0)
        assert fetch.calls == 2


# -- (c) a resumed GET with other bytes: EIO, never a byte of them ---------------------------------


@pytest.mark.parametrize(
    "changed_at",
    [100, 300 * KIB],  # in what was served; past it, hashed by the dropped GET
    ids=["served", "hashed"],
)
def test_a_resumed_get_with_another_prefix_is_eio(small_window, changed_at, caplog):
    """The file changed on the server while the reader was idle: the resumed GET's first
    bytes hash to another state, every read of the handle is EIO, and no byte of the new
    version is served (a read before the mismatch waits for the check)."""
    big = payload(2 << 20, seed=7)
    other = bytearray(big)
    other[changed_at] ^= 0xFF
    fetch = SlotFetch([big, bytes(other)])
    with StreamHandle(key_for("/big", big), fetch, idle_limit=IDLE) as h:
        assert h.read(0, BLOCK, later()) == big[:BLOCK]
        dropped_for_idle(h, fetch)
        for offset in (BLOCK, 0, 200 * KIB, len(big) - 10):
            with pytest.raises(OSError) as info:
                h.read(offset, BLOCK, later())
            assert info.value.errno == errno.EIO, offset
            assert "differ" in str(info.value)
        assert fetch.calls == 2  # broken for good: no GET again
    wait_for(  # logged by the GET's thread once it has told the readers
        lambda: any("differ" in r.getMessage() for r in caplog.records),
        timeout=WAIT,
        what="the mismatch's log line",
        interval=0.005,
    )


def test_a_change_past_the_checkpoint_fails_the_verdict(small_window):
    """Bytes the dropped GET never received cannot be compared; the listing's MD5 still
    catches them: the read of the last bytes is EIO."""
    big = payload(2 << 20, seed=8)
    other = bytearray(big)
    other[1 << 20] ^= 0xFF
    fetch = SlotFetch([big, bytes(other)])
    with StreamHandle(key_for("/big", big), fetch, idle_limit=IDLE) as h:
        assert h.read(0, BLOCK, later()) == big[:BLOCK]
        dropped_for_idle(h, fetch)
        with pytest.raises(OSError) as info:
            read_from(h, BLOCK)
        assert info.value.errno == errno.EIO and "digest mismatch" in str(info.value)


def test_a_reader_back_far_before_the_checkpoint_is_a_seek_back(small_window):
    """Holding a reader at byte 0 until the check at the dropped GET's end would buffer all
    between: such a read restarts as a seek back does, and the end is EIO (the bytes the
    dropped GET served were never verified).  A reader back near where it was resumes."""
    big = payload(2 << 20, seed=9)
    fetch = SlotFetch([big])
    with StreamHandle(key_for("/big", big), fetch, idle_limit=IDLE) as h:
        assert read_from_to(h, 0, 512 * KIB) == big[: 512 * KIB]
        dropped_for_idle(h, fetch)
        with pytest.raises(OSError) as info:
            read_from(h, 0)
        assert info.value.errno == errno.EIO and "seek back" in str(info.value)
    with StreamHandle(key_for("/big", big), fetch, idle_limit=IDLE) as h:
        assert read_from_to(h, 0, 512 * KIB) == big[: 512 * KIB]
        dropped_for_idle(h, fetch)
        # the window the GET had started at 384 KiB (512 - BEHIND): a read there resumes
        assert read_from(h, 384 * KIB) == big[384 * KIB :]


def read_from_to(h: StreamHandle, pos: int, end: int) -> bytes:
    got = bytearray()
    while pos < end:
        chunk = h.read(pos, min(BLOCK, end - pos), later())
        got += chunk
        pos += len(chunk)
    return bytes(got)


def test_without_a_digest_the_resume_is_still_checked(small_window):
    """A file listed without an MD5 gets no verdict beyond its size, but the resume check
    needs none: the dropped GET's hash is kept all the same."""
    big = payload(2 << 20, seed=10)
    other = bytearray(big)
    other[10] ^= 0xFF
    fetch = SlotFetch([big, bytes(other)])
    with StreamHandle(key_for("/big", big, digest=""), fetch, idle_limit=IDLE) as h:
        assert h.read(0, BLOCK, later()) == big[:BLOCK]
        dropped_for_idle(h, fetch)
        with pytest.raises(OSError) as info:
            h.read(BLOCK, BLOCK, later())
        assert info.value.errno == errno.EIO
