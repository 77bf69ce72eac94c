"""Client pieces that need no socket: error translation, URL building, no I/O at construction."""

from __future__ import annotations

import threading

import pytest
import requests
import urllib3.exceptions

from xnatfs.xnat import errors
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.client import ClientOptions, XnatClient, _parse_retry_after, _translate

T = (5.0, 30.0)


def make(url: str = "https://xnat.example.org/xnat/") -> XnatClient:
    return XnatClient(url, Credentials("u", "p"), ClientOptions(pool_size=4))


def test_constructor_does_no_io_and_starts_no_thread() -> None:
    before = threading.active_count()
    c = make()
    assert threading.active_count() == before
    assert c.base_url == "https://xnat.example.org/xnat"
    assert c._http.adapters["https://"]._pool_maxsize == 4
    assert c._http.headers["User-Agent"].startswith("xnatfs/")
    assert "p" not in repr(c).replace("https", "").replace("example", "").replace("pool", "")
    assert c.stats["requests"] == {}
    c.close()
    c.close()  # idempotent


def test_bad_url_is_refused() -> None:
    with pytest.raises(errors.XnatError):
        make("xnat.example.org")


def test_url_building_keeps_context_path_and_encodes() -> None:
    c = make()
    assert c._url("/data/projects") == "https://xnat.example.org/xnat/data/projects"
    assert c._url("/data/x/files/résumé – n.txt").endswith(
        "/data/x/files/r%C3%A9sum%C3%A9%20%E2%80%93%20n.txt"
    )
    assert c._url("/data/x/files/a%20b").endswith("/files/a%20b")  # not double-encoded
    assert c._url("https://xnat.example.org/xnat/data/p") == "https://xnat.example.org/xnat/data/p"
    with pytest.raises(errors.XnatError):
        c._url("https://evil.example.org/data/p")


@pytest.mark.parametrize(
    "exc, cls, retryable",
    [
        (requests.exceptions.ConnectTimeout("x"), errors.Unreachable, True),
        (requests.exceptions.ReadTimeout("x"), errors.XnatTimeout, True),
        (
            requests.exceptions.ConnectionError(
                urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out.")
            ),
            errors.XnatTimeout,
            True,
        ),
        (
            requests.exceptions.ConnectionError("[Errno 111] Connection refused"),
            errors.Unreachable,
            True,
        ),
        (
            requests.exceptions.ChunkedEncodingError("IncompleteRead(10 bytes read)"),
            errors.Unreachable,
            True,
        ),
        (urllib3.exceptions.ProtocolError("Connection broken"), errors.Unreachable, True),
        (requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"), errors.Unreachable, False),
        (requests.exceptions.InvalidURL("bad"), errors.XnatError, False),
        (requests.exceptions.TooManyRedirects("x"), errors.NotXnatResponse, False),
        (ConnectionResetError(104, "Connection reset by peer"), errors.Unreachable, True),
        (ValueError("body ended short"), errors.XnatError, False),
        (TypeError("a bug"), errors.XnatError, False),
    ],
)
def test_translate(exc: BaseException, cls: type, retryable: bool) -> None:
    err = _translate(exc, "GET", "http://h/data/x", T)
    assert type(err) is cls
    assert err.retryable is retryable
    assert err.method == "GET" and err.url == "http://h/data/x" and err.status is None


def test_retry_after_parsing() -> None:
    assert _parse_retry_after("3") == 3.0
    assert _parse_retry_after(None) is None
    assert _parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0
    assert _parse_retry_after("soon") is None


@pytest.mark.parametrize("size", [100, 65536, 200_000])
def test_an_html_file_held_back_for_the_login_check_comes_out_whole(size) -> None:
    """A download that may be the login page is held back up to 64 KiB (``_HtmlHead``): an
    HTML file that is not the login page comes out byte for byte, in order, whether it ends
    inside the window or goes past it; the login page comes out as nothing."""
    from xnatfs.xnat.transfer import _HtmlHead

    page = (b"<!DOCTYPE html><html><body>" + b"x" * size)[:size]
    chunks = [page[i : i + 7000] for i in range(0, len(page), 7000)]
    head = _HtmlHead(True)
    out = b"".join(head.feed(c) for c in chunks) + head.end()
    assert out == page and not head.login_page
    login = b"<!DOCTYPE html><html><head>" + b" " * 30000 + b"<form><input name=j_username>"
    head = _HtmlHead(True)
    out = b"".join(head.feed(login[i : i + 7000]) for i in range(0, len(login), 7000))
    out += head.end()
    assert out == b"" and head.login_page
