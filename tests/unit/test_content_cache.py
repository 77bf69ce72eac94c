"""ContentCache: single-flight whole-file downloads, streaming reads, verification, eviction.

No network and no sleeps: ``FakeFetch`` serves bytes from memory and can hold a download at a
chosen byte offset until the test opens its gate, so "while the rest is still streaming" is a
state the test controls rather than a race it hopes to win.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import pytest

from tests.helpers.crash import FullDiskOs
from tests.helpers.tmpfs import small_tmpfs
from tests.unit.ziphelp import streamed_zip
from xnatfs.cache.content import ARCHIVE, ContentCache, ContentKey, archive_object_uri, archive_uri
from xnatfs.cache.download import INLINE_HASH_MAX

WAIT = 10.0  # seconds; generous deadline for conditions that should hold almost at once


def later(seconds: float = WAIT) -> float:
    return time.monotonic() + seconds


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


class ServerDown(Exception):
    """What a fake client raises (the cache must re-raise it unchanged)."""


@dataclass
class Failure:
    """A fetch that sends ``prefix`` and then raises ``error``."""

    prefix: bytes
    error: BaseException


Answer = Union[bytes, Failure]


class FakeFetch:
    """``fetch(uri, sink)`` from a dict uri -> answer, or uri -> [answer per call] (last repeats).

    If ``hold_at`` is set, every call stops before sending byte ``hold_at`` until ``gate`` is set,
    after setting ``held``.
    """

    def __init__(
        self,
        answers: Dict[str, Union[Answer, List[Answer]]],
        chunk: int = 4096,
        hold_at: Optional[int] = None,
    ) -> None:
        self.answers = answers
        self.chunk = chunk
        self.hold_at = hold_at
        self.gate = threading.Event()
        self.held = threading.Event()
        self.calls: Counter = Counter()
        self._lock = threading.Lock()

    def __call__(self, uri: str, sink) -> None:
        with self._lock:
            n = self.calls[uri]
            self.calls[uri] += 1
        answer = self.answers[uri]
        if isinstance(answer, list):
            answer = answer[min(n, len(answer) - 1)]
        data = answer.prefix if isinstance(answer, Failure) else answer
        for off in range(0, len(data), self.chunk):
            self._maybe_hold(off)
            sink(data[off : off + self.chunk])
        self._maybe_hold(len(data))
        if isinstance(answer, Failure):
            raise answer.error

    def _maybe_hold(self, offset: int) -> None:
        if self.hold_at is not None and offset >= self.hold_at and not self.gate.is_set():
            self.held.set()
            assert self.gate.wait(WAIT), "test never opened the gate"


def key_for(uri: str, data: bytes, digest: Optional[str] = None) -> ContentKey:
    return ContentKey(uri, len(data), md5(data) if digest is None else digest, "2024-01-01")


def read_all(cc: ContentCache, key: ContentKey) -> bytes:
    """Whole file, returning once its download (if any) has ended, so state() is settled."""
    with cc.open(key) as h:
        data = h.read(0, (key.size or 0) + 1, later())
        assert h.wait(later())
        return data


def wait_for(predicate, what: str) -> None:
    deadline = later()
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.002)  # poll interval of a deadline wait, not a fixed sleep


# -- streaming and single flight ------------------------------------------------------------------


def test_read_at_arrived_offset_returns_while_rest_streams(make_cache):
    data = payload(100_000)
    fetch = FakeFetch({"/f": data}, hold_at=8192)
    cc = make_cache(fetch)
    key = key_for("/f", data)

    h = cc.open(key)  # returns at once: the download is queued, not awaited
    assert h.read(100, 4000, later()) == data[100:4100]
    # the reader is woken as the bytes land, possibly before the fetch reaches its hold point
    assert fetch.held.wait(5) and not fetch.gate.is_set()
    assert cc.state(key) == "downloading"
    assert cc.stats["downloads_in_flight"] == 1

    fetch.gate.set()
    assert h.read(90_000, 20_000, later()) == data[90_000:]  # short at EOF
    assert h.read(100_000, 10, later()) == b""  # past EOF
    assert h.wait(later())
    h.close()
    assert cc.state(key) == "cached"
    assert read_all(cc, key) == data
    assert fetch.calls["/f"] == 1
    stats = cc.stats
    assert stats["hits"] == 1 and stats["misses"] == 1
    assert stats["bytes_downloaded"] == len(data) and stats["downloads_in_flight"] == 0


def test_sixteen_readers_one_fetch(make_cache):
    data = payload(300_000, seed=3)
    fetch = FakeFetch({"/f": data}, chunk=8192, hold_at=0)
    cc = make_cache(fetch, max_downloads=4)
    key = key_for("/f", data)
    opened = threading.Barrier(17)
    results: List[bytes] = []
    errors: List[BaseException] = []

    def reader(i: int) -> None:
        try:
            with cc.open(key) as h:
                opened.wait(WAIT)
                out, off = [], i * 1000
                while True:
                    chunk = h.read(off, 10_000, later())
                    if not chunk:
                        break
                    out.append(chunk)
                    off += len(chunk)
                results.append(data[: i * 1000] + b"".join(out))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    opened.wait(WAIT)  # all 16 hold a handle before a single byte is sent
    fetch.gate.set()
    for t in threads:
        t.join(WAIT)
    assert not errors
    assert results == [data] * 16
    assert fetch.calls["/f"] == 1
    assert cc.stats["misses"] == 16 and cc.stats["downloads"] == 1


def test_prefetch_downloads_without_handles(make_cache):
    a, b = payload(5000), payload(7000, seed=1)
    fetch = FakeFetch({"/a": a, "/b": b})
    cc = make_cache(fetch)
    ka, kb = key_for("/a", a), key_for("/b", b)
    assert cc.prefetch([ka, kb, ka]) == 2
    for k in (ka, kb):
        wait_for(lambda k=k: cc.state(k) == "cached", "the prefetch")
    assert cc.state(ka) == cc.state(kb) == "cached"
    assert cc.prefetch([ka]) == 0
    assert read_all(cc, kb) == b
    assert fetch.calls == Counter({"/a": 1, "/b": 1})


def test_cached_files_are_read_ahead_only_once_the_opened_file_is_read(make_cache, monkeypatch):
    """``prefetch(keys, after=opened)``: the cached ones are paged in (WILLNEED) when the
    kernel asks that open for bytes, never for an open whose pages the kernel already has
    (it sends no read); without ``after`` at once."""
    from xnatfs.cache import bulk

    paged: List[str] = []
    monkeypatch.setattr(bulk, "_read_ahead", paged.append)
    data = {f"/f{i}": payload(3000, seed=i) for i in range(4)}
    fresh = payload(2000, seed=9)  # not cached: opened while it downloads
    cc = make_cache(FakeFetch({**data, "/fresh": fresh}))
    keys = [key_for(uri, body) for uri, body in data.items()]
    for k in keys:
        assert read_all(cc, k) == data[k.uri]
    wait_for(lambda: all(cc.state(k) == "cached" for k in keys), "the downloads' adoption")
    opened, rest = keys[0], keys[1:]
    path = {k.hexname(): cc._stored_path(k.hexname()) for k in keys}
    want = sorted(path[k.hexname()] for k in rest)

    def paged_behind(k: ContentKey) -> List[str]:
        """What was paged in up to ``k``, queued now without ``after`` (the thread takes
        the queue in order: whatever was queued before is paged in before it)."""
        n = len(paged)
        assert cc.prefetch([k]) == 0
        wait_for(lambda: path[k.hexname()] in paged[n:], "the read-ahead")
        return paged[n:]

    assert cc.prefetch(rest, after=opened) == 0
    warm = cc.open(opened)  # an open the kernel serves from its pages: no read
    warm.close()
    assert paged_behind(keys[3]) == [path[keys[3].hexname()]]

    n = len(paged)
    with cc.open(opened) as h:
        assert h.read(0, 10, time.monotonic() + WAIT) == data[opened.uri][:10]
        h.read(10, 10, time.monotonic() + WAIT)  # only the first read hands the folder over
    wait_for(lambda: len(paged) >= n + len(want), "the read-ahead after the read")
    assert sorted(paged[n:]) == want
    cc.read_ahead_due(opened.hexname())  # handed over once
    assert paged_behind(keys[2]) == [path[keys[2].hexname()]]

    # an opened file that is being downloaded hands its folder over at its first read too
    kf = key_for("/fresh", fresh)
    assert cc.prefetch(rest, after=kf) == 0
    n = len(paged)
    with cc.open(kf) as h:
        assert h.read(0, 10, time.monotonic() + WAIT) == fresh[:10]
    wait_for(lambda: len(paged) >= n + len(want), "the read-ahead after a downloading read")
    assert sorted(paged[n:]) == want


def test_a_reopened_files_read_ahead_is_the_last_one_the_bound_drops(make_cache, monkeypatch):
    """The read-ahead put off until an open's first read (``prefetch(after=)``) is bounded,
    oldest dropped first; an open asking again (the same file opened anew) made its entry
    the newest in content but left it where it was, so the bound dropped it first."""
    from xnatfs.cache import bulk

    paged: List[str] = []
    monkeypatch.setattr(bulk, "_read_ahead", paged.append)
    monkeypatch.setattr(bulk, "READ_AHEAD_PENDING_MAX", 2)
    data = {f"/g{i}": payload(3000, seed=20 + i) for i in range(5)}
    cc = make_cache(FakeFetch(data))
    keys = [key_for(uri, body) for uri, body in data.items()]
    for k in keys:
        assert read_all(cc, k) == data[k.uri]
    wait_for(lambda: all(cc.state(k) == "cached" for k in keys), "the downloads' adoption")
    a, b, c, ahead = keys[0], keys[1], keys[2], keys[3:]
    for opened in (a, b, a, c):  # a asks again after b: b is now the oldest
        assert cc.prefetch(ahead, after=opened) == 0
    cc.read_ahead_due(a.hexname())
    want = sorted(cc._stored_path(k.hexname()) for k in ahead)
    wait_for(lambda: len(paged) >= len(want), "a's read-ahead")
    assert sorted(paged) == want


# -- verification and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [50_000, INLINE_HASH_MAX + 300_000], ids=["hashed-inline", "hashed-beside-the-download"]
)
def test_digest_mismatch_once_refetches(make_cache, size):
    good = payload(size)
    bad = bytearray(good)
    bad[-1234] ^= 0xFF
    fetch = FakeFetch({"/f": [bytes(bad), good]}, chunk=64 * 1024)
    cc = make_cache(fetch)
    key = key_for("/f", good)
    with cc.open(key) as h:
        assert h.wait(later())
        assert h.read(0, len(good), later()) == good
    assert fetch.calls["/f"] == 2
    assert cc.state(key) == "cached"
    assert read_all(cc, key) == good


def test_digest_mismatch_twice_is_eio(make_cache, caplog):
    good = payload(20_000)
    bad = b"x" * len(good)
    fetch = FakeFetch({"/bad": [bad, bad]})
    cc = make_cache(fetch)
    key = key_for("/bad", good)
    with caplog.at_level(logging.INFO, logger="xnatfs.cache"):
        with cc.open(key) as h:
            assert h.wait(later())
            with pytest.raises(OSError) as info:
                h.read(0, 10, later())
    assert info.value.errno == errno.EIO
    assert "digest mismatch" in str(info.value)
    assert fetch.calls["/bad"] == 2
    assert cc.state(key) == "absent"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert "/bad" in line and md5(good) in line and md5(bad) in line
    assert os.listdir(cc.directory + "/partial") == []


def test_short_download_is_an_error(make_cache):
    data = payload(10_000)
    fetch = FakeFetch({"/short": data[:6000]})
    cc = make_cache(fetch, verify=False)
    key = key_for("/short", data)
    with cc.open(key) as h:
        with pytest.raises(OSError) as info:
            h.read(0, len(data), later())  # bytes 6000.. never come
    assert info.value.errno == errno.EIO and "short download" in str(info.value)
    assert cc.state(key) == "absent"


def test_fetch_error_reaches_readers_and_next_open_retries(make_cache):
    data = payload(40_000)
    boom = ServerDown("GET /f -> 503 Service Unavailable")
    # held before the failure until both readers joined the one download
    fetch = FakeFetch({"/f": [Failure(data[:8192], boom), data]}, hold_at=8192)
    cc = make_cache(fetch)
    key = key_for("/f", data)

    h1, h2 = cc.open(key), cc.open(key)
    fetch.gate.set()
    for h in (h1, h2):
        with pytest.raises(ServerDown) as info:
            h.read(20_000, 100, later())
        assert info.value is boom
        h.close()
    assert cc.state(key) == "absent"
    assert cc.stats["download_errors"] == 1

    assert read_all(cc, key) == data  # the next open starts a new download
    assert fetch.calls["/f"] == 2


def test_deadline_expiry_raises_etimedout(make_cache):
    data = payload(30_000)
    fetch = FakeFetch({"/slow": data}, hold_at=4096)
    cc = make_cache(fetch)
    key = key_for("/slow", data)
    with cc.open(key) as h:
        assert fetch.held.wait(WAIT)
        with pytest.raises(TimeoutError) as info:
            h.read(10_000, 100, time.monotonic() + 0.05)
        assert isinstance(info.value, OSError) and info.value.errno == errno.ETIMEDOUT
        assert h.read(0, 100, time.monotonic()) == data[:100]  # already there: no wait at all
        fetch.gate.set()
        assert h.read(10_000, 100, later()) == data[10_000:10_100]


def test_a_second_wait_on_the_same_stall_is_short(make_cache):
    """The kernel retries a failed readahead with a second read of the same page: while no
    byte arrived since the first read waited its whole deadline, the second one gives up after
    ``STALL_GRACE``, not after another full deadline; progress clears the stall."""
    data = payload(30_000)
    fetch = FakeFetch({"/slow": data}, hold_at=4096)
    cc = make_cache(fetch)
    with cc.open(key_for("/slow", data)) as h:
        assert fetch.held.wait(WAIT)
        with pytest.raises(TimeoutError):
            h.read(10_000, 100, time.monotonic() + 0.05)
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            h.read(10_000, 100, time.monotonic() + 60)
        assert time.monotonic() - started < 30, "waited for its whole deadline again"
        assert "none since a reader waited" in str(info.value)
        fetch.gate.set()
        assert h.read(10_000, 100, later()) == data[10_000:10_100]


def test_close_cancels_running_download(tmp_path):
    data = payload(30_000)
    fetch = FakeFetch({"/f": data, "/g": data}, hold_at=4096)
    cc = ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch, max_downloads=1)
    cc.start()
    h = cc.open(key_for("/f", data))
    g = cc.open(ContentKey("/g", len(data), md5(data)))  # queued behind /f
    assert fetch.held.wait(WAIT)
    closer = threading.Thread(target=cc.close, args=(later(),))
    closer.start()
    wait_for(lambda: cc._closing, "close to begin")  # the test reaches in
    fetch.gate.set()
    closer.join(WAIT)
    for handle in (h, g):
        with pytest.raises(OSError) as info:
            handle.read(20_000, 10, later())
        assert info.value.errno == errno.ECANCELED
        handle.close()
    # pool threads leave right after close() (this cache's and earlier tests' alike)
    wait_for(
        lambda: (
            not any(
                t.name.startswith("xnatfs-download") and t.is_alive() for t in threading.enumerate()
            )
        ),
        "download threads to end",
    )


# -- keys, persistence, eviction, modes -----------------------------------------------------------


def test_changed_key_refetches(make_cache):
    v1, v2 = payload(9000), payload(9100, seed=5)
    fetch = FakeFetch({"/f": [v1, v2, v2]})
    cc = make_cache(fetch)
    k1 = key_for("/f", v1)
    assert read_all(cc, k1) == v1
    k2 = key_for("/f", v2)  # size and digest changed on the server
    assert cc.state(k2) == "absent"
    assert read_all(cc, k2) == v2
    k3 = ContentKey("/f", len(v2), md5(v2), "2025-06-01")  # only the mtime changed
    assert read_all(cc, k3) == v2
    assert fetch.calls["/f"] == 3
    assert read_all(cc, k1) == v1 and read_all(cc, k2) == v2  # both versions still cached
    assert fetch.calls["/f"] == 3


def test_the_server_is_part_of_a_key_only_without_a_digest():
    """Two servers' files with one path, size and time but no MD5 are two entries; with an MD5
    the entry is shared and keeps the name it had before keys had a server."""
    digest = "0123456789abcdef0123456789abcdef"
    before = hashlib.sha256(json.dumps(["/f", 3, digest, None]).encode()).hexdigest()
    assert ContentKey("/f", 3, digest, origin="https://a").hexname() == before
    assert ContentKey("/f", 3, digest, origin="https://b").hexname() == before
    a = ContentKey("/f", 3, "", 12.0, origin="https://a")
    b = ContentKey("/f", 3, "", 12.0, origin="https://b")
    assert a.hexname() != b.hexname()
    assert ContentKey.archive("/o", "v", origin="https://a").hexname() != (
        ContentKey.archive("/o", "v", origin="https://b").hexname()
    )


def test_cache_persists_across_reopen(tmp_path, make_cache):
    data = payload(70_000)
    fetch = FakeFetch({"/f": data})
    directory = tmp_path / "persist"
    cc = make_cache(fetch, directory=directory)
    key = key_for("/f", data)
    assert read_all(cc, key) == data
    cc.close(later())

    leftover = directory / "partial" / "deadbeef.part"  # as if a download had crashed
    leftover.write_bytes(b"junk")
    refetch = FakeFetch({})
    cc2 = make_cache(refetch, directory=directory)
    assert not leftover.exists()
    assert cc2.state(key) == "cached"
    assert read_all(cc2, key) == data
    assert sum(refetch.calls.values()) == 0
    assert cc2.stats["hits"] == 1


def test_eviction_is_lru_and_skips_open_files(make_cache):
    mib = 1 << 20
    files = {f"/{n}": payload(mib, seed=i) for i, n in enumerate("abcd")}
    fetch = FakeFetch(files, chunk=64 * 1024)
    cc = make_cache(fetch, size_limit=3 * mib)  # 3 files + the SQLite index do not fit
    keys = {uri: key_for(uri, data) for uri, data in files.items()}

    assert read_all(cc, keys["/a"]) == files["/a"]
    assert read_all(cc, keys["/b"]) == files["/b"]
    assert read_all(cc, keys["/a"]) == files["/a"]  # a used after b: b is now LRU
    assert read_all(cc, keys["/c"]) == files["/c"]  # evicts b, not the older-stored a
    assert [cc.state(keys[u]) for u in ("/a", "/b", "/c")] == ["cached", "absent", "cached"]
    assert cc.stats["evictions"] == 1

    hits = cc.stats["hits"]
    hc = cc.open(keys["/c"])  # c open (pinned) ...
    assert cc.stats["hits"] == hits + 1  # (from the cache)
    assert read_all(cc, keys["/a"]) == files["/a"]  # ... and then older than a
    assert read_all(cc, keys["/d"]) == files["/d"]  # LRU c is pinned: a goes instead
    assert [cc.state(keys[u]) for u in ("/a", "/c", "/d")] == ["absent", "cached", "cached"]
    assert hc.read(mib - 10, 100, later()) == files["/c"][-10:]
    hc.close()
    assert cc.stats["evictions"] == 2
    assert cc.size() <= 3 * mib
    assert fetch.calls == Counter({"/a": 1, "/b": 1, "/c": 1, "/d": 1})


def test_eviction_removes_file_under_open_handle(make_cache):
    mib = 1 << 20
    files = {"/a": payload(mib), "/b": payload(mib, seed=1)}
    cc = make_cache(FakeFetch(files, chunk=64 * 1024), size_limit=mib + mib // 2)
    ka, kb = key_for("/a", files["/a"]), key_for("/b", files["/b"])
    assert read_all(cc, ka) == files["/a"]
    ha = cc.open(ka)
    cc.clear()  # eviction of an open entry, as a forced cull would do it
    assert cc.state(ka) == "absent"
    assert ha.read(5, 5, later()) == files["/a"][5:10]
    assert read_all(cc, kb) == files["/b"]
    ha.close()


def test_directories_are_private(tmp_path, make_cache):
    directory = tmp_path / "private"
    (directory / "index").mkdir(parents=True, mode=0o755)
    os.chmod(directory / "index", 0o755)
    data = payload(1000)
    cc = make_cache(FakeFetch({"/f": data}), directory=directory)
    assert read_all(cc, key_for("/f", data)) == data
    for root, dirs, _files in os.walk(directory):
        for d in [root] + [os.path.join(root, d) for d in dirs]:
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    assert cc.stats["entries"] == 1


def test_open_before_start_is_an_error(tmp_path):
    before = set(threading.enumerate())
    cc = ContentCache(tmp_path / "cc", size_limit=1 << 20, fetch=FakeFetch({}))
    assert not {t for t in threading.enumerate() if t.name.startswith("xnatfs-")} - before
    with pytest.raises(RuntimeError):
        cc.open(ContentKey("/f", 1, ""))


# -- large files, hits without SQLite, bulk (zip) fetches ----------------------------------------


def test_hit_survives_a_file_removed_behind_the_cache(make_cache):
    data = payload(5000)
    fetch = FakeFetch({"/f": data})
    cc = make_cache(fetch)
    key = key_for("/f", data)
    assert read_all(cc, key) == data
    os.unlink(cc._stored_path(key.hexname()))  # as another mount's clear would
    assert read_all(cc, key) == data  # fetched again, not an error
    assert fetch.calls["/f"] == 2
    assert read_all(cc, key) == data and fetch.calls["/f"] == 2


def test_rows_of_another_layout_are_dropped_at_start(tmp_path, make_cache):
    directory = tmp_path / "layout"
    data = payload(3000)
    cc = make_cache(FakeFetch({"/f": data}), directory=directory)
    key = key_for("/f", data)
    assert read_all(cc, key) == data
    cc.close(later())
    import sqlite3

    db = sqlite3.connect(directory / "index" / "cache.db")
    db.execute("UPDATE Cache SET filename = 'ab/cd/old.bin'")
    db.commit()
    db.close()
    refetch = FakeFetch({"/f": data})
    cc2 = make_cache(refetch, directory=directory)
    assert cc2.state(key) == "absent" and cc2.stats["entries"] == 0
    assert read_all(cc2, key) == data and refetch.calls["/f"] == 1


def _zip_of(files: Dict[str, bytes], prefix: str = "S/scans/1-T1w/resources/DICOM/files/") -> bytes:
    """A zip as the emulator streams it: stored members with data descriptors (§3.3)."""
    return streamed_zip({prefix + name.lstrip("/"): data for name, data in files.items()})


def _bulk_setup(files: Dict[str, bytes], zipped: Optional[Dict[str, bytes]] = None, **fetch_kw):
    zipped = files if zipped is None else zipped
    answers: Dict[str, Union[Answer, List[Answer]]] = dict(files)
    answers["/zip"] = _zip_of(zipped)
    keys = {uri: key_for(uri, data) for uri, data in files.items()}

    def key_of(member: str) -> Optional[ContentKey]:
        return keys.get("/" + member.split("/files/", 1)[1])

    return FakeFetch(answers, **fetch_kw), keys, key_of


def test_bulk_brings_every_file_in_one_request(make_cache):
    files = {f"/f{i:02d}": payload(3000 + i * 100, seed=i) for i in range(20)}
    fetch, keys, key_of = _bulk_setup(files)
    cc = make_cache(fetch)
    assert cc.bulk("/zip", keys.values(), key_of) == 20
    assert cc.bulk("/zip", keys.values(), key_of) == 0  # all registered already
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]
    wait_for(lambda: all(cc.state(k) == "cached" for k in keys.values()), "the members")
    assert fetch.calls == Counter({"/zip": 1})
    assert cc.stats["bulk_fetches"] == 1 and cc.stats["download_errors"] == 0


def test_bulk_member_is_readable_before_the_zip_is_complete(make_cache):
    files = {f"/f{i:02d}": payload(20_000, seed=i) for i in range(10)}
    blob_len = len(_zip_of(files))
    fetch, keys, key_of = _bulk_setup(files, hold_at=blob_len // 2, chunk=4096)
    cc = make_cache(fetch)
    cc.bulk("/zip", keys.values(), key_of)
    assert fetch.held.wait(WAIT)  # the zip stops half-way ...
    with cc.open(keys["/f00"]) as h:  # ... and the first member is served anyway
        assert h.read(0, 20_000, later()) == files["/f00"]
    fetch.gate.set()
    assert read_all(cc, keys["/f09"]) == files["/f09"]
    assert fetch.calls == Counter({"/zip": 1})


def test_bulk_members_missing_or_damaged_are_fetched_alone(make_cache):
    files = {f"/f{i:02d}": payload(5000, seed=i) for i in range(6)}
    zipped = {u: d for u, d in files.items() if u != "/f03"}  # not in the zip
    zipped["/f01"] = b"x" * 5000  # right size, wrong bytes
    fetch, keys, key_of = _bulk_setup(files, zipped)
    cc = make_cache(fetch)
    cc.bulk("/zip", keys.values(), key_of)
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]
    assert fetch.calls == Counter({"/zip": 1, "/f01": 1, "/f03": 1})


def test_bulk_cut_short_leaves_the_rest_to_single_downloads(make_cache):
    files = {f"/f{i:02d}": payload(8000, seed=i) for i in range(8)}
    blob = _zip_of(files)
    fetch, keys, key_of = _bulk_setup(files)
    fetch.answers["/zip"] = Failure(blob[: len(blob) // 2], ServerDown("connection reset"))
    cc = make_cache(fetch)
    cc.bulk("/zip", keys.values(), key_of)
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]
    alone = {uri for uri in files if fetch.calls[uri]}
    assert 0 < len(alone) < len(files)  # the first half came from the zip
    assert all(n == 1 for uri, n in fetch.calls.items() if uri != "/zip")


def test_close_during_a_bulk_fetch_ends_every_member(tmp_path):
    files = {f"/f{i:02d}": payload(20_000, seed=i) for i in range(10)}
    blob_len = len(_zip_of(files))
    fetch, keys, key_of = _bulk_setup(files, hold_at=blob_len // 3, chunk=4096)
    cc = ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch)
    cc.start()
    cc.bulk("/zip", keys.values(), key_of)
    assert fetch.held.wait(WAIT)
    handles = [cc.open(k) for k in keys.values()]
    closer = threading.Thread(target=cc.close, args=(later(),))
    closer.start()
    wait_for(lambda: cc._closing, "close to begin")  # the test reaches in
    fetch.gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    for uri, h in zip(keys, handles):
        try:
            got = h.read(0, 20_000, later())
            assert got == files[uri]  # arrived before the close
        except OSError as exc:
            assert exc.errno == errno.ECANCELED  # or cancelled, never a hang
        h.close()


# -- integrity of cached entries (issue 18 §1) ----------------------------------------------------


def _stored(cc: ContentCache, key: ContentKey) -> str:
    return cc._stored_path(key.hexname())  # the test damages the file itself


def _cached(cc_factory, data: bytes, uri: str = "/f"):
    fetch = FakeFetch({uri: data})
    cc = cc_factory(fetch)
    key = key_for(uri, data)
    assert read_all(cc, key) == data
    return cc, fetch, key


@pytest.mark.parametrize("damage", ["truncate", "zero", "extend", "delete"])
def test_a_cached_file_of_the_wrong_size_is_fetched_again(make_cache, damage, caplog):
    data = payload(50_000)
    cc, fetch, key = _cached(make_cache, data)
    path = _stored(cc, key)
    if damage == "delete":
        os.unlink(path)
    else:
        with open(path, "r+b") as f:
            f.truncate({"truncate": 100, "zero": 0, "extend": 60_000}[damage])
    with caplog.at_level(logging.WARNING, logger="xnatfs.cache.content"):
        assert read_all(cc, key) == data
    assert fetch.calls["/f"] == 2
    assert [r for r in caplog.records if "/f" in r.getMessage()], "one line naming the file"
    assert read_all(cc, key) == data and fetch.calls["/f"] == 2  # the fresh copy is kept


def _flip(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("size", [50_000, INLINE_HASH_MAX + 100_000])
def test_an_earlier_mounts_damaged_entry_is_hashed_before_it_is_served(tmp_path, size):
    """Same size, one bit flipped while nothing ran: the next daemon hashes the file once on
    its first open and fetches it again; a sound entry is hashed once, then served as is."""
    data, other = payload(size), payload(size, seed=5)
    fetch = FakeFetch({"/f": data, "/g": other})
    first = ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch)
    with first:
        kf, kg = key_for("/f", data), key_for("/g", other)
        assert read_all(first, kf) == data and read_all(first, kg) == other
        assert first.stats["verified"] == 0  # its own downloads: checked as they came
    _flip(_stored(first, kf), size // 2)
    second = ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch)
    with second:
        assert read_all(second, kf) == data
        assert read_all(second, kg) == other
        assert read_all(second, kg) == other
        assert fetch.calls == Counter({"/f": 2, "/g": 1})
        assert second.stats["verified"] == 1 and second.stats["damaged"] == 1


def test_an_open_after_the_verdict_is_verified_while_the_download_is_stored(
    make_cache, monkeypatch
):
    """A download's fsync and adoption follow its verdict.  An open in that window followed
    the download and counted as unverified, so the mount dropped the pages the first read had
    just filled (``fs.keepcache``): the next reads of a large file went through the daemon
    again.  Opened after the verdict, every byte it can serve is the verified attempt's."""
    from xnatfs.cache import download as download_module

    data = payload(300_000, seed=3)
    fetch = FakeFetch({"/f": data}, hold_at=100_000)
    syncing, stored = threading.Event(), threading.Event()
    real_sync = download_module.Download.sync

    def held_sync(self) -> None:
        syncing.set()
        assert stored.wait(WAIT), "the test never let the download be stored"
        real_sync(self)

    monkeypatch.setattr(download_module.Download, "sync", held_sync)
    cc = make_cache(fetch)
    key = key_for("/f", data)
    first = cc.open(key)
    second = None
    try:
        assert fetch.held.wait(WAIT)
        assert not first.verified  # following the download: no verdict yet
        fetch.gate.set()
        assert first.read(0, len(data) + 1, later()) == data  # the last read waits for it
        assert syncing.wait(WAIT)
        second = cc.open(key)
        assert cc.state(key) == "downloading"  # being stored
        assert second.verified  # before: False
        assert not first.verified  # opened before the verdict: stays so
        assert second.read(0, len(data) + 1, later()) == data
    finally:
        stored.set()
        first.close()
        if second is not None:
            second.close()
    wait_for(lambda: cc.state(key) == "cached", "the download stored")


