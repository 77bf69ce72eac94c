"""Reads without an open (``fs.noopen``) through the real content cache and the real
``XnatOperations.read_into``: a kept handle that ``ImplicitHandles`` lets go of (past its
limit, idle, or its key changed) while a read of it waits for its download must not be closed
under that read.  Closed, its fd number goes to the next file the daemon opens, and the
waiting read ``preadv``s that file's bytes into the kernel's buffer: bytes of another file,
kept by the kernel as the page cache of this one (never a wrong byte, issue 17 §5)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import sys
import threading
import time
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from tests.helpers.waiting import wait_for
from xnatfs.cache.content import ContentCache, ContentKey
from xnatfs.fs.noopen import ImplicitHandles
from xnatfs.fs.ops import XnatOperations
from xnatfs.view.engine import ReadHandle
from xnatfs.view.node import NodeInfo

WAIT = 10.0
SIZE = 200_000
#: ``/slow`` sends this many bytes, then waits for the test's gate
HELD = 65_536
#: where the waiting read reads (not there until the gate opens)
AT, N = 100_000, 4096


def payload(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


BODIES = {"/slow": payload(SIZE, 1), "/other": payload(SIZE, 2)}


class GatedFetch:
    """``fetch(uri, sink)`` of ``BODIES``; ``/slow`` stops after ``HELD`` bytes until ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def __call__(self, uri: str, sink: Callable[[bytes], None]) -> None:
        data = BODIES[uri]
        if uri == "/slow":
            sink(data[:HELD])
            assert self.gate.wait(WAIT), "the test never opened the gate"
            data = data[HELD:]
        sink(data)


def key(uri: str) -> ContentKey:
    return ContentKey(uri, SIZE, hashlib.md5(BODIES[uri]).hexdigest(), "2024-01-01")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def inside(thread: threading.Thread, function: str) -> bool:
    """Is ``thread`` running ``function`` (somewhere down its stack) now?"""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def cache(tmp_path):
    fetch = GatedFetch()
    cc = ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch)
    cc.start()
    cc.gate = fetch.gate  # type: ignore[attr-defined]
    yield cc
    fetch.gate.set()
    cc.close(time.monotonic() + 5)


def operations(implicit: ImplicitHandles) -> XnatOperations:
    """The FUSE adapter with reads going through ``implicit`` (as ``_start_no_open`` sets it)."""
    options = SimpleNamespace(uid=None, gid=None, allow_other_write=False)
    runtime = SimpleNamespace(
        options=options, note_fuse=lambda name: None, note_error=lambda code: None
    )
    ops = XnatOperations(runtime)
    ops._implicit = implicit
    return ops


def kept_handle(implicit: ImplicitHandles, path: str) -> ReadHandle:
    """``path``'s kept handle, opened by a read that is over (held by no read now)."""
    with implicit.reading(path) as handle:
        return handle


def let_go_by_limit(implicit: ImplicitHandles, clock: Clock) -> None:
    kept_handle(implicit, "/other")  # LIMIT 1: /slow, the least recently used, is retired


def let_go_when_idle(implicit: ImplicitHandles, clock: Clock) -> None:
    clock.now += 31.0  # no read *began* for IDLE seconds: the sweep retires it
    implicit.sweep()


def let_go_when_changed(implicit: ImplicitHandles, clock: Clock) -> None:
    implicit.changed("/slow", key("/other"))  # a GETATTR shows another content key


def let_go_when_tainted(implicit: ImplicitHandles, clock: Clock) -> None:
    implicit.tainted(key("/slow").hexname())  # e.g. an attempt thrown away for a refetch


@pytest.mark.parametrize(
    "let_go",
    [let_go_by_limit, let_go_when_idle, let_go_when_changed, let_go_when_tainted],
    ids=["retired-past-the-limit", "idle", "its-key-changed", "its-key-tainted"],
)
def test_a_handle_let_go_while_a_read_waits_on_it_never_serves_another_files_bytes(cache, let_go):
    # /other is cached; /slow is downloading, its first HELD bytes there
    with cache.open(key("/other")) as h:
        assert h.read(0, SIZE + 1, time.monotonic() + WAIT) == BODIES["/other"]
        assert h.wait(time.monotonic() + WAIT)
    wait_for(lambda: cache.state(key("/other")) == "cached", WAIT, "/other adopted", 0.005)

    def opener(path: str) -> Tuple[ReadHandle, bool]:
        node = NodeInfo(path.strip("/"), "file", False, size=SIZE, uri=path)
        return ReadHandle(node, cache.open(key(path)), None, WAIT, path), True

    clock = Clock()
    implicit = ImplicitHandles(opener, cache, lambda path: None, limit=1, clock=clock)
    ops = operations(implicit)
    kept = kept_handle(implicit, "/slow")
    slow_fd = kept._cached._fd

    buf = ctypes.create_string_buffer(N)
    result: Dict[str, object] = {}

    def reader() -> None:  # the kernel's READ of /slow at AT, with file handle 0
        try:
            result["n"] = ops.read_into("/slow", ctypes.addressof(buf), N, AT, None)
        except OSError as exc:
            result["errno"] = exc.errno

    thread = threading.Thread(target=reader)
    thread.start()
    wait_for(lambda: inside(thread, "_span"), WAIT, "the read to wait for /slow's bytes", 0.005)

    let_go(implicit, clock)
    # the daemon goes on opening files (other reads, other opens): one gets the lowest free fd
    opened: List[object] = []
    reused: Optional[object] = None
    try:
        for _ in range(64):
            h = cache.open(key("/other"))
            opened.append(h)
            if h._fd == slow_fd:
                reused = h
                break
        cache.gate.set()  # type: ignore[attr-defined]
        thread.join(WAIT)
        assert not thread.is_alive()
    finally:
        for h in opened:
            h.close()  # type: ignore[attr-defined]
    assert "n" in result or "errno" in result, result
    if "n" in result:
        got = buf.raw[: result["n"]]  # type: ignore[index]
        assert got != BODIES["/other"][AT : AT + len(got)], (
            f"the read of /slow served /other's bytes (its fd {slow_fd} was closed under it "
            f"and reopened{' on /other' if reused is not None else ''})"
        )
        assert got == BODIES["/slow"][AT : AT + len(got)]
    else:
        assert result["errno"] in (errno.EIO, errno.EBADF, errno.ETIMEDOUT), result
    # and the handle let go of is closed once that read is done (no fd is left behind)
    assert kept._cached is None
