"""``xnatfs cache-proxy`` (issue 13 §1): four mounts share one nginx cache of file bytes.

What is checked, at the emulator's access log (the server's view) and through the mounts with
plain file operations:

* 4 mounts with separate caches read the same 20 files: each file's bytes leave the server once
  (HEADs, the proxy's authorization questions, aside), every MD5 right;
* a user whose access ended gets an error through the mount (and a 404 from the proxy), never the
  cached bytes;
* a file re-uploaded with new content is read as the new bytes on every mount (the new digest is a
  new cache key), once the listing TTL has passed;
* cached answers carry no Set-Cookie.

Skipped (with the reason in the summary) only where nginx is not installed.
"""

from __future__ import annotations

import errno
import os
import random
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

import requests

from tests.conftest import ADMIN, needs_fuse
from tests.helpers.waiting import wait_for
from tests.mount.conftest import needs_nginx
from tests.mount.helpers import hash_files, md5, put_file

pytestmark = [needs_fuse, needs_nginx]

ALICE = ("alice", "alice-pw")
FILES = "DEMO2/resources/SHARED/files"
N_FILES = 20


def _file_gets(records, since: int = 0):
    """{file name: [bytes sent, ...]} for the 200 GETs of SHARED files after ``since``."""
    out: dict = {}
    for method, path_qs, status, sent in records[since:]:
        path = unquote(path_qs.split("?", 1)[0])
        if (
            method == "GET"
            and status == 200
            and "/resources/" in path
            and "/files/f" in path
            and "DEMO2" in path
        ):
            out.setdefault(path.rsplit("/", 1)[1], []).append(int(sent))
    return out


def test_four_mounts_share_one_cache_and_xnat_still_authorizes(
    make_emulator, make_mount, cache_proxy, tmp_path
):
    emu = make_emulator()
    rnd = random.Random(13)
    blobs = {f"f{i:02d}.bin": rnd.randbytes(rnd.randint(20_000, 200_000)) for i in range(N_FILES)}
    for name, data in blobs.items():
        put_file(emu.url, f"/data/projects/{FILES}/{name}", data)
    proxy = cache_proxy(emu.url)
    # --bulk-zip 0: zips are per-folder answers the proxy passes through uncached (SCALING.md)
    mounts = [make_mount(proxy, "--bulk-zip", "0", "--listing-ttl", "1") for _ in range(4)]
    mark = emu.mark()

    def read_all(m):
        return hash_files([str(m.path / FILES / n) for n in blobs], threads=4)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read_all, mounts))
    want = {n: [md5(d), len(d)] for n, d in blobs.items()}
    for m, got in zip(mounts, results):
        assert {os.path.basename(p): v for p, v in got.items()} == want, m.path
    emu.mark()
    gets = _file_gets(emu.records(), mark)
    # each file's bytes left XNAT exactly once, for four mounts
    assert gets == {n: [len(d)] for n, d in blobs.items()}, gets
    heads = [r for r in emu.records()[mark:] if r[0] == "HEAD" and "/files/f" in r[1]]
    assert len(heads) >= 4 * N_FILES  # XNAT was asked about every read of every mount

    # a cached answer carries no cookie, and the cache is keyed on the listed digest
    uri = next(r[1] for r in emu.records()[mark:] if r[0] == "GET" and "f00.bin" in r[1])
    assert "xnatfs_md5=" + md5(blobs["f00.bin"]) in uri
    base = "http://" + urlsplit(proxy).netloc
    r = requests.get(base + uri, auth=ADMIN, timeout=30)
    assert r.status_code == 200 and r.content == blobs["f00.bin"]
    assert r.headers.get("X-Xnatfs-Cache") == "HIT" and "Set-Cookie" not in r.headers

    # alice may not read DEMO2: through the proxy she gets XNAT's 404, not the cached bytes
    r = requests.get(base + uri, auth=ALICE, timeout=30)
    assert r.status_code == 404 and blobs["f00.bin"] not in r.content

    # ... nor through a mount: she listed the folder while a member, then lost access
    emu.emu.store.add_member("alice", "DEMO2")
    am = make_mount(proxy, "--bulk-zip", "0", "--prefetch", "0", credentials=ALICE, name="alice")
    assert sorted(os.listdir(am.path / FILES)) == sorted(blobs)
    emu.emu.store.remove_member("alice", "DEMO2")
    mark = emu.mark()
    got = hash_files([str(am.path / FILES / "f01.bin")])
    assert list(got.values()) == [["error", errno.ENOENT]], got
    emu.mark()
    assert _file_gets(emu.records(), mark) == {}
    assert any(r[0] == "HEAD" and "f01.bin" in r[1] and r[2] == 404 for r in emu.records()[mark:])
    last = [
        ln
        for ln in (tmp_path / "proxy-run" / "access.log").read_text().splitlines()
        if "f01.bin" in ln
    ][-1]
    assert '" 404 ' in last and "cache=HIT" not in last, last

    # a re-upload (same URI, new bytes): every mount reads the new bytes after the TTL
    new = rnd.randbytes(54_321)
    mark = emu.mark()
    put_file(emu.url, f"/data/projects/{FILES}/f05.bin", new)
    for m in mounts:
        wait_for(
            lambda m=m: (
                hash_files([str(m.path / FILES / "f05.bin")])
                == {str(m.path / FILES / "f05.bin"): [md5(new), len(new)]}
            ),
            60,
            f"{m.path} to read the new f05.bin",
        )
    emu.mark()
    assert _file_gets(emu.records(), mark) == {"f05.bin": [len(new)]}
