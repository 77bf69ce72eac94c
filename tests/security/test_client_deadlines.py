"""The REST client against the hostile server, without FUSE (issue 17 §1, §4, §8): every call
ends by its whole-response deadline (login included, and the wait of callers queued behind a
login), bodies are capped, and a path that leaves ``/data/`` is never sent."""

from __future__ import annotations

import threading
import time

import pytest

from tests.security.hostile import SESSION, gzip_bomb
from xnatfs import deadline
from xnatfs.xnat import errors
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.client import ClientOptions, XnatClient

CREDS = Credentials("admin", "pw", source="test")
DEADLINE = 2.0
SLACK = 1.5  # generous: thread start and a loaded CI machine, not a timing measurement


def client(url: str, **kw) -> XnatClient:
    opts = dict(deadline=DEADLINE, read_timeout=30.0, heartbeat=False, retries=1, backoff_base=0.05)
    opts.update(kw)
    return XnatClient(url, CREDS, ClientOptions(**opts))


def test_a_trickled_listing_times_out_at_the_deadline_not_per_read(hostile):
    """Each byte comes well inside ``read_timeout`` (30 s): only a whole-response deadline
    ends this call."""
    with client(hostile.url) as c:
        hostile.mode = "slow_listing"
        t0 = time.monotonic()
        with pytest.raises(errors.XnatTimeout):
            c.list_projects()
        assert time.monotonic() - t0 < DEADLINE + SLACK


def test_a_trickled_login_and_the_callers_queued_behind_it_end_by_their_deadlines(hostile):
    c = client(hostile.url)
    hostile.mode = "slow_login"
    outcome = {}

    def login():
        t0 = time.monotonic()
        try:
            c.start()
        except errors.XnatError as exc:
            outcome["login"] = (type(exc), time.monotonic() - t0)

    t = threading.Thread(target=login)
    t.start()
    try:
        # wait until the login request is on the wire (it holds the login lock)
        end = time.monotonic() + 10
        while "/data/services/auth" not in hostile.paths() and time.monotonic() < end:
            time.sleep(0.01)
        t0 = time.monotonic()
        with deadline.scope(0.5):  # a filesystem call with 0.5 s left
            with pytest.raises(errors.XnatTimeout):
                c.list_projects()
        queued = time.monotonic() - t0
    finally:
        t.join(DEADLINE + 10)
        c.close()
    assert queued < 0.5 + SLACK, queued
    assert outcome["login"][0] is errors.XnatTimeout
    assert outcome["login"][1] < DEADLINE + SLACK


def test_a_gzip_bomb_document_is_refused_at_the_cap(hostile):
    gzip_bomb()  # made before the clock starts
    with client(hostile.url) as c:
        hostile.mode = "gzip_bomb"
        t0 = time.monotonic()
        with pytest.raises(errors.NotXnatResponse, match="larger than"):
            c.list_projects()
        assert time.monotonic() - t0 < DEADLINE + SLACK


@pytest.mark.parametrize(
    "uri",
    [
        "/data/../../../etc/passwd",
        "/data/projects/H/resources/1/files/%2e%2e/%2E%2E/x",
        "//evil.example/data/x",
        "http://evil.example/data/x",
        "/etc/passwd",
        "/data/projects/H/resources/1/files/..%2F..%2Fx",
        # Tomcat drops ';' path parameters, then resolves '..' (the '/..;/' traversal)
        "/data/projects/H/resources/1/files/..;/..;/..;/..;/B/resources/1/files/secret.txt",
        "/data/projects/H/resources/1/files/..%3B/..%3b/x",
        "/data/projects/H/resources/1/files/.%2e;x=1/x",
    ],
)
def test_a_path_leaving_data_is_refused_before_any_request(hostile, uri):
    with client(hostile.url) as c:
        before = len(hostile.paths())
        with pytest.raises(errors.XnatError, match="refused"):
            c.download(uri, lambda chunk: None)
        with pytest.raises(errors.XnatError, match="refused"):
            c.get_object(uri)
        assert len(hostile.paths()) == before


def test_trickled_headers_end_at_the_deadline():
    """Per-read timeouts cannot end a status line and headers sent one byte every 0.2 s;
    the watchdog does (issue 17 §1)."""
    from tests.security.hostile import TrickledHeadersServer

    server = TrickledHeadersServer().start()
    try:
        c = client(server.url)
        t0 = time.monotonic()
        with pytest.raises(errors.XnatTimeout):
            c.start()  # the login is the first request
        assert time.monotonic() - t0 < DEADLINE + SLACK
        assert server.connections >= 1
        c.close()
    finally:
        server.stop()


def test_an_https_to_http_redirect_is_not_followed(self_signed, monkeypatch):
    """A redirect from the https server to plain http (a downgrade) is an error; nothing, and
    no cookie, reaches the http side."""
    from tests.security.hostile import HostileServer

    # the CA file must win (issue 17 §6 is fixed elsewhere; keep this test independent of it)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    plain = HostileServer().start()
    tls = HostileServer(tls=self_signed, evil_url=plain.url + "/").start()
    try:
        with client(tls.url, verify=self_signed[0]) as c:
            assert [p.id for p in c.list_projects()] == ["H"]  # https works
            tls.mode = "redirect"
            with pytest.raises(errors.NotXnatResponse, match="redirected"):
                c.list_projects()
        assert plain.requests == []
    finally:
        tls.stop()
        plain.stop()


# -- uploads: the answer is owed from the last body byte on, not from the call's start ---------

UPLOAD_DEADLINE = 1.0
#: 3 MiB read by the server at 1 MiB/s: ~3 s to send, three times the deadline
UPLOAD_BYTES = 3 << 20