def test_a_verified_entry_changed_while_running_is_hashed_again(make_cache):
    data = payload(50_000)
    cc, fetch, key = _cached(make_cache, data)
    path = _stored(cc, key)
    st = os.stat(path)
    _flip(path, 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the write's own mtime
    assert read_all(cc, key) == data
    assert fetch.calls["/f"] == 2


def test_a_same_size_replacement_is_fetched_again(make_cache):
    data = payload(50_000)
    cc, fetch, key = _cached(make_cache, data)
    path = _stored(cc, key)
    with open(path + ".new", "wb") as f:
        f.write(payload(50_000, seed=9))
    os.replace(path + ".new", path)
    assert read_all(cc, key) == data
    assert fetch.calls["/f"] == 2


# -- verdict before the last bytes (issue 17 §5) --------------------------------------------------


def test_the_last_bytes_wait_for_the_md5_verdict(make_cache):
    data = payload(50_000)
    fetch = FakeFetch({"/f": [b"y" * 50_000]}, hold_at=50_000)  # all sent, then held
    cc = make_cache(fetch)
    key = key_for("/f", data)
    with cc.open(key) as h:
        assert h.read(0, 1000, later()) == b"y" * 1000  # early bytes: served as they come
        assert fetch.held.wait(WAIT)
        with pytest.raises(TimeoutError):  # the end: not before the verdict
            h.read(49_000, 1000, time.monotonic() + 0.2)
        fetch.gate.set()
        with pytest.raises(OSError) as info:
            h.read(49_000, 1000, later())
        assert info.value.errno == errno.EIO
        with pytest.raises(OSError):
            h.read(50_000, 10, later())  # EOF is no success either
    assert fetch.calls["/f"] == 2 and cc.state(key) == "absent"


def test_a_body_longer_than_listed_is_cut_at_the_listed_size(make_cache, tmp_path, caplog):
    data = payload(10_000)
    fetch = FakeFetch({"/f": data + payload(1 << 20, seed=2)})
    cc = make_cache(fetch)
    key = key_for("/f", data, digest="")
    with caplog.at_level(logging.ERROR), cc.open(key) as h:
        with pytest.raises(OSError) as info:
            h.read(0, 20_000, later())
        assert info.value.errno == errno.EIO
    assert cc.stats["bytes_downloaded"] <= 2 * 10_000  # never past the listed size
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert cc.state(key) == "absent" and os.listdir(tmp_path / "cc" / "partial") == []


def test_a_body_shorter_than_listed_is_eio(make_cache):
    data = payload(10_000)
    fetch = FakeFetch({"/f": data[:9000]}, hold_at=9000)
    cc = make_cache(fetch)
    key = key_for("/f", data)
    with cc.open(key) as h:
        assert h.read(0, 1000, later()) == data[:1000]
        fetch.gate.set()
        with pytest.raises(OSError) as info:
            h.read(9000, 1000, later())
        assert info.value.errno == errno.EIO


def test_a_download_of_unknown_size_never_outgrows_the_cache(make_cache):
    fetch = FakeFetch({"/zip": payload(300_000)}, chunk=8192)
    cc = make_cache(fetch, size_limit=100_000)
    key = ContentKey("/zip", None, "", "2024")
    with cc.open(key) as h:
        with pytest.raises(OSError) as info:
            h.read(0, 400_000, later())
        assert info.value.errno == errno.EIO
    assert cc.stats["bytes_downloaded"] <= 2 * 100_000
    assert cc.size() <= 100_000


# -- durability (issue 18 §0) ---------------------------------------------------------------------


def test_cache_files_are_synced_before_they_are_indexed(make_cache, monkeypatch):
    from xnatfs.cache import download as download_module

    data = payload(50_000)
    fetch = FakeFetch({"/f": data})
    cc = make_cache(fetch)
    key = key_for("/f", data)
    seen: List[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        seen.append(cc.state(key) if cc._index.size_of(key.hexname()) is None else "indexed")
        real(fd)

    monkeypatch.setattr(download_module.os, "fdatasync", fdatasync)
    assert read_all(cc, key) == data
    assert seen == ["downloading"]


# -- room for downloads (issue 18 §0, §2) ---------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (root only): a cache disk that really fills up."""
    with small_tmpfs(tmp_path / "small", "4m") as where:
        yield where


@pytest.mark.parametrize("listed", [True, False])
def test_a_full_cache_disk_is_evicted_before_a_download_fails(make_cache, small_fs, listed):
    """The limit (1 GiB) is far above the disk (4 MiB), as when the cache disk is shared:
    eviction makes room before (size listed) or when (size unknown: ENOSPC) the download
    needs it; the old code gave ENOSPC with nothing evicted."""
    old = {f"/old{i}": payload(1 << 20, seed=i) for i in range(3)}
    new = payload(2 << 20, seed=7)
    fetch = FakeFetch({**old, "/new": new}, chunk=64 << 10)
    cc = make_cache(fetch, directory=small_fs / "cc")
    for uri, data in old.items():
        assert read_all(cc, key_for(uri, data)) == data
    key = key_for("/new", new) if listed else ContentKey("/new", None, "", "x")
    with cc.open(key) as h:
        assert h.read(0, len(new) + 1, later()) == new
        assert h.wait(later())
    assert cc.stats["evictions"] >= 1 and cc.state(key) == "cached"


def _fill_to_the_last_block(path) -> None:
    """What a spool file of the write side does to a shared cache disk: fill it up."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\1" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_cache_disk_full_to_its_last_block_is_evicted_not_hung(make_cache, small_fs):
    """The cache disk filled by something else (the spool of a ``cp`` into the mount) while
    the cache holds closed entries opened since their last flush.  Before, making room ran
    SQLite writes (the access times, the DELETEs of the cull) on the full disk: ``database
    or disk is full`` escaped the download's pool task, which never ran nor ended: the reader
    got ETIMEDOUT, the key stayed "downloading" (every later open joined the dead download),
    and the cache's close at unmount raised the same error."""
    old = {f"/old{i}": payload(1 << 20, seed=i) for i in range(2)}
    new = payload(1 << 20, seed=7)
    fetch = FakeFetch({**old, "/new": new}, chunk=64 << 10)
    cc = make_cache(fetch, directory=small_fs / "cc")
    for _ in range(2):  # cached, then opened again: access times waiting in memory
        for uri, data in old.items():
            assert read_all(cc, key_for(uri, data)) == data
    _fill_to_the_last_block(small_fs / "filler")
    key = key_for("/new", new)
    with cc.open(key) as h:
        assert h.read(0, len(new) + 1, later()) == new  # before: ETIMEDOUT, 0 bytes arrived
        assert h.wait(later())
    assert cc.state(key) == "cached" and cc.stats["evictions"] >= 1
    assert cc.stats["downloads_in_flight"] == 0
    assert os.listdir(small_fs / "cc" / "partial") == []
    for uri, data in old.items():  # what is left is served right; evicted ones come again
        assert read_all(cc, key_for(uri, data)) == data


def test_a_row_whose_file_is_already_gone_is_not_counted_as_room(make_cache, small_fs):
    """On a disk full to its last block the eviction deletes files first and then their rows;
    when SQLite has no room for the DELETE the rows stay behind (``_Index.free_up``).  The
    next eviction found such a row's file missing and counted its size as freed: it stopped
    there, having freed nothing, and the download failed with "nothing more to evict" while
    a real entry was still there to go (the flake of the test above, seen once in CI: which
    rows survived depended on whether the WAL had room at that moment)."""
    old = {f"/old{i}": payload(1 << 20, seed=i) for i in range(2)}
    new = payload(1 << 19, seed=7)
    cc = make_cache(FakeFetch({**old, "/new": new}, chunk=64 << 10), directory=small_fs / "cc")
    for uri, data in old.items():  # /old0 is the least recently used
        assert read_all(cc, key_for(uri, data)) == data
    _fill_to_the_last_block(small_fs / "filler")
    gone = key_for("/old0", old["/old0"]).hexname()
    os.unlink(small_fs / "cc" / "index" / gone[:2] / f"{gone}.bin")  # evicted, its row stays
    _fill_to_the_last_block(small_fs / "filler")  # the room it freed is taken again
    assert read_all(cc, key_for("/new", new)) == new  # before: ENOSPC, nothing more to evict
    assert cc.state(key_for("/old1", old["/old1"])) == "absent"  # the real room it took
    assert cc.stats["evictions"] == 1  # /old1; the row of /old0 went, no second eviction


def test_the_cache_closes_on_a_full_disk(make_cache, small_fs):
    """Access times of hits wait in memory and are written at close; on a full cache disk
    SQLite cannot write them and the close at unmount raised ``database or disk is full``.
    They are not worth an error: the close goes on, the entries stay cached."""
    old = {f"/old{i}": payload(1 << 20, seed=i) for i in range(2)}
    cc = make_cache(FakeFetch(old, chunk=64 << 10), directory=small_fs / "cc")
    for _ in range(2):  # cached, then hits: their access times wait in memory
        for uri, data in old.items():
            assert read_all(cc, key_for(uri, data)) == data
    _fill_to_the_last_block(small_fs / "filler")
    cc.close(later())  # before: sqlite3.OperationalError (database or disk is full)
    os.unlink(small_fs / "filler")
    again = make_cache(FakeFetch({}), directory=small_fs / "cc")
    assert all(again.state(key_for(uri, data)) == "cached" for uri, data in old.items())


def test_a_quota_on_the_cache_disk_evicts_as_a_full_disk_does(make_cache, monkeypatch):
    """EDQUOT is the disk full for this user: the cache evicts and writes again, as for
    ENOSPC.  Before, only ENOSPC made room: the read failed with EDQUOT, nothing evicted."""
    from xnatfs.cache import download as download_module

    old, new = payload(100_000, seed=1), payload(200_000, seed=2)
    cc = make_cache(FakeFetch({"/old": old, "/new": new}))
    assert read_all(cc, key_for("/old", old)) == old
    monkeypatch.setattr(download_module, "os", FullDiskOs(refusals=1, code=errno.EDQUOT))
    assert read_all(cc, key_for("/new", new)) == new  # before: OSError EDQUOT
    assert cc.stats["evictions"] == 1 and cc.state(key_for("/old", old)) == "absent"
    assert cc.state(key_for("/new", new)) == "cached"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_cache_disk_with_nothing_to_evict_is_that_errno(make_cache, monkeypatch, code):
    """Nothing to evict: the reader gets the errno (never a short file), the message names
    the download's URI, the partial file is gone, and the next open downloads again."""
    from xnatfs.cache import download as download_module

    data = payload(200_000, seed=3)
    fetch = FakeFetch({"/f": data})
    cc = make_cache(fetch)
    # one refusal: the eviction finds nothing, so the write is not tried again
    monkeypatch.setattr(download_module, "os", FullDiskOs(refusals=1, code=code))
    key = key_for("/f", data)
    with cc.open(key) as h:
        with pytest.raises(OSError) as info:
            h.read(0, len(data), later())
    assert info.value.errno == code and "/f" in str(info.value)
    assert cc.state(key) == "absent" and os.listdir(cc.directory + "/partial") == []
    assert read_all(cc, key) == data and fetch.calls["/f"] == 2


def test_room_for_a_write_evicts_only_closed_cached_files_on_its_disk(
    make_cache, tmp_path, small_fs
):
    """``make_room_for_write``: one pass over closed entries of the index (an open one is
    pinned and stays; a running download is not in the index); nothing for a write on
    another filesystem, where evicting would free nothing for it."""
    a, b = payload(100_000, seed=1), payload(100_000, seed=2)
    cc = make_cache(FakeFetch({"/a": a, "/b": b}))
    ka, kb = key_for("/a", a), key_for("/b", b)
    assert read_all(cc, ka) == a and read_all(cc, kb) == b
    spool = tmp_path / "uploads" / "spool"
    spool.mkdir(parents=True)
    (spool / "x.spool").write_bytes(b"the user's bytes")
    assert cc.make_room_for_write(str(small_fs), 1) == 0  # another filesystem
    with cc.open(ka) as h:
        assert cc.make_room_for_write(str(spool), 1) == 1
        assert h.read(0, len(a), later()) == a
    assert cc.state(ka) == "cached" and cc.state(kb) == "absent"
    assert (spool / "x.spool").read_bytes() == b"the user's bytes"


def test_room_on_a_full_disk_goes_by_the_access_times_in_memory(make_cache, monkeypatch):
    """Hits keep their access time in memory until the next cull or close (a full disk
    cannot take them).  Eviction on a full disk ordered by the index's times alone, i.e. by
    the last flush, so a file read over and over since went first."""
    from xnatfs.cache import store

    monkeypatch.setattr(store, "WRITE_ROOM", 1)  # exactly one entry
    files = {f"/{n}": payload(50_000, seed=i) for i, n in enumerate("abc")}
    cc = make_cache(FakeFetch(files))
    keys = {uri: key_for(uri, data) for uri, data in files.items()}
    for uri, data in files.items():
        assert read_all(cc, keys[uri]) == data  # adopted a, b, c: the index's order
    assert read_all(cc, keys["/a"]) == files["/a"]  # a hit: a is the most recent now
    assert cc.make_room_for_write(cc.directory, 1) == 1
    assert cc.state(keys["/a"]) == "cached"  # before: a was evicted
    assert cc.state(keys["/b"]) == "absent" and cc.state(keys["/c"]) == "cached"


def test_a_file_larger_than_the_cache_is_streamed_and_not_kept(make_cache, tmp_path, monkeypatch):
    from xnatfs.cache import stream

    monkeypatch.setattr(stream, "AHEAD", 512 << 10)
    monkeypatch.setattr(stream, "BEHIND", 256 << 10)
    big = payload(3 << 20, seed=4)
    fetch = FakeFetch({"/big": big}, chunk=64 << 10)
    cc = make_cache(fetch, size_limit=1 << 20)
    key = key_for("/big", big)
    with cc.open(key) as h:
        got = bytearray()
        while True:
            chunk = h.read(len(got), 128 << 10, later())
            if not chunk:
                break
            got += chunk
        assert bytes(got) == big and fetch.calls["/big"] == 1
        assert h.read(1000, 100, later()) == big[1000:1100]  # back past the window ...
    assert fetch.calls["/big"] == 2  # ... fetched again
    assert cc.state(key) == "absent" and cc.stats["streamed"] == 1
    assert os.listdir(tmp_path / "cc" / "partial") == []


@pytest.mark.parametrize("body", ["damaged", "long", "short"])
def test_a_streamed_file_with_bad_bytes_ends_in_eio(make_cache, body, caplog):
    big = payload(3 << 20, seed=4)
    sent = {"damaged": big[:-1] + b"!", "long": big + b"more", "short": big[:-10]}[body]
    fetch = FakeFetch({"/big": sent}, chunk=64 << 10)
    cc = make_cache(fetch, size_limit=1 << 20)
    with caplog.at_level(logging.ERROR), cc.open(key_for("/big", big)) as h:
        with pytest.raises(OSError) as info:
            pos = 0
            while True:
                chunk = h.read(pos, 1 << 20, later())
                assert chunk == big[pos : pos + len(chunk)]  # what is served is right
                if not chunk:
                    break
                pos += len(chunk)
        assert info.value.errno == errno.EIO


# -- a handle that served bytes of a failed attempt never ends in success -------------------------


@pytest.mark.parametrize("how", ["read", "span"])
def test_reader_of_a_refetched_file_never_gets_first_attempt_bytes_with_success(make_cache, how):
    """The reviewer's repro: attempt 1 has a wrong first byte, a reader gets it, attempt 2
    checks out.  The reader's end of file must be EIO (it holds a wrong byte), whether it reads
    through ``read`` or ``span`` + ``pread`` (``XnatOperations.read_into``).  So must the end
    of another open made before the refetch that only read attempt 2 through its handle:
    through FUSE, the wrong byte the first reader was served sits in the kernel's page cache,
    shared by every open of the file, and the second open may have read it from there (issue
    12 session note).  An open made after the refetch reads the whole file with success."""
    good = payload(50_000)
    bad = bytearray(good)
    bad[0] ^= 0xFF
    fetch = FakeFetch({"/f": [bytes(bad), good]}, chunk=4096, hold_at=40_000)
    cc = make_cache(fetch)
    key = key_for("/f", good)

    def get(h, offset: int, size: int) -> bytes:
        if how == "read":
            return h.read(offset, size, later())
        fd, n = h.span(offset, size, later())
        return os.pread(fd, n, offset)

    with cc.open(key) as h, cc.open(key) as late:
        first = get(h, 0, 4096)  # attempt 1's (wrong) bytes
        assert first[0] != good[0]
        fetch.gate.set()
        assert late.wait(later())
        with pytest.raises(OSError) as info:
            got = first + get(h, 4096, 50_000)  # reaches the end: attempt 2 verified
            assert got != good  # (unreached) the wrong byte, with success
        assert info.value.errno == errno.EIO
        assert "attempt 1" in str(info.value)
        with pytest.raises(OSError):
            get(h, 50_000, 10)  # the EOF read fails as well
        with pytest.raises(OSError) as info:
            get(late, 0, 50_001)  # open while attempt 1 was served: its pages may be in hand
        assert info.value.errno == errno.EIO and "was open while" in str(info.value)
        with cc.open(key) as after:
            assert get(after, 0, 50_001) == good  # opened after the refetch: fine
    assert fetch.calls["/f"] == 2
    assert read_all(cc, key) == good


def test_a_streamed_pass_cut_short_by_a_seek_back_taints_the_end(make_cache, monkeypatch):
    """A StreamHandle: bytes of a GET that a seek back superseded were never verified, so the
    read of the last bytes of the next GET is EIO; two whole passes are both verified (OK)."""
    from xnatfs.cache import stream

    monkeypatch.setattr(stream, "AHEAD", 256 << 10)
    monkeypatch.setattr(stream, "BEHIND", 128 << 10)
    big = payload(2 << 20, seed=5)
    fetch = FakeFetch({"/big": big}, chunk=64 << 10)
    cc = make_cache(fetch, size_limit=1 << 20)
    key = key_for("/big", big)

    def to_end(h, pos: int) -> bytes:
        got = bytearray()
        while True:
            chunk = h.read(pos, 128 << 10, later())
            if not chunk:
                return bytes(got)
            got += chunk
            pos += len(chunk)

    with cc.open(key) as h:
        assert to_end(h, 0) == big and to_end(h, 0) == big  # pass, seek back, pass
    assert fetch.calls["/big"] == 2
    with cc.open(key) as h:
        assert h.read(1 << 20, 4096, later()) == big[1 << 20 : (1 << 20) + 4096]  # GET 3
        assert h.read(0, 4096, later()) == big[:4096]  # a seek back: GET 4
        with pytest.raises(OSError) as info:
            to_end(h, 4096)
        assert info.value.errno == errno.EIO and "seek back" in str(info.value)
    assert fetch.calls["/big"] == 4


def test_a_failing_fstat_at_the_check_leaks_no_hashing_fd(make_cache, monkeypatch, tmp_path):
    """``Download._check``: an OSError from fstat/ftruncate before the digest still stops
    the hashing thread and closes its dup'd fd."""
    from xnatfs.cache import download

    monkeypatch.setattr(download, "INLINE_HASH_MAX", 1000)  # hashed by a _FileMD5 thread
    real_fstat = os.fstat

    def fstat(fd):
        if sys._getframe(1).f_code.co_name == "_check":
            raise OSError(errno.EIO, "disk gone")
        return real_fstat(fd)

    def partial_fds() -> List[str]:
        """Our fds on files of this cache's partial directory (unlinked ones too)."""
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path / "cc" / "partial")):
                found.append(target)
        return found

    data = payload(300_000)
    cc = make_cache(FakeFetch({"/f": data}, chunk=16 << 10))
    monkeypatch.setattr(download.os, "fstat", fstat)
    with cc.open(key_for("/f", data)) as h:
        assert h.wait(later())
        with pytest.raises(OSError) as info:
            h.read(0, len(data), later())
        assert "disk gone" in str(info.value)
    monkeypatch.setattr(download.os, "fstat", real_fstat)
    # the download closes its own fd just after waking its readers
    wait_for(lambda: partial_fds() == [], "every fd on the partial file closed")


