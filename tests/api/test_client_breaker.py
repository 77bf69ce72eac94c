"""The client's circuit breaker against real sockets (xnatfs/xnat/breaker.py): the heartbeat
probes while XNAT is down, and ``close()`` does not wait for a probe the server never answers."""

from __future__ import annotations

import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.helpers import ADMIN, options
from tests.helpers.waiting import wait_for
from xnatfs import deadline as call_deadline
from xnatfs.xnat import errors
from xnatfs.xnat.client import XnatClient


class _HangingHandler(http.server.BaseHTTPRequestHandler):
    """Login works; every GET is accepted and never answered (until the test ends)."""

    release = threading.Event()
    gets: "list[str]" = []
    #: the second login (and every one after it) hangs too
    hang_logins = False
    logins = 0

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).logins += 1
        if self.hang_logins and self.logins > 1:
            self.release.wait(60)
            return
        body = b"SESSIONID"
        self.send_response(200)
        self.send_header("Set-Cookie", "JSESSIONID=SESSIONID; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.gets.append(self.path)
        self.release.wait(60)

    do_DELETE = do_GET


@pytest.fixture
def hanging_server():
    _HangingHandler.release = threading.Event()
    _HangingHandler.gets = []
    _HangingHandler.hang_logins = False
    _HangingHandler.logins = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HangingHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _HangingHandler.release.set()
    server.shutdown()
    server.server_close()


def test_close_does_not_wait_for_a_heartbeat_probe_that_hangs(hanging_server):
    """Before, ``close()`` joined the heartbeat thread for connect + read timeout (35 s by
    default): with the breaker open the heartbeat is the probe, and a hung server held every
    unmount that long."""
    c = XnatClient(hanging_server, ADMIN, options(heartbeat=True, deadline=30.0, retries=0))
    c.start()

    def listing(uri: str) -> None:
        with call_deadline.scope(0.5), pytest.raises(errors.XnatError):
            c._get_json(uri)

    # eight timeouts from two folders open the breaker (each call bounded by its 0.5 s scope)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(listing, ["/data/projects", "/data/projects/P/subjects"] * 4))
    assert c.server["state"] != "up", c.server
    # the heartbeat thread is woken by the opening and probes once the wait is over
    wait_for(
        lambda: any("/data/JSESSION" in p for p in _HangingHandler.gets),
        10,
        what="the heartbeat's probe",
    )
    with pytest.raises(errors.ServerDown):  # the probe is out: the others fail at once
        c._get_json("/data/projects")
    t = time.monotonic()
    c.close()
    took = time.monotonic() - t
    assert took < 4.0, took  # _LOGOUT_S (3 s) at most


def test_close_waits_for_a_hung_heartbeat_and_a_hung_logout_three_seconds_in_all(hanging_server):
    """The heartbeat's wait (3 s) and the logout's (3 s more) came one after the other: 6 s of
    every unmount while XNAT hangs with its breaker still closed.  Now one budget of 3 s."""
    c = XnatClient(hanging_server, ADMIN, options(heartbeat=True, deadline=30.0, retries=0))
    c.start()
    c._heartbeat_wake.set()  # a heartbeat now (its own wait is 420 s): the server holds it
    wait_for(lambda: "/data/JSESSION" in _HangingHandler.gets, 10, what="the heartbeat's GET")
    assert c.server["state"] == "up"
    t = time.monotonic()
    c.close()  # the heartbeat's GET and the logout's DELETE both hang
    took = time.monotonic() - t
    print(f"close: {took:.2f}s")
    assert took < 4.0, took


def test_close_does_not_wait_for_a_login_the_server_holds(hanging_server):
    """A login under way holds the login lock until its deadline (30 s here): close() took
    the lock to find the session to log out, and waited that long."""
    _HangingHandler.hang_logins = True
    c = XnatClient(hanging_server, ADMIN, options(deadline=30.0, retries=0))
    c.start()
    c._jsession = None  # the session is gone: the next call logs in again, and hangs
    caller = threading.Thread(target=lambda: pytest.raises(errors.XnatError, c.list_projects))
    caller.start()
    wait_for(lambda: _HangingHandler.logins == 2, 10, what="the second login")
    t = time.monotonic()
    c.close()
    took = time.monotonic() - t
    print(f"close: {took:.2f}s")
    assert took < 4.0, took
    _HangingHandler.release.set()
    caller.join(30)
