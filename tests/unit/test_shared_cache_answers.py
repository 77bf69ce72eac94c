"""A cache proxy's answers reach ``read`` only as XNAT's bytes (review finding: a poisoned
``xnatfs cache-proxy`` entry served another version's first bytes; docs/SCALING.md).

The content cache tells its fetch what it needs through the sink (``AttemptSink``) and hears
back whether an answer came from the proxy's disk (``answered(stored=True)``): then a download
serves no byte before its verdict, and its refetch after a failed check asks the proxy afresh
(``fresh``), which replaces the entry.  A stream asks for XNAT's bytes (``uncached``) and fails
on an answer from a cache's disk.  Without a proxy nothing changes: bytes are served as they
arrive and the refetch is a plain GET.  ``Runtime._fetch`` turns this into the proxy's headers
and URL.  The fetch is injected; waits are on conditions, never sleeps.
"""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from types import SimpleNamespace
from typing import Any, List, Optional

import pytest

from tests.helpers.waiting import wait_for
from xnatfs import proxy
from xnatfs.cache.content import ContentKey
from xnatfs.cache.download import AttemptSink, Download, IntegrityError
from xnatfs.cache.stream import StreamHandle
from xnatfs.layouts.xnat.layout import _content_key, uncached_uri
from xnatfs.runtime import Runtime

V1 = b"V1" * 40_000
V2 = b"XX" * 40_000
WAIT = 10.0


def later(seconds: float = WAIT) -> float:
    return time.monotonic() + seconds


class ProxyFetch:
    """``fetch(uri, sink)`` as through a cache proxy: call n answers ``answers[n]`` (the last
    repeats), reported as ``stored[n]`` (None: not through the proxy's cache).  The first
    call sends its first 64 KiB, then waits for ``go``; ``sinks`` keeps each call's sink."""

    def __init__(self, answers: List[bytes], stored: List[Optional[bool]]) -> None:
        self.answers = answers
        self.stored = stored
        self.sinks: List[Any] = []
        self.go = threading.Event()

    def __call__(self, uri: str, sink: Any) -> None:
        n = len(self.sinks)
        self.sinks.append(sink)
        stored = self.stored[min(n, len(self.stored) - 1)]
        if stored is not None:
            sink.answered(stored)
        data = self.answers[min(n, len(self.answers) - 1)]
        sink(data[: 64 << 10])
        if n == 0:
            assert self.go.wait(WAIT)
        sink(data[64 << 10 :])


def _download(tmp_path, fetch: ProxyFetch) -> "tuple[Download, threading.Thread, int]":
    dl = Download(
        "/f?xnatfs_md5=" + hashlib.md5(V1).hexdigest(),
        len(V1),
        hashlib.md5(V1).hexdigest(),
        str(tmp_path / "f.part"),
        fetch,
    )
    fd = dl.dup_fd()
    worker = threading.Thread(target=dl.run, args=(lambda path: None, lambda error: None))
    worker.start()
    wait_for(lambda: dl.arrived >= 64, WAIT, "the first bytes")
    return dl, worker, fd


def test_bytes_from_the_proxys_disk_wait_for_the_verdict_and_the_refetch_is_fresh(tmp_path):
    fetch = ProxyFetch([V2, V1], [True, False])  # a poisoned HIT, then XNAT's bytes (BYPASS)
    dl, worker, fd = _download(tmp_path, fetch)
    # the bytes are there, but no reader gets them before the whole file's verdict
    with pytest.raises(TimeoutError):
        dl.read(fd, 0, 64, time.monotonic())
    fetch.go.set()
    assert dl.read(fd, 0, 64, later()) == V1[:64]
    worker.join(WAIT)
    assert dl.error is None
    assert [s.fresh for s in fetch.sinks] == [False, True]  # the refetch asked past the entry


