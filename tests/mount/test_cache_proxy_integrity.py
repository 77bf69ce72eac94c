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

from tests.conftest import ADMIN
from tests.helpers.waiting import wait_for
from tests.mount.conftest import needs_nginx
from tests.mount.helpers import md5, put_file

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
