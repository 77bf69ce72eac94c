"""The body watchdog and the connection pool (xnatfs/xnat/watchdog.py ``Lease``): a download's
whole-body deadline that passes after its connection went back to the pool must not shut the
socket of the request that took the connection next."""

from __future__ import annotations

import threading
import time

from tests.helpers.waiting import wait_for
from xnatfs.emulator import Emulator
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.watchdog import Watchdog

FILE = "/data/projects/DEMO1/resources/protocols/files/README.txt"


class _Clock:
    """``time.monotonic`` plus a jump the test sets: the watchdog's clock."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead


def test_a_body_deadline_passing_after_the_connection_went_back_to_the_pool_spares_its_next_user(
    client: XnatClient, emu: Emulator
):
    """urllib3 gives a download's connection back to the pool inside the read that returns the
    body's last bytes, before the download disarms its body deadline.  The test stops the
    download right there (in the pool's ``_put_conn``), lets a listing take the connection,
    makes the deadline pass and waits for the watchdog; only then does the listing send.  Before
    the fix the watchdog shut the listing's socket down: its GET failed and was retried (one
    request more, a retry in the stats)."""
    clock = _Clock()
    client._watchdog = Watchdog(clock=clock)
    client._get_json("/data/projects")  # logged in, one idle connection in the pool
    manager = client._http.get_adapter(emu.url).poolmanager
    [pool] = [manager.pools[key] for key in manager.pools.keys()]
    put_conn, get_conn = pool._put_conn, pool._get_conn
    downloader = threading.get_ident()
    state = {"phase": "download", "put": None, "got": None}
    taken, fired = threading.Event(), threading.Event()
    listing_result = {}

    def listing() -> None:
        try:
            listing_result["rows"] = client._get_json("/data/projects")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            listing_result["error"] = exc

    def spy_put(conn):
        put_conn(conn)  # back in the pool: the download's last bytes have been read
        if state["phase"] != "download" or threading.get_ident() != downloader:
            return
        state["phase"], state["put"] = "listing", conn
        threading.Thread(target=listing, name="test-listing", daemon=True).start()
        assert taken.wait(10), "the listing never took a connection"
        seen = client._watchdog.fired
        clock.ahead = 1e6  # the download's body deadline passes now
        client._watchdog.wake()
        wait_for(lambda: client._watchdog.fired > seen, 10, "the watchdog", interval=0.01)
        clock.ahead = 0.0  # the listing's own header deadline is a real one again
        fired.set()

    def spy_get(timeout=None):
        conn = get_conn(timeout)
        if state["phase"] == "listing" and state["got"] is None:
            state["got"] = conn
            taken.set()
            assert fired.wait(10), "the watchdog never fired"
        return conn

    pool._put_conn, pool._get_conn = spy_put, spy_get
    before = len(emu.access_records())
    retries = client.stats["retries"]
    got = bytearray()
    client.download(FILE, got.extend)
    wait_for(lambda: listing_result, 20, "the listing")
    assert state["got"] is state["put"], "the listing did not reuse the download's connection"
    assert "error" not in listing_result, listing_result
    listings = [r for r in emu.access_records()[before:] if r.path_qs.startswith("/data/projects?")]
    assert len(listings) == 1, listings
    assert client.stats["retries"] == retries
    assert got  # the download itself was whole (its own checks)