# -- xnatfs cache verify ---------------------------------------------------------------------------


def test_verify_finds_and_repairs_every_kind_of_damage(tmp_path):
    from xnatfs.cache.content import verify_entries

    files = {f"/f{i}": payload(20_000, seed=i) for i in range(6)}
    fetch = FakeFetch(files)
    cc = ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch)
    with cc:
        keys = {uri: key_for(uri, data) for uri, data in files.items()}
        nodigest = ContentKey("/f5", 20_000, "", "x")
        for uri, key in keys.items():
            assert read_all(cc, key if uri != "/f5" else nodigest) == files[uri]
        _flip(_stored(cc, keys["/f0"]), 5)
        os.truncate(_stored(cc, keys["/f1"]), 100)
        os.unlink(_stored(cc, keys["/f2"]))
        _flip(_stored(cc, nodigest), 5)  # no MD5: size only, not found
        report = verify_entries(tmp_path / "cc")  # beside the running cache
        assert (report.checked, report.hashed, report.bad, report.dropped) == (6, 5, 3, 0)
        report = verify_entries(tmp_path / "cc", repair=True)
        assert report.bad == 3 and report.dropped == 3
        assert verify_entries(tmp_path / "cc").bad == 0
        for uri, key in keys.items():  # the running cache fetches again
            if uri != "/f5":
                assert read_all(cc, key) == files[uri]
        assert fetch.calls["/f0"] == fetch.calls["/f1"] == fetch.calls["/f2"] == 2