def test_an_upload_slower_than_the_deadline_succeeds(hostile):
    """Review of issue 17: the watchdog was armed with the call's deadline after the body was
    sent, so an upload that took longer than ``--timeout`` to send failed on every attempt
    (the journal's retries too) and never reached XNAT."""
    import io

    data = b"u" * UPLOAD_BYTES
    with client(hostile.url, deadline=UPLOAD_DEADLINE) as c:
        hostile.mode = "slow_upload"
        t0 = time.monotonic()
        c.upload_file("/data/projects/H/resources/1", "slow.bin", io.BytesIO(data), len(data))
    assert hostile.body_bytes == len(data)
    # the case under test: the body took longer than the deadline to arrive
    assert hostile.body_done - t0 > UPLOAD_DEADLINE


def test_a_trickled_answer_after_a_slow_upload_ends_at_its_last_byte_plus_the_deadline(hostile):
    """The moved deadline still bounds the answer: XNAT's answer trickling for ever after
    the body ends at the body's end + the deadline, not per read (``read_timeout`` 30 s)."""
    import io

    data = b"u" * UPLOAD_BYTES
    with client(hostile.url, deadline=UPLOAD_DEADLINE) as c:
        hostile.mode = "slow_upload_answer"
        with pytest.raises(errors.XnatTimeout):
            c.upload_file("/data/projects/H/resources/1", "slow.bin", io.BytesIO(data), len(data))
        ended = time.monotonic()
    assert hostile.body_done is not None and hostile.body_bytes == len(data), (
        "the upload was cut before its body was sent"
    )
    assert ended - hostile.body_done < UPLOAD_DEADLINE + SLACK


def test_a_gzip_encoded_file_is_refused_before_a_byte_is_read(hostile):
    """Files are asked for as stored (Accept-Encoding: identity); a gzip answer is not
    inflated (urllib3 < 2.6 did that without a bound) nor passed off as the file."""
    gzip_bomb()
    got = []
    with client(hostile.url) as c:
        hostile.mode = "file_gzip_bomb"
        t0 = time.monotonic()
        with pytest.raises(errors.NotXnatResponse, match="Content-Encoding"):
            c.download("/data/projects/H/resources/1/files/big.bin", got.append)
        assert time.monotonic() - t0 < DEADLINE + SLACK
    assert got == []
    assert hostile.count("GET /data/projects/H/resources/1/files/big.bin") == 1  # no retry


def test_close_ends_a_download_whose_body_trickles(hostile):
    """A file body trickling one byte every 0.5 s (inside ``read_timeout``) held its download
    thread, and so the daemon's exit after unmount, for as long as the server liked."""
    c = client(hostile.url)
    c.start()
    hostile.mode = "file_slow"
    outcome = {}

    def download():
        try:
            c.download("/data/projects/H/resources/1/files/big.bin", lambda chunk: None)
            outcome["result"] = "returned"
        except errors.XnatError as exc:
            outcome["result"] = exc

    t = threading.Thread(target=download, daemon=True)
    t.start()
    end = time.monotonic() + 10
    while (
        "/data/projects/H/resources/1/files/big.bin" not in hostile.paths()
        and time.monotonic() < end
    ):
        time.sleep(0.01)
    c.close()
    t.join(DEADLINE + SLACK)
    assert not t.is_alive(), "close() left the download reading"
    assert isinstance(outcome["result"], errors.XnatError), outcome


def test_a_login_setting_two_session_cookies_logs_in_with_the_one_for_data(hostile):
    """A login answer with two ``JSESSIONID`` cookies for different paths (a proxy in front of
    XNAT): requests' ``cookies.get`` raised ``CookieConflictError``, not an XnatError, so the
    mount's server check ended in a traceback and every call of a running mount in EIO."""
    hostile.login_cookies = [
        "JSESSIONID=NOT-THIS-ONE; Path=/",
        f"JSESSIONID={SESSION}; Path=/data",
        'SESSION_EXPIRATION_TIME="1,900000"; Path=/',
        'SESSION_EXPIRATION_TIME="1,200000"; Path=/data',
    ]
    c = XnatClient(hostile.url, Credentials("u", "p"), ClientOptions(heartbeat=False, deadline=5))
    try:
        c.start()
        assert [p.id for p in c.list_projects()] == ["H"]
        assert c.heartbeat_interval == 80.0  # 200 s / 2 - 20 s: the /data one
    finally:
        c.close()
    hostile.login_cookies = ["JSESSIONID=; Path=/"]  # an empty one is no session
    c = XnatClient(hostile.url, Credentials("u", "p"), ClientOptions(heartbeat=False, deadline=5))
    try:
        c.start()  # the body is the session id (xnatpy's fallback, §8.1)
        assert [p.id for p in c.list_projects()] == ["H"]
    finally:
        c.close()


def test_a_huge_session_lifetime_keeps_the_heartbeat_alive(hostile):
    """``SESSION_EXPIRATION_TIME="1,10^22"``: the heartbeat interval became 5*10^18 s and the
    heartbeat thread's first wait raised OverflowError (the thread died)."""
    hostile.login_cookies = [
        f"JSESSIONID={SESSION}; Path=/",
        'SESSION_EXPIRATION_TIME="1,10000000000000000000000"; Path=/',
    ]
    c = XnatClient(hostile.url, Credentials("u", "p"), ClientOptions(deadline=5))
    try:
        c.start()
        assert c.heartbeat_interval <= 86400.0
        assert c._heartbeat_thread is not None and c._heartbeat_thread.is_alive()
    finally:
        c.close()