def test_a_live_answer_through_the_proxy_is_served_as_it_arrives(tmp_path):
    """A MISS (XNAT's bytes for this GET) is served as without a proxy; its failed check
    still makes the refetch fresh: the proxy stored those bytes under the listed digest."""
    fetch = ProxyFetch([V2, V1], [False])
    dl, worker, fd = _download(tmp_path, fetch)
    assert dl.read(fd, 0, 64, time.monotonic()) == V2[:64]
    fetch.go.set()
    worker.join(WAIT)
    assert dl.error is None and [s.fresh for s in fetch.sinks] == [False, True]


def test_without_a_proxy_nothing_changes(tmp_path):
    fetch = ProxyFetch([V2, V1], [None])
    dl, worker, fd = _download(tmp_path, fetch)
    assert dl.read(fd, 0, 64, time.monotonic()) == V2[:64]
    fetch.go.set()
    worker.join(WAIT)
    assert dl.error is None
    assert [(s.fresh, s.uncached) for s in fetch.sinks] == [(False, False), (False, False)]


@pytest.mark.parametrize("stored", [None, False, True])
def test_a_stream_asks_for_xnats_bytes_and_refuses_the_proxys_disk(stored):
    sinks: List[Any] = []

    def fetch(uri: str, sink: Any) -> None:
        sinks.append(sink)
        if stored is not None:
            sink.answered(stored)
        sink(V1)

    h = StreamHandle(ContentKey("/f", len(V1), hashlib.md5(V1).hexdigest()), fetch)
    if stored:
        with pytest.raises(IntegrityError) as exc:
            h.read(0, 64, later())
        assert exc.value.errno == errno.EIO and "shared cache" in str(exc.value)
    else:
        assert h.read(0, 64, later()) == V1[:64]
    assert [s.uncached for s in sinks] == [True]
    h.close()


class FakeClient:
    def __init__(self, status: Optional[str]) -> None:
        self.status = status
        self.calls: List[Any] = []

    def download(self, uri: str, sink: Any, **kw: Any) -> None:
        self.calls.append((uri, kw.get("headers")))
        if "on_headers" in kw and self.status is not None:
            kw["on_headers"]({proxy.CACHE_HEADER: self.status})


@pytest.mark.parametrize("status, stored", [("HIT", True), ("MISS", False), (None, None)])
def test_the_runtime_speaks_to_the_proxy_through_headers_and_the_url(status, stored):
    uri = _content_key("/data/f", 3, hashlib.md5(b"abc").hexdigest(), None, "").uri
    heard: List[bool] = []
    client = FakeClient(status)
    rt = SimpleNamespace(client=client)
    Runtime._fetch(rt, uri, AttemptSink(lambda c: None, heard.append))
    Runtime._fetch(rt, uri, AttemptSink(lambda c: None, heard.append, fresh=True))
    Runtime._fetch(rt, uri, AttemptSink(lambda c: None, heard.append, uncached=True))
    assert client.calls == [
        (uri, None),
        (uri, {"X-Xnatfs-Refresh": "1"}),
        ("/data/f", None),  # no digest: the proxy passes it through to XNAT, uncached
    ]
    assert heard == ([] if stored is None else [stored] * 3)
    # a sink of another kind (a bulk zip's, a BIDS conversion's): the plain download
    plain = FakeClient("HIT")
    Runtime._fetch(SimpleNamespace(client=plain), uri, lambda c: None)
    assert plain.calls == [(uri, None)]


def test_cache_statuses_and_the_uncached_uri():
    assert proxy.stored_answer({}) is None
    for status, stored in (("HIT", True), ("MISS", False), ("EXPIRED", False)):
        assert proxy.stored_answer({proxy.CACHE_HEADER: status}) is stored
    assert proxy.stored_answer({proxy.CACHE_HEADER: "BYPASS"}) is False
    assert proxy.stored_answer({proxy.CACHE_HEADER: "UPDATING"}) is True  # unknown: stored
    digest = "0123456789abcdef0123456789abcdef"
    assert uncached_uri(f"/a/files/x?xnatfs_md5={digest}") == "/a/files/x"
    assert uncached_uri(f"/a/files/x?y=1&xnatfs_md5={digest}") == "/a/files/x?y=1"
    assert uncached_uri("/a/files/xnatfs_md5=1") == "/a/files/xnatfs_md5=1"
