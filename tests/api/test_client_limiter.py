"""The client's one cap on requests (issue 13 §2): every exchange holds a slot, a streamed
download until it is closed, on every path; Retry-After holds the whole client back."""

from __future__ import annotations

import http.server
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List

import pytest

from tests.api.helpers import ADMIN, options, reset_faults
from xnatfs.emulator import Emulator
from xnatfs.xnat import errors
from xnatfs.xnat.client import XnatClient

README = "/data/projects/DEMO1/resources/protocols/files/README.txt"


@pytest.fixture
def client2(emu: Emulator) -> Iterator[XnatClient]:
    reset_faults(emu)
    c = XnatClient(emu.url, ADMIN, options(max_requests=2))
    c.start()
    yield c
    reset_faults(emu)
    c.close()


def test_slot_released_on_every_download_path(client2: XnatClient) -> None:
    buf = bytearray()
    client2.download(README, buf.extend)  # success
    assert buf
    with pytest.raises(errors.NotFound):  # an error answer to a streamed GET
        client2.download(README.replace("README", "nope"), buf.extend)

    class Boom(Exception):
        pass

    def sink(_chunk: bytes) -> None:
        raise Boom()

    with pytest.raises(Boom):  # the sink's own exception, mid-body
        client2.download(README, sink)
    client2.download_archive("/data/projects/DEMO1/resources/protocols", lambda b: None)
    client2.list_projects()
    assert client2.limiter["in_flight"] == 0
    # and the two slots are really free: two more downloads do not wait for a lost slot
    for _ in range(3):
        client2.download(README, lambda b: None)
    assert client2.limiter["in_flight"] == 0


def test_a_streamed_response_dropped_unclosed_gives_its_slot_back_at_once(
    client2: XnatClient,
) -> None:
    """No reference cycle keeps it for the cyclic collector (whose finalizer once deadlocked
    the limiter, tests/unit/test_limiter.py): the last reference going frees the slot."""
    import gc

    gc.disable()
    try:
        resp = client2._call("GET", README, stream=True)
        assert client2.limiter["in_flight"] == 1
        del resp
        assert client2.limiter["in_flight"] == 0
    finally:
        gc.enable()


def test_many_threads_share_the_cap(emu: Emulator, client2: XnatClient) -> None:
    emu.faults.latency_ms = 30
    emu.reset_peak()
    files = [f.uri for f in client2.list_files("/data/projects/DEMO1/resources/protocols")]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda u: client2.download(u, lambda b: None), files * 3))
        list(pool.map(lambda _: client2.list_projects(), range(16)))
    assert 2 == emu.reset_peak()
    assert client2.limiter["peak_in_flight"] == 2


class _RetryAfterHandler(http.server.BaseHTTPRequestHandler):
    """Login works; every GET answers 503 with Retry-After: 30."""

    hits: List[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, headers=()) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(200, b"SESSIONID", [("Set-Cookie", "JSESSIONID=SESSIONID; Path=/")])

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self._answer(503, b"busy", [("Retry-After", "30"), ("Content-Type", "text/plain")])

    def do_DELETE(self) -> None:
        self._answer(200, b"")


def test_retry_after_holds_the_whole_client_back() -> None:
    _RetryAfterHandler.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RetryAfterHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        c = XnatClient(
            f"http://127.0.0.1:{server.server_address[1]}",
            ADMIN,
            options(deadline=2.0, backoff_max=20.0, pause_max=20.0, retries=3),
        )
        c.start()
        with pytest.raises(errors.XnatError):
            c.list_projects()
        assert len(_RetryAfterHandler.hits) == 1  # 30 s asked, 2 s deadline: no retry
        for _ in range(5):  # nobody else sends either while the server asked to wait
            with pytest.raises(errors.XnatError) as info:
                c.list_projects()
            assert "held back" in str(info.value)
        assert len(_RetryAfterHandler.hits) == 1
        assert c.limiter["paused_for"] > 10
        c.close()
    finally:
        server.shutdown()
        server.server_close()
