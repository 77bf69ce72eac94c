"""The REST client against the hostile server, without FUSE: answers to writes and the login
(issue 17; docs/SECURITY.md, hostile server).  A redirect never takes the password, the
session or an upload's bytes to another host; an answer's size in memory is bounded by what
it may hold, not only by its bytes."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from tests.security.hostile import PROJECT
from xnatfs.xnat import errors
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.client import ClientOptions, XnatClient

CREDS = Credentials("admin", "pw-never-elsewhere", source="test")
RESOURCE = f"/data/projects/{PROJECT}/resources/1"


def client(url: str) -> XnatClient:
    return XnatClient(
        url,
        CREDS,
        ClientOptions(deadline=20.0, read_timeout=30.0, heartbeat=False, retries=1),
    )


def test_a_login_redirected_to_another_host_sends_nothing_there(hostile, evil):
    """307 keeps the method and the body (the login form, with the password): it is not
    followed, neither for ``PUT /data/services/auth`` nor the old servers' basic-auth
    ``POST /data/JSESSION``; nothing reaches the other host."""
    hostile.mode = "redirect_login"
    c = client(hostile.url)
    with pytest.raises(errors.XnatError):
        c.start()
    c.close()
    assert hostile.count("PUT /data/services/auth") == 1
    assert evil.requests == []


@pytest.mark.parametrize("call", ["upload", "create", "import"])
def test_writes_redirected_to_another_host_send_nothing_there(hostile, evil, call):
    """An upload's ``PUT``, a create and an import answered 307 (which would re-send the body
    and, for a cookie jar that kept it, the session) fail; the other host is asked nothing."""
    with client(hostile.url) as c:
        hostile.mode = "redirect_writes"
        with pytest.raises(errors.XnatError):
            if call == "upload":
                c.upload_file(RESOURCE, "x.bin", io.BytesIO(b"secret bytes"), 12)
            elif call == "create":
                c.create_subject(PROJECT, "S9")
            else:
                c.import_archive(io.BytesIO(b"PK\x05\x06" + b"\0" * 18), 22, PROJECT)
    assert evil.requests == []


def test_an_import_answer_of_millions_of_lines_is_refused_within_bounded_memory(hostile):
    """61 MiB of 3-byte lines as the ``text/uri-list`` answer to an import: under the byte
    cap, but ``splitlines()`` made 21,000,000 strings (~1.5 GB) of it.  Now it is read line
    by line and refused past the cap of lines."""
    with client(hostile.url) as c:
        hostile.mode = "uri_list_bomb"
        tracemalloc.start()
        try:
            with pytest.raises(errors.NotXnatResponse, match="lines"):
                c.import_archive(io.BytesIO(b"PK\x05\x06" + b"\0" * 18), 22, PROJECT)
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # the body itself (bytes, then text) is ~2 x 64 MiB; its lines must not add a multiple
    print(f"[hostile] uri-list of 21,000,000 lines, import: peak {peak >> 20} MiB traced")
    assert peak < 400 << 20, f"peak {peak >> 20} MiB"


def test_an_upload_answer_nested_too_deeply_is_no_unexpected_error(hostile):
    """``{"duplicates": [[[...`` 100,000 deep as a PUT's answer raised RecursionError out of
    the client (an unexpected error, a traceback); now it is read as an answer that is not
    XNAT's ``duplicates``, as broken JSON is (the upload's check decides)."""
    with client(hostile.url) as c:
        hostile.mode = "deep_json"
        uri = c.upload_file(RESOURCE, "x.bin", io.BytesIO(b"bytes"), 5)
    assert uri.endswith("/files/x.bin")
