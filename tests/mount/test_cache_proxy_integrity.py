"""``xnatfs cache-proxy``: what its cache holds never reaches ``read`` as XNAT's bytes unless it
is, and what it keeps on disk is private (review findings, docs/SCALING.md).

* A poisoned entry (another version's bytes stored under a digest, by a stale listing's read
  or on purpose) reaches no reader: a mount behind the proxy serves a cached download's bytes
  only after its MD5 verdict, refetches a mismatch past the proxy's entry (``X-Xnatfs-Refresh``,
  which also replaces the entry), and streams a file larger than its cache from XNAT, uncached.
* Only ``X-Xnatfs-Refresh: 1`` makes the proxy ask XNAT again (not ``Cache-Control`` or
  ``Pragma``), and only for a reader XNAT authorizes.
* No ``Set-Cookie`` (a live session id) reaches the proxy's cache files.
* Started as root, the proxy's logs (every path every user read) are readable by root only,
  and its unprivileged workers still fill and serve the cache.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse
from tests.helpers.waiting import wait_for
from tests.mount.conftest import needs_nginx
from tests.mount.helpers import hash_files, md5, put_file

pytestmark = needs_nginx

ALICE = ("alice", "alice-pw")
FILES = "DEMO2/resources/SHARED/files"


def _listed_uri(emu_url: str, name: str) -> str:
    """The URI a mount downloads ``name`` from: the listing's URI column."""
    rows = requests.get(
        f"{emu_url}/data/projects/{FILES}", params={"format": "json"}, auth=ADMIN, timeout=30
    ).json()["ResultSet"]["Result"]
    return next(r["URI"] for r in rows if r["Name"] == name)


def _root(proxy: str) -> str:
    return "http://" + urlsplit(proxy).netloc


@needs_fuse
@pytest.mark.parametrize("cache_size", ["1M", "10G"])  # streamed / cached download
def test_a_poisoned_entry_never_reaches_read(make_emulator, make_mount, cache_proxy, cache_size):
    emu = make_emulator()
    v1 = b"V1" * (12 << 20)  # 24 MiB (with 1M: larger than the mount's cache, streamed)
    v2 = b"XX" * (12 << 20)
    uri = f"/data/projects/{FILES}/big.bin"
    proxy = cache_proxy(emu.url)
    # v2 on XNAT while a reader still asks with v1's digest (a stale listing, or on purpose):
    # the proxy stores v2's bytes under v1's key
    put_file(emu.url, uri, v2)
    poisoned = f"{_root(proxy)}{_listed_uri(emu.url, 'big.bin')}?xnatfs_md5={md5(v1)}"
    r = requests.get(poisoned, auth=ADMIN, timeout=60)
    assert r.status_code == 200 and r.headers.get("X-Xnatfs-Cache") == "MISS"
    assert r.content == v2
    # XNAT goes back to v1: its listing says md5(v1), the proxy's entry for it holds v2
    put_file(emu.url, uri, v1)
    m = make_mount(proxy, "--bulk-zip", "0", "--cache-size", cache_size, "--prefetch", "0")
    path = m.path / FILES / "big.bin"
    with open(path, "rb") as f:
        head = f.read(64)
    assert head == v1[:64], f"read() returned {head[:16]!r}..., XNAT has {v1[:16]!r}..."
    assert hash_files([str(path)]) == {str(path): [md5(v1), len(v1)]}
    if cache_size == "10G":
        # the mount's refetch replaced the proxy's entry: every reader now gets v1 from it
        r = requests.get(poisoned, auth=ADMIN, timeout=60)
        assert r.headers.get("X-Xnatfs-Cache") == "HIT" and r.content == v1


