"""What a mount behind ``xnatfs cache-proxy`` pays for "no byte from the proxy's disk before its
verdict" (docs/SCALING.md, "A poisoned entry"): ``open`` to the first 64 bytes and to the whole
file of a 64 MiB file, on fresh mounts, for a proxy HIT, a MISS and a file streamed past the
mount's cache.  A measurement, not a test (benchmarks are not run in CI): it uses the test
suite's emulator, mount and proxy fixtures, loaded as plugins, and prints what it measured:

    PYTHONPATH=. python -m pytest -p tests.conftest -p tests.mount.conftest \
        benchmarks/proxycost.py -s -q

(``XNATFS_BENCH_N``: mounts per case, default 5).
"""

from __future__ import annotations

import os
import statistics
import time
from urllib.parse import urlsplit

import requests

from tests.conftest import ADMIN, needs_fuse
from tests.mount.conftest import needs_nginx
from tests.mount.helpers import md5, put_file

pytestmark = [needs_fuse, needs_nginx]

FILES = "DEMO2/resources/SHARED/files"
SIZE = 64 << 20


def _read(make_mount, proxy: str, name: str, cache_size: str, data: bytes):
    """(seconds to the first 64 bytes, seconds to the whole file) of one fresh mount."""
    m = make_mount(proxy, "--bulk-zip", "0", "--prefetch", "0", "--cache-size", cache_size)
    path = m.path / FILES / name
    os.stat(path)  # the listing, outside the measure
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        head = f.read(64)
        t1 = time.perf_counter()
        rest = f.read()
    t2 = time.perf_counter()
    assert head + rest == data
    m.umount()
    return t1 - t0, t2 - t0


def test_first_byte_and_whole_file_through_the_proxy(make_emulator, make_mount, cache_proxy):
    n = int(os.environ.get("XNATFS_BENCH_N", "5"))
    emu = make_emulator()
    proxy = cache_proxy(emu.url)
    data = os.urandom(SIZE)
    put_file(emu.url, f"/data/projects/{FILES}/big.bin", data)
    rows = requests.get(
        f"{emu.url}/data/projects/{FILES}", params={"format": "json"}, auth=ADMIN, timeout=30
    ).json()["ResultSet"]["Result"]
    uri = next(r["URI"] for r in rows if r["Name"] == "big.bin")
    root = "http://" + urlsplit(proxy).netloc
    # another node read it: the proxy's entry is warm
    assert requests.get(f"{root}{uri}?xnatfs_md5={md5(data)}", auth=ADMIN, timeout=60).ok
    out = {}
    cases = (("cached download, proxy HIT", "10G"), ("streamed, entry warm", "32M"))
    for label, cache_size in cases:
        mark = emu.mark()
        times = [_read(make_mount, proxy, "big.bin", cache_size, data) for _ in range(n)]
        emu.mark()
        gets = sum(1 for r in emu.records()[mark:] if r[0] == "GET" and "big.bin" in r[1])
        out[label] = (times, gets)
    times = []
    for i in range(n):  # a new file each time: the proxy's entry is cold
        cold = os.urandom(SIZE)
        put_file(emu.url, f"/data/projects/{FILES}/cold{i}.bin", cold)
        times.append(_read(make_mount, proxy, f"cold{i}.bin", "10G", cold))
    out["cached download, proxy MISS"] = (times, n)
    for label, (times, gets) in out.items():
        first = sorted(t[0] * 1000 for t in times)
        whole = statistics.median(t[1] * 1000 for t in times)
        print(
            f"{label}: first 64 B median {statistics.median(first):.1f} ms "
            f"({first[0]:.1f}-{first[-1]:.1f}); whole file median {whole:.0f} ms; "
            f"file GETs at XNAT {gets} for {len(times)} reads"
        )
