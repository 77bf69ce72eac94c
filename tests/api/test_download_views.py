"""``XnatClient.download`` into a sink that accepts views of one reused buffer (issue 12, B1).

The bytes must be the file's (MD5 against the listing) however small the chunks, the
connection must go back to the pool after each file (no new TCP/TLS connection per file), and a
sink without ``accepts_views`` still gets ``bytes`` it may keep.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, List

import pytest
import urllib3.connection

from xnatfs.emulator import Emulator
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.client import ClientOptions, XnatClient

ADMIN = Credentials("admin", "admin-pw")


@pytest.fixture
def small_chunks(shared_emulator) -> Iterator[XnatClient]:
    emu: Emulator = shared_emulator.emu
    c = XnatClient(emu.url, ADMIN, ClientOptions(
        pool_size=2, connect_timeout=2.0, read_timeout=10.0, retries=1, deadline=30.0,
        heartbeat=False, chunk_size=16))
    c.start()
    yield c
    c.close()


def _files(c: XnatClient) -> list:
    res = next(r for r in c.list_resources("/data/projects/DEMO1") if r.label == "protocols")
    files = [f for f in c.list_files(res.uri) if f.size > 16 * 3]
    assert files, "the demo data has no file of several chunks"
    return files


def test_views_sink_gets_the_files_bytes_and_the_connection_is_reused(small_chunks,
                                                                      monkeypatch) -> None:
    c = small_chunks
    files = _files(c)
    c.download(files[0].uri, lambda chunk: None)   # warm: the pool has its connection
    connects: List[int] = []
    real_connect = urllib3.connection.HTTPConnection.connect

    def counting_connect(self) -> None:
        connects.append(1)
        real_connect(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", counting_connect)
    for f in files * 3:
        md5 = hashlib.md5()
        kinds = set()

        def sink(chunk, md5=md5, kinds=kinds) -> None:
            kinds.add(type(chunk))
            md5.update(chunk)

        sink.accepts_views = True  # type: ignore[attr-defined]
        stat = c.download(f.uri, sink)
        assert stat.size == f.size
        assert md5.hexdigest() == f.digest, f.path
        assert kinds == {memoryview}
    assert connects == []   # every file on the one kept-alive connection


def test_a_sink_that_keeps_chunks_gets_bytes(small_chunks) -> None:
    c = small_chunks
    f = _files(c)[0]
    chunks: List[bytes] = []
    c.download(f.uri, chunks.append)
    assert len(chunks) > 1 and all(isinstance(x, bytes) for x in chunks)
    assert hashlib.md5(b"".join(chunks)).hexdigest() == f.digest