@pytest.mark.parametrize("damaged", [False, True])
def test_a_large_entry_is_hashed_while_read_and_holds_back_its_end(tmp_path, monkeypatch, damaged):
    """Above VERIFY_INLINE_MAX the first open does not wait for the hash (a file of gigabytes
    on a slow disk would outlast --timeout); the read of the last bytes does, and is EIO when
    the MD5 is wrong; the next open fetches the file again."""
    from xnatfs.cache import content as content_module

    monkeypatch.setattr(content_module, "VERIFY_INLINE_MAX", 100_000)
    data = payload(3 << 20)
    fetch = FakeFetch({"/f": data}, chunk=64 << 10)
    with ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch) as first:
        key = key_for("/f", data)
        assert read_all(first, key) == data
    if damaged:
        _flip(_stored(first, key), len(data) // 2)
    with ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch) as second:
        with second.open(key) as h:
            assert second.stats["hits"] == 1  # the cached copy, no download
            head = h.read(0, 4096, later())
            assert head == data[:4096]
            if damaged:
                with pytest.raises(OSError) as info:
                    h.read(len(data) - 4096, 4096, later())
                assert info.value.errno == errno.EIO
            else:
                assert h.read(len(data) - 4096, 8192, later()) == data[-4096:]
        assert read_all(second, key) == data
        assert fetch.calls["/f"] == (2 if damaged else 1)
        assert second.stats["damaged"] == int(damaged)