def test_only_the_refresh_header_makes_the_proxy_ask_xnat_again(make_emulator, cache_proxy):
    emu = make_emulator()
    old, new = os.urandom(40_000), os.urandom(40_000)
    uri = f"/data/projects/{FILES}/r.bin"
    put_file(emu.url, uri, old)
    proxy = cache_proxy(emu.url)
    url = f"{_root(proxy)}{_listed_uri(emu.url, 'r.bin')}?xnatfs_md5={md5(old)}"

    def get(auth=ADMIN, **headers):
        return requests.get(url, auth=auth, headers=headers, timeout=30)

    r = get()
    assert r.headers.get("X-Xnatfs-Cache") == "MISS" and r.content == old
    put_file(emu.url, uri, new)  # what a refresh would now store under old's key
    for headers in (
        {"Cache-Control": "no-cache"},
        {"Pragma": "no-cache"},
        {"X-Xnatfs-Refresh": "0"},
        {"X-Xnatfs-Refresh": "yes"},
    ):
        r = get(**headers)
        assert (r.headers.get("X-Xnatfs-Cache"), r.content == old) == ("HIT", True), headers
    # a reader XNAT refuses gets XNAT's answer and leaves the entry alone
    r = get(auth=ALICE, **{"X-Xnatfs-Refresh": "1"})
    assert r.status_code == 404 and old not in r.content and new not in r.content
    r = get()
    assert (r.headers.get("X-Xnatfs-Cache"), r.content == old) == ("HIT", True)
    # the refresh: asked of XNAT (after its authorization), stored in place of the entry
    mark = emu.mark()
    r = get(**{"X-Xnatfs-Refresh": "1"})
    assert r.headers.get("X-Xnatfs-Cache") == "BYPASS" and r.content == new
    emu.mark()
    gets = [rec for rec in emu.records()[mark:] if rec[0] == "GET" and "r.bin" in rec[1]]
    assert len(gets) == 1, gets
    r = get()
    assert (r.headers.get("X-Xnatfs-Cache"), r.content == new) == ("HIT", True)


def test_no_session_id_in_the_proxy_cache(make_emulator, cache_proxy, tmp_path):
    emu = make_emulator()
    data = os.urandom(50_000)
    put_file(emu.url, f"/data/projects/{FILES}/secret.bin", data)
    proxy = cache_proxy(emu.url)
    url = f"{_root(proxy)}{_listed_uri(emu.url, 'secret.bin')}?xnatfs_md5={md5(data)}"
    r = requests.get(url, auth=ADMIN, timeout=30)
    assert r.status_code == 200 and r.content == data
    assert r.headers.get("X-Xnatfs-Cache") == "MISS" and "Set-Cookie" not in r.headers
    # XNAT did set a session cookie (a Basic-auth request): the cache must not have kept it
    direct = requests.get(emu.url + _listed_uri(emu.url, "secret.bin"), auth=ADMIN, timeout=30)
    assert "JSESSIONID" in direct.headers.get("Set-Cookie", "")
    r = requests.get(url, auth=ADMIN, timeout=30)
    assert r.headers.get("X-Xnatfs-Cache") == "HIT" and r.content == data
    assert "Set-Cookie" not in r.headers
    files = [os.path.join(d, f) for d, _s, fs in os.walk(tmp_path / "proxy-cache") for f in fs]
    assert files, "nothing cached"
    found = []
    for name in files:
        with open(name, "rb") as f:
            blob = f.read()
        if b"JSESSIONID" in blob or b"Set-Cookie" in blob:
            found.append((name, [ln for ln in blob.split(b"\r\n") if b"Cookie" in ln]))
    assert not found, f"session ids stored in the proxy's cache files: {found}"


@pytest.fixture
def reachable_dir():
    """A folder nginx's unprivileged workers can enter (pytest's temp dirs are 0700 root);
    torn down after ``cache_proxy`` (requested first)."""
    base = tempfile.mkdtemp(prefix="xnatfs-proxy-test-")
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the proxy's documented service setup")
def test_logs_are_private_and_unprivileged_workers_still_cache(
    reachable_dir, make_emulator, cache_proxy
):
    base = Path(reachable_dir)
    emu = make_emulator()
    data = os.urandom(30_000)
    put_file(emu.url, f"/data/projects/{FILES}/log.bin", data)
    proxy = cache_proxy(emu.url, base=base, worker_user="")  # workers: www-data (or nobody)
    url = f"{_root(proxy)}{_listed_uri(emu.url, 'log.bin')}?xnatfs_md5={md5(data)}"
    for verdict in ("MISS", "HIT"):  # the workers wrote the cache file, then read it
        r = requests.get(url, auth=ADMIN, timeout=30)
        assert (r.status_code, r.headers.get("X-Xnatfs-Cache"), r.content == data) == (
            200,
            verdict,
            True,
        )
    run = base / "proxy-run"
    wait_for(lambda: "log.bin" in (run / "access.log").read_text(), 10, "the access log line")
    for name in ("access.log", "error.log", "nginx.pid"):
        st = os.stat(run / name)
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, f"{name}: {oct(st.st_mode)}"
    cached = [os.path.join(d, f) for d, _s, fs in os.walk(base / "proxy-cache") for f in fs]
    assert cached and all(os.stat(p).st_uid != 0 for p in cached), cached
