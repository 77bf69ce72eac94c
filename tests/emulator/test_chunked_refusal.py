"""A chunked in-body upload (no Content-Length) is refused with 500 and stores nothing, as XNAT's
Restlet 1.1 does (docs/XNAT-API.md §4.5); behind a buffering proxy (``buffering_proxy``) it is
stored whole."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.emulator.rawhttp import send_cut
from xnatfs.emulator import Emulator

FILE = "/data/projects/DEMO1/resources/protocols/files/"


def _chunks() -> Iterator[bytes]:
    for i in range(5):
        yield bytes([65 + i]) * 1000


def _put_chunked(emu: Emulator, name: str, **params: str) -> requests.Response:
    with requests.Session() as s:
        s.auth = (emu.user, emu.password)
        return s.put(emu.url + FILE + name, params=params, data=_chunks(), timeout=30)


def _get(emu: Emulator, name: str) -> requests.Response:
    return requests.get(emu.url + FILE + name, auth=(emu.user, emu.password), timeout=30)


def test_a_chunked_upload_is_refused_with_500_and_nothing_stored(tmp_path: Path) -> None:
    with Emulator(tmp_path / "d", seed="demo") as emu:
        r = _put_chunked(emu, "chunked.bin", inbody="true")
        assert r.status_code == 500
        assert "request entity size is -1" in r.text
        assert _get(emu, "chunked.bin").status_code == 404
        # an old file with overwrite=true keeps its bytes
        old = _get(emu, "README.txt").content
        r = _put_chunked(emu, "README.txt", inbody="true", overwrite="true")
        assert r.status_code == 500
        assert _get(emu, "README.txt").content == old
        # the same bytes with a Content-Length are stored
        r = requests.put(
            emu.url + FILE + "sized.bin",
            params={"inbody": "true"},
            data=b"".join(_chunks()),
            auth=(emu.user, emu.password),
            timeout=30,
        )
        assert r.status_code == 200
        assert _get(emu, "sized.bin").content == b"".join(_chunks())


@pytest.mark.slow
def test_behind_a_buffering_proxy_a_chunked_upload_is_stored_whole(tmp_path: Path) -> None:
    with Emulator(tmp_path / "d", seed="demo", buffering_proxy=True) as emu:
        r = _put_chunked(emu, "chunked.bin", inbody="true")
        assert r.status_code == 200, r.text
        assert _get(emu, "chunked.bin").content == b"".join(_chunks())


def test_behind_a_buffering_proxy_a_chunked_upload_cut_before_its_end_stores_nothing(
    tmp_path: Path,
) -> None:
    """nginx never forwards a body that did not end; the emulator's reader must not take the
    cut for the end of the file either (it did, after at least one whole read)."""
    with Emulator(tmp_path / "d", seed="demo", buffering_proxy=True) as emu:
        path = FILE + "cut.bin"
        chunk = b"x" * (1 << 20)  # whole MiB chunks: each read of the emulator gets one
        reply = send_cut(
            emu.url,
            (
                f"PUT {path}?inbody=true HTTP/1.1\r\nHost: x\r\n"
                "Authorization: Basic YWRtaW46YWRtaW4=\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3,  # no terminating chunk
        )
        assert reply == b"" or reply.startswith(b"HTTP/1.1 400")
        assert _get(emu, "cut.bin").status_code == 404