def test_cache_verify_command_reports_and_repairs(tmp_path):
    import subprocess
    import sys

    files = {f"/f{i}": payload(20_000, seed=i) for i in range(4)}
    cc = ContentCache(tmp_path / "xc" / "content", size_limit=1 << 30, fetch=FakeFetch(files))
    with cc:
        keys = [key_for(uri, data) for uri, data in files.items()]
        for key in keys:
            read_all(cc, key)
    _flip(_stored(cc, keys[0]), 7)
    os.unlink(_stored(cc, keys[1]))

    def verify(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "xnatfs",
                "cache",
                "verify",
                "--cache-dir",
                str(tmp_path / "xc"),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    res = verify()
    assert res.returncode == 1, res.stderr
    assert "4 files checked (4 by MD5" in res.stdout and ", 2 bad" in res.stdout
    assert res.stderr.count("bad entry") == 2
    res = verify("--repair")
    assert res.returncode == 0 and "2 bad, 2 dropped" in res.stdout, res.stdout + res.stderr
    res = verify()
    assert res.returncode == 0 and "2 files checked" in res.stdout and ", 0 bad" in res.stdout


def test_bulk_member_inflating_past_its_listed_size_is_fetched_alone(make_cache, tmp_path):
    """Issue 17 §4: a zip member that inflates beyond its listed size is cut (nothing past
    the size reaches partial/), and it and the members after it are fetched alone."""
    import zipfile

    files = {f"/f{i:02d}": payload(5000, seed=i) for i in range(6)}
    zipped = dict(files)
    zipped["/f02"] = bytes(8 << 20)  # listed 5000 bytes: a bomb of zeros
    fetch, keys, key_of = _bulk_setup(files, zipped)
    fetch.answers["/zip"] = streamed_zip(
        {"S/scans/1/resources/DICOM/files/" + u.lstrip("/"): d for u, d in zipped.items()},
        zipfile.ZIP_DEFLATED,
    )
    cc = make_cache(fetch)
    cc.bulk("/zip", keys.values(), key_of)
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]
    assert fetch.calls["/f02"] == 1 and fetch.calls["/f00"] == 0 and fetch.calls["/zip"] == 1
    assert cc.stats["bytes_downloaded"] < 100_000


