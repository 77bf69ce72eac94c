"""Typed errors: the status table, str(), retryable, pickling (no sockets)."""

from __future__ import annotations

import pickle

import pytest

from xnatfs.xnat import errors
from xnatfs.xnat.errors import error_for_status


@pytest.mark.parametrize(
    "status, cls, retryable",
    [
        (400, errors.BadRequest, False),
        (401, errors.Unauthorized, False),
        (403, errors.Forbidden, False),
        (404, errors.NotFound, False),
        (409, errors.Conflict, False),
        (417, errors.BadRequest, False),
        (422, errors.BadRequest, False),
        (429, errors.ServerError, True),
        # retryable: XNAT's passing trouble (a listing seen before stays shown meanwhile)
        (500, errors.ServerError, True),
        (502, errors.ServerError, True),
        (503, errors.ServerError, True),
        (504, errors.ServerError, True),
        (418, errors.XnatError, False),
    ],
)
def test_status_table(status: int, cls: type, retryable: bool) -> None:
    err = error_for_status("GET", "http://x/data/p", status, "m")
    assert type(err) is cls
    assert isinstance(err, errors.XnatError)
    assert err.retryable is retryable
    assert (err.method, err.url, err.status, err.message) == ("GET", "http://x/data/p", status, "m")


def test_str_reads_like_an_http_failure() -> None:
    err = error_for_status("GET", "http://h/data/f", 404, "Unable to find file.")
    assert str(err) == "GET http://h/data/f -> 404 Not Found: Unable to find file."
    assert str(error_for_status("PUT", "u", 409)) == "PUT u -> 409 Conflict"
    assert (
        str(errors.XnatTimeout("GET", "u", None, "no data for 30s"))
        == "GET u -> timed out: no data for 30s"
    )
    assert (
        str(errors.Unreachable("HEAD", "u", None, "[Errno 111] Connection refused"))
        == "HEAD u -> unreachable: [Errno 111] Connection refused"
    )
    assert str(errors.CredentialsError(message="no credentials")) == "no credentials"


def test_class_retryable_defaults_and_override() -> None:
    assert errors.XnatTimeout.retryable and errors.Unreachable.retryable
    assert not errors.NotFound.retryable and not errors.NotXnatResponse.retryable
    tls = errors.Unreachable("GET", "u", None, "TLS", retryable=False)
    assert not tls.retryable and errors.Unreachable.retryable


def test_retry_after_is_kept() -> None:
    err = error_for_status("GET", "u", 503, retry_after=4.0)
    assert err.retry_after == 4.0


def test_pickle_roundtrip() -> None:
    err = error_for_status("GET", "u", 501, "boom")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is errors.ServerError and str(back) == str(err)
    assert back.retryable is False