def test_room_is_made_before_a_download_not_after_it(make_cache):
    """Issue 18 §0: eviction ran only after a file was added, so the cache (and its disk)
    held the old files and the whole new one at once.  Now the least-recently-used file goes
    before the first byte of the new one is written: at no time do the index and the running
    download together exceed the limit."""
    mib = 1 << 20
    old = {"/a": payload(mib, seed=1), "/b": payload(mib, seed=2)}
    new = payload(mib + mib // 2, seed=3)
    fetch = FakeFetch({**old, "/new": new}, chunk=64 << 10, hold_at=mib)
    fetch.gate.set()  # the old files pass the hold point
    cc = make_cache(fetch, size_limit=3 * mib)
    for uri, data in old.items():
        assert read_all(cc, key_for(uri, data)) == data
    fetch.gate.clear()
    key = key_for("/new", new)
    with cc.open(key) as h:
        assert fetch.held.wait(WAIT)  # 1 MiB of the new file written
        assert cc.stats["evictions"] == 1 and cc.state(key_for("/a", old["/a"])) == "absent"
        assert cc.size() + mib <= 3 * mib
        fetch.gate.set()
        assert h.read(0, len(new), later()) == new


def test_a_streamed_file_read_by_several_threads_slightly_out_of_order(make_cache, monkeypatch):
    """The kernel's read-ahead sends one file's reads from several FUSE threads, not in
    order: within the window behind the furthest read they are served without a re-fetch."""
    from concurrent.futures import ThreadPoolExecutor

    from xnatfs.cache import stream

    monkeypatch.setattr(stream, "AHEAD", 1 << 20)
    monkeypatch.setattr(stream, "BEHIND", 512 << 10)
    big = payload(6 << 20, seed=8)
    fetch = FakeFetch({"/big": big}, chunk=64 << 10)
    cc = make_cache(fetch, size_limit=1 << 20)
    block = 128 << 10
    offsets = list(range(0, len(big), block))
    for i in range(0, len(offsets) - 1, 2):  # pairs swapped: 1, 0, 3, 2, ...
        offsets[i], offsets[i + 1] = offsets[i + 1], offsets[i]
    with cc.open(key_for("/big", big)) as h, ThreadPoolExecutor(4) as pool:
        got = dict(zip(offsets, pool.map(lambda off: h.read(off, block, later()), offsets)))
    assert b"".join(got[o] for o in sorted(got)) == big
    assert fetch.calls["/big"] == 1


# -- the kind of a key: which fetch brings it -----------------------------------------------------


def test_archive_keys_and_bulk_zips_go_to_the_archive_fetch_files_to_the_file_fetch(make_cache):
    """``ContentKey.kind``, not the shape of the URI, decides how a key is fetched: a file key
    whose URI looks like a zip's is still a file, an archive key goes to ``fetch_archive``."""
    files = {f"/f{i}": payload(2000 + i, seed=i) for i in range(3)}
    fetch, keys, key_of = _bulk_setup(files)
    zip_bytes = _zip_of(files)
    archives = FakeFetch({archive_uri("/data/experiments/E1"): zip_bytes, "/zip": zip_bytes})
    odd = "/data/projects/P/resources/R/files/odd?format=zip"  # a file named like a query
    fetch.answers[odd] = b"just a file"
    cc = make_cache(fetch, fetch_archive=archives)
    archive = ContentKey.archive("/data/experiments/E1", mtime="2024-01-01")
    assert (archive.kind, archive.size, archive.uri) == (
        ARCHIVE,
        None,
        "/data/experiments/E1/files?format=zip",
    )
    assert archive_object_uri(archive.uri) == "/data/experiments/E1"
    with cc.open(archive) as h:  # size unknown: read past the end
        assert h.read(0, len(zip_bytes) + 1, later()) == zip_bytes
        assert h.wait(later())
    assert read_all(cc, ContentKey(odd, 11, md5(b"just a file"))) == b"just a file"
    assert cc.bulk("/zip", keys.values(), key_of) == 3
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]
    assert archives.calls == Counter({archive.uri: 1, "/zip": 1})
    assert fetch.calls == Counter({odd: 1})


def test_the_kind_leaves_the_cache_name_of_a_key_unchanged():
    """Entries cached before ``kind`` existed keep their names (no refetch after an upgrade)."""
    key = ContentKey("/data/x/files?format=zip", None, "", 5.0)
    assert key.hexname() == ContentKey.archive("/data/x", mtime=5.0).hexname()
    assert (
        key.hexname()
        == hashlib.sha256(
            json.dumps(["/data/x/files?format=zip", None, "", 5.0]).encode()
        ).hexdigest()
    )


# -- bulk zips: partial files created ahead of the zip (issue 12, B2) -----------------------------


def _partials(cc: ContentCache) -> List[str]:
    return os.listdir(cc._partial_dir)  # the test looks at the cache's own folder


def test_bulk_creates_the_partial_files_ahead_of_the_zip(make_cache):
    """While the zip has sent nothing yet, every wanted member already has its partial file
    (created by a helper thread, not by the feeder as its member begins); then all arrive
    whole, nothing is left in ``partial/``."""
    files = {f"/f{i:02d}": payload(3000, seed=i) for i in range(12)}
    fetch, keys, key_of = _bulk_setup(files, hold_at=0)
    cc = make_cache(fetch)
    assert cc.bulk("/zip", keys.values(), key_of) == 12
    assert fetch.held.wait(WAIT)
    wait_for(lambda: len(_partials(cc)) == 12, "12 partial files before the first byte")
    fetch.gate.set()
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]
    wait_for(lambda: all(cc.state(k) == "cached" for k in keys.values()), "the members")
    assert _partials(cc) == [] and fetch.calls == Counter({"/zip": 1})


def test_bulk_without_create_ahead_creates_each_partial_as_its_member_begins(
    make_cache, monkeypatch
):
    """The switch: ``CREATE_AHEAD = False`` is the old way (no file before its member)."""
    from xnatfs.cache import bulk

    monkeypatch.setattr(bulk, "CREATE_AHEAD", False)
    files = {f"/f{i:02d}": payload(3000, seed=i) for i in range(6)}
    fetch, keys, key_of = _bulk_setup(files, hold_at=0)
    cc = make_cache(fetch)
    cc.bulk("/zip", keys.values(), key_of)
    assert fetch.held.wait(WAIT)
    assert _partials(cc) == []
    fetch.gate.set()
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]


def test_bulk_failing_at_once_leaves_no_partial_created_ahead(make_cache):
    """The zip fails before its first byte: every member is fetched alone into the file made
    for it ahead (or a fresh one), and once all are cached no partial file is left over."""
    files = {f"/f{i:02d}": payload(4000, seed=i) for i in range(10)}
    fetch, keys, key_of = _bulk_setup(files)
    fetch.answers["/zip"] = Failure(b"", ServerDown("connection reset"))
    cc = make_cache(fetch)
    cc.bulk("/zip", keys.values(), key_of)
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]
    wait_for(lambda: all(cc.state(k) == "cached" for k in keys.values()), "the members")
    assert _partials(cc) == []
    assert all(fetch.calls[uri] == 1 for uri in files)


def test_close_during_a_bulk_fetch_leaves_no_partial_created_ahead(tmp_path):
    files = {f"/f{i:02d}": payload(5000, seed=i) for i in range(10)}
    fetch, keys, key_of = _bulk_setup(files, hold_at=0)
    cc = ContentCache(tmp_path / "cc", size_limit=1 << 30, fetch=fetch)
    cc.start()
    cc.bulk("/zip", keys.values(), key_of)
    assert fetch.held.wait(WAIT)
    wait_for(lambda: len(_partials(cc)) == 10, "the partial files created ahead")
    closer = threading.Thread(target=cc.close, args=(later(),))
    closer.start()
    wait_for(lambda: cc._closing, "close to begin")
    fetch.gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert _partials(cc) == []


def test_bulk_makes_all_its_members_durable_with_one_syncfs_before_indexing(
    make_cache, monkeypatch
):
    """150 members are adopted in three index transactions, after one ``syncfs`` for all of
    them (it was one per batch of 64); none is indexed before it."""
    from xnatfs.cache import bulk

    real = bulk._syncfs
    assert real is not None, "glibc on Linux (the only platform xnatfs mounts on) has syncfs"
    synced_at: List[int] = []  # entries in the index at each syncfs
    cc_box: List[ContentCache] = []

    def counting(fd: int) -> int:
        synced_at.append(cc_box[0].stats["entries"])
        return real(fd)

    monkeypatch.setattr(bulk, "_syncfs", counting)
    files = {f"/f{i:03d}": payload(700, seed=i) for i in range(150)}
    fetch, keys, key_of = _bulk_setup(files)
    cc = make_cache(fetch)
    cc_box.append(cc)
    cc.bulk("/zip", keys.values(), key_of)
    wait_for(lambda: all(cc.state(k) == "cached" for k in keys.values()), "the members")
    assert synced_at == [0]
    for uri, key in keys.items():
        assert read_all(cc, key) == files[uri]


# -- what fs.noopen asks of the cache: taint listeners, trusted keys (issue 12, B3) -------------


def test_taint_listeners_hear_the_key_of_a_failed_download(make_cache):
    good = payload(50_000, seed=3)
    fetch = FakeFetch({"/f": Failure(good[:1000], ServerDown("cut")), "/ok": good})
    cc = make_cache(fetch)
    heard: List[str] = []
    cc.on_taint(heard.append)
    ok, bad = key_for("/ok", good), key_for("/f", good)
    assert read_all(cc, ok) == good
    assert heard == [] and cc.trusted(ok)
    with pytest.raises(ServerDown):
        read_all(cc, bad)
    assert heard == [bad.hexname()]
    assert not cc.trusted(bad)


def test_a_key_is_trusted_only_once_its_download_has_ended(make_cache):
    data = payload(20_000, seed=4)
    fetch = FakeFetch({"/d": data}, hold_at=0)
    cc = make_cache(fetch)
    key = key_for("/d", data)
    with cc.open(key) as h:
        assert fetch.held.wait(WAIT)
        assert not cc.trusted(key) and cc.state(key) == "downloading"
        fetch.gate.set()
        assert h.wait(later())
    wait_for(lambda: cc.trusted(key), "trusted after the download")
