"""The read cache under damage and load, through real mounts (issue 18 §1-2, issue 17 §5).

Never a wrong byte: damaged cache files (bit flip, truncation, same-size replacement, deletion;
while unmounted and while mounted) are fetched again; bytes that fail their size or MD5 check
end in EIO, never in a successful read; a file larger than the cache disk is streamed; many
readers share one download; a daemon killed during a bulk zip leaves nothing half-served.

Page-cache drops need root (the tests run as root in CI); without it the while-mounted case is
skipped, with the reason.  Sizes are the issue's; ``XNATFS_RELIABILITY_STREAM_MIB`` shrinks the
300 MiB file of the larger-than-the-cache case on slow machines (default 300).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import needs_fuse
from tests.helpers.damage import damaged_page_then_eio, flip_a_bit
from tests.mount.helpers import (
    api,
    downloads,
    forget_pages,
    hash_files,
    md5,
    put_file,
    sh,
    wait_until,
)

pytestmark = [needs_fuse]

SCAN = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1/resources/DICOM/files"
STREAM_MIB = int(os.environ.get("XNATFS_RELIABILITY_STREAM_MIB", "300"))


def _random_bytes(n: int, seed: int) -> bytes:
    """``n`` pseudo-random bytes, 1 MiB blocks of one seeded stream (randbytes takes at most
    2**31 bits at a time)."""
    rnd = random.Random(seed)
    return b"".join(rnd.randbytes(min(1 << 20, n - off)) for off in range(0, n, 1 << 20))


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _settled(m) -> None:
    """Wait until the daemon has no download in flight: a reader has every byte and the
    verdict before the file is synced and indexed, so the cache directory lags a little."""
    deadline = time.monotonic() + 60
    while json.loads((m.path / ".xnatfs" / "stats").read_text())["content_cache"][
        "downloads_in_flight"
    ]:
        assert time.monotonic() < deadline, m.log_tail()
        time.sleep(0.02)


def _cache_files(cache: Path) -> List[Path]:
    return sorted((cache / "content" / "index").glob("??/*.bin"))


def _damage(files: List[Path]) -> None:
    """Bit flip, truncation to 100 bytes, same-size replacement, deletion: one file each."""
    flip, cut, swap, gone = files[:4]
    with open(flip, "r+b") as f:
        f.seek(os.path.getsize(flip) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    os.truncate(cut, 100)
    size = os.path.getsize(swap)
    tmp = swap.with_suffix(".tmp")
    tmp.write_bytes(random.Random(3).randbytes(size))
    os.replace(tmp, swap)
    gone.unlink()


def _verify(cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xnatfs", "cache", "verify", "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("when", ["unmounted", "mounted"])
def test_damaged_cache_files_are_never_served(shared_emulator, make_mount, tmp_path, when):
    cache = tmp_path / "cache"
    m = make_mount(shared_emulator.url, "--prefetch", "0", "--bulk-zip", "0", cache=cache)
    names = sorted(os.listdir(m.path / SCAN))[:12]
    paths = [str(m.path / SCAN / n) for n in names]
    first = hash_files(paths)
    assert all(v[0] != "error" for v in first.values())
    _settled(m)
    files = _cache_files(cache)
    assert len(files) == len(names)
    if when == "unmounted":
        m.umount()
        _damage(files)
        res = _verify(cache)  # finds all four, repairs nothing: the mount must cope
        assert res.returncode == 1 and ", 4 bad" in res.stdout, res.stdout + res.stderr
        assert res.stderr.count("bad entry") == 4
        m = make_mount(shared_emulator.url, "--prefetch", "0", "--bulk-zip", "0", cache=cache)
        paths = [str(m.path / SCAN / n) for n in names]
        os.listdir(m.path / SCAN)
    else:
        # the kernel still holds the first reads' pages of these files (the open of a verified
        # entry keeps them): forgotten, the second reads reach the daemon, which meets the
        # damage.  (The remount above has new inodes: nothing held.)
        forget_pages(paths)
        _damage(files)
    mark = shared_emulator.mark()
    second = hash_files(paths)
    assert list(second.values()) == list(first.values()), "0 wrong bytes"
    assert len(downloads(shared_emulator.since(mark))) == 4, "exactly the 4 damaged files"
    assert m.log_text().count("dropped, fetched again") == 4
    res = _verify(cache)
    assert res.returncode == 0 and ", 0 bad" in res.stdout, res.stdout + res.stderr


def _put_and_find(emu, uri: str, data: bytes) -> Path:
    put_file(emu.url, uri, data)
    name = uri.rsplit("/", 1)[1]
    found = [p for p in emu.data.rglob(name) if p.is_file()]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("body", ["damaged", "longer", "shorter"])
def test_bytes_that_fail_their_check_are_an_io_error(make_emulator, make_mount, tmp_path, body):
    """The server's file changed behind its listing (size and MD5 stay the old ones): ``cat``
    fails with EIO on every try instead of exiting 0 (issue 17 §5); nothing is cached."""
    emu = make_emulator()
    data = random.Random(5).randbytes(3 << 20)
    stored = _put_and_find(emu, "/data/projects/DEMO2/resources/BAD/files/bad.bin", data)
    stored.write_bytes(
        {"damaged": data[:-1] + b"!", "longer": data + b"trailing junk", "shorter": data[:-1000]}[
            body
        ]
    )
    m = make_mount(emu.url, "--prefetch", "0")
    path = m.path / "DEMO2/resources/BAD/files/bad.bin"
    for _ in range(2):
        res = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
        assert res.returncode != 0 and b"Input/output error" in res.stderr
        assert len(res.stdout) < len(data) or res.stdout != data
    assert os.getxattr(path, "user.xnat.cache_state") == b"absent"
    errors = [line for line in m.log_text().splitlines() if " ERROR " in line and "bad.bin" in line]
    assert errors and all("bad.bin" in line for line in errors)
    assert not list((m.cache / "content" / "partial").iterdir())


def test_sixteen_readers_and_eight_copies_one_download_per_file(
    shared_emulator, make_mount, tmp_path
):
    big = _random_bytes(100 << 20, seed=17)
    put_file(shared_emulator.url, "/data/projects/DEMO2/resources/HUNDRED/files/big.bin", big)
    m = make_mount(shared_emulator.url)
    big_path = m.path / "DEMO2/resources/HUNDRED/files/big.bin"
    scan = m.path / SCAN
    os.listdir(big_path.parent)
    names = sorted(os.listdir(scan))
    mark = shared_emulator.mark()
    copies = [
        subprocess.Popen(
            ["cp", "-r", str(scan), str(tmp_path / f"copy{i}")], stderr=subprocess.DEVNULL
        )
        for i in range(8)
    ]
    got = hash_files([str(big_path)] * 16, threads=16, timeout=300)
    for p in copies:
        assert p.wait(timeout=300) == 0
    assert list(got.values()) == [[md5(big), len(big)]]
    reference = hash_files([str(scan / n) for n in names])
    for i in range(8):
        for n in names:
            assert md5((tmp_path / f"copy{i}" / n).read_bytes()) == reference[str(scan / n)][0]
    records = shared_emulator.since(mark)
    dl = downloads(records)
    assert sorted(dl) == sorted(set(dl)), "one download per file"
    zips = [r for r in api(records) if "format=zip" in r[1]]
    assert len(zips) <= 1, zips  # the scan's files: at most one zip as well


def test_kill_during_a_bulk_zip_then_remount_resumes(make_emulator, make_mount, tmp_path):
    emu = make_emulator()
    rnd = random.Random(23)
    blobs: Dict[str, bytes] = {f"m{i:03d}.dcm": rnd.randbytes(512 << 10) for i in range(160)}
    for name, data in blobs.items():
        put_file(emu.url, f"/data/projects/DEMO2/resources/ZIP/files/{name}", data)
    cache = tmp_path / "cache"
    emu.faults.latency_ms = 2
    m = make_mount(emu.url, "--bulk-zip", "8", "--prefetch", "0", cache=cache)
    files = m.path / "DEMO2/resources/ZIP/files"
    os.listdir(files)
    copy = subprocess.Popen(
        ["cp", "-r", str(files), str(tmp_path / "copy1")], stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    partial = cache / "content" / "partial"
    while len(list(partial.iterdir())) < 20:  # members arriving: the zip is streaming
        assert time.monotonic() < deadline, m.log_tail()
        time.sleep(0.005)
    os.kill(m.proc.pid, signal.SIGKILL)
    at_kill = len(list(partial.iterdir())), len(_cache_files(cache))
    m.proc.wait(timeout=20)
    copy.wait(timeout=60)
    m.cleanup()
    for p in (tmp_path / "copy1").glob("*"):  # what the first cp got: right, or cut short
        got = p.read_bytes()
        assert blobs[p.name][: len(got)] == got, p.name
    emu.faults.latency_ms = 0
    m2 = make_mount(emu.url, "--bulk-zip", "8", "--prefetch", "0", cache=cache, name="mnt2")
    files2 = m2.path / "DEMO2/resources/ZIP/files"
    sh(["cp", "-r", str(files2), str(tmp_path / "copy2")], timeout=120)
    for name, data in blobs.items():
        assert (tmp_path / "copy2" / name).read_bytes() == data, name
    res = _verify(cache)
    assert res.returncode == 0 and ", 0 bad" in res.stdout, res.stdout + res.stderr
    print(f"killed with {at_kill[0]} partial files and {at_kill[1]} of {len(blobs)} members cached")


_READ_AT = r"""
import hashlib, json, os, sys, time
path, size = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
fd = os.open(path, os.O_RDONLY)
h = hashlib.md5()
pos = 0
while True:
    chunk = os.pread(fd, 1 << 20, pos)
    if not chunk:
        break
    h.update(chunk); pos += len(chunk)
seconds = time.monotonic() - start
# reads back in one open: each before the window restarts the GET; the last bytes are read
# before the second seek back, since a seek back cuts a GET that served bytes short of its
# check and the open's end is then EIO (its reads go to the daemon, direct_io: no page serves)
back = [os.pread(fd, 4096, off) for off in (size // 2, size - 4096, 1000)]
print(json.dumps([h.hexdigest(), pos, [hashlib.md5(b).hexdigest() for b in back], seconds]))
"""


def test_a_file_larger_than_the_cache_disk_is_streamed(
    make_emulator, make_mount, tmp_path, cache_on_64m_tmpfs
):
    emu = make_emulator()
    big = _random_bytes(STREAM_MIB << 20, seed=29)
    put_file(emu.url, "/data/projects/DEMO2/resources/HUGE/files/huge.bin", big)
    small = random.Random(31).randbytes(1 << 20)
    put_file(emu.url, "/data/projects/DEMO2/resources/HUGE/files/small.bin", small)
    m = make_mount(emu.url, "--prefetch", "0", cache=cache_on_64m_tmpfs)
    path = m.path / "DEMO2/resources/HUGE/files/huge.bin"
    os.listdir(path.parent)
    mark = emu.mark()
    res = subprocess.run(
        [sys.executable, "-c", _READ_AT, str(path), str(len(big))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr + m.log_tail()
    digest, n, back, seconds = json.loads(res.stdout)
    assert (digest, n) == (md5(big), len(big))
    print(
        f"streamed {n >> 20} MiB sequentially in {seconds:.2f} s "
        f"({n / seconds / 2**20:.0f} MiB/s, MD5 in the reader included)"
    )
    half = len(big) // 2
    assert back == [md5(big[half : half + 4096]), md5(big[-4096:]), md5(big[1000:5096])]
    gets = [p for p in downloads(emu.since(mark)) if p.endswith("/huge.bin")]
    assert 1 <= len(gets) <= 3, gets  # one for the pass, one per read back at most
    assert os.getxattr(path, "user.xnat.cache_state") == b"absent"
    hwm = _peak_rss_mb(m.proc.pid)
    print(f"daemon peak RSS {hwm:.0f} MB")
    assert hwm < 250, "issue 17: the daemon's peak RSS stays under 250 MB"
    assert hash_files([str(path.parent / "small.bin")]) == {
        str(path.parent / "small.bin"): [md5(small), len(small)]
    }  # the mount is usable
    assert not list((cache_on_64m_tmpfs / "content" / "partial").iterdir())
    res = _verify(cache_on_64m_tmpfs)
    assert res.returncode == 0 and ", 0 bad" in res.stdout, res.stdout + res.stderr


def test_a_full_cache_disk_is_evicted_before_a_read_fails(
    make_emulator, make_mount, cache_on_64m_tmpfs
):
    """Issue 18 §0: with the cache disk full of closed entries (the limit, 10G, is far above
    the disk), a 40 MiB read gave ENOSPC with 0 evictions."""
    emu = make_emulator()
    blobs = {f"f{i}.bin": _random_bytes(10 << 20, seed=40 + i) for i in range(5)}
    blobs["big.bin"] = _random_bytes(40 << 20, seed=50)
    for name, data in blobs.items():
        put_file(emu.url, f"/data/projects/DEMO2/resources/FULL/files/{name}", data)
    m = make_mount(emu.url, "--prefetch", "0", "--bulk-zip", "0", cache=cache_on_64m_tmpfs)
    base = m.path / "DEMO2/resources/FULL/files"
    paths = [str(base / name) for name in blobs]  # the five 10 MiB files first
    got = hash_files(paths, timeout=300)
    assert got == {str(base / n): [md5(d), len(d)] for n, d in blobs.items()}
    _settled(m)
    assert os.getxattr(base / "big.bin", "user.xnat.cache_state") == b"cached"
    stats = json.loads((m.path / ".xnatfs" / "stats").read_text())["content_cache"]
    assert stats["evictions"] >= 1, stats


def test_pages_of_a_failed_open_never_serve_the_next_one(make_emulator, make_mount, tmp_path):
    """A large cached entry from an earlier mount (hashed while it is read, above
    ``VERIFY_INLINE_MAX``) is damaged: a first reader is served the damaged page before the
    verdict and then fails with EIO, but the pages it read stay in the kernel's page cache.
    The next ``cat``, WITHOUT dropping caches, must give the right bytes: its open (a new
    download) does not keep those pages (``keep_cache`` only for verified entries,
    fs/keepcache.py).  A third ``cat`` (now a verified entry) is right too, and a fourth
    open keeps the pages; so does the first open after a clean download (warm reads stay
    page-cache fast: mincore finds the pages resident right after the open)."""
    from xnatfs.cache.content import VERIFY_INLINE_MAX

    emu = make_emulator()
    data = _random_bytes(VERIFY_INLINE_MAX + (4 << 20), seed=11)
    _put_and_find(emu, "/data/projects/DEMO2/resources/BIG/files/big.bin", data)
    cache = tmp_path / "cache"
    m = make_mount(emu.url, "--prefetch", "0", cache=cache)
    path = m.path / "DEMO2/resources/BIG/files/big.bin"
    assert md5(path.read_bytes()) == md5(data)
    _settled(m)
    # a clean download's pages serve the next open (the warm read costs no extra pass).  An
    # open that drops them leaves 0 resident.  (Not 1.0: under load a few pages of a read
    # went missing, 0.992-0.994 in 2 of 16 probes beside two busy loops.  The 0.51-0.89 once
    # seen here came from tests that emptied the machine's page cache: no test does now,
    # tests/mount/helpers.forget_pages.)
    assert _resident_after_open(path) > 0.9, "keep_cache after a clean download"
    m.umount()
    (stored,) = _cache_files(cache)
    flip_a_bit(stored, len(data) // 2)
    m = make_mount(emu.url, "--prefetch", "0", cache=cache)
    path = m.path / "DEMO2/resources/BIG/files/big.bin"
    # the damaged page first (a `cat` from the start reached the middle only after the
    # verdict when the machine was loaded)
    damaged_page_then_eio(path, data, len(data) // 2 - 8192)
    for _ in range(3):
        again = subprocess.run(["cat", str(path)], capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert md5(again.stdout) == md5(data), "0 wrong bytes"
    assert m.log_text().count("dropped, fetched again") == 1
    # warm reads keep their speed: an open of the verified entry keeps the pages
    assert _resident_after_open(path) > 0.9, "keep_cache for a verified entry"


def _resident_after_open(path: Path) -> float:
    """The fraction of ``path``'s pages in the page cache just after a new open of it (mmap +
    mincore, nothing read): ~1 when the open kept the pages of earlier reads, 0 when it
    dropped them."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec) / pages


#: an old open reads on after a new version was opened: first 4 KiB of the old one, then half
#: of the new one, then the old one to its end, then the new one to its end; prints per open
#: how many bytes of each version it got
_TWO_VERSIONS = r"""
import json, os, sys
path, half = sys.argv[1], int(sys.argv[2]) // 2
def read_on(fd, got):
    while True:
        b = os.pread(fd, 1 << 20, len(got))
        if not b:
            return bytes(got)
        got += b
fd1 = os.open(path, os.O_RDONLY)
first = os.pread(fd1, 4096, 0)
print("ready", flush=True)
sys.stdin.readline()  # meanwhile the file was replaced on XNAT
fd2 = os.open(path, os.O_RDONLY)
a2 = bytearray()
while len(a2) < half:
    a2 += os.pread(fd2, half - len(a2), len(a2))
old, new = read_on(fd1, bytearray(first)), read_on(fd2, a2)
print(json.dumps({n: [d.count(b"1"), d.count(b"2")] for n, d in (("old", old), ("new", new))}))
"""


def test_two_opens_of_two_versions_never_read_a_mix(shared_emulator, make_mount):
    """A file replaced on XNAT while a program reads the old version: a new open reads the new
    version, the old open reads on.  The kernel has one page cache per path, so pages each
    open filled reached the other, and both read to a successful end a mix of the two
    versions (old open 1 MiB + 4 KiB of v1, the rest v2; new open 1 MiB of v1).  Each open
    reads one whole version: the new one is served apart (direct_io) while the old one is
    open (fs/keepcache.py).  Found by a reviewer's reproducer."""
    size = 4 << 20
    uri = "/data/projects/DEMO2/resources/VR/files/big.bin"
    put_file(shared_emulator.url, uri, b"1" * size)
    m = make_mount(shared_emulator.url, "--listing-ttl", "1", "--bulk-zip", "0", "--prefetch", "0")
    path = m.path / "DEMO2/resources/VR/files/big.bin"
    with subprocess.Popen(
        [sys.executable, "-c", _TWO_VERSIONS, str(path), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        got = _two_versions(child, shared_emulator.url, uri, path, size)
    assert got == {"old": [size, 0], "new": [0, size]}, got


def _two_versions(child: subprocess.Popen, url: str, uri: str, path: Path, size: int) -> dict:
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        wait_until(lambda: os.getxattr(path, "user.xnat.cache_state") == b"cached", what="v1")
        put_file(url, uri, b"2" * size)
        v2 = md5(b"2" * size).encode()
        wait_until(lambda: os.getxattr(path, "user.xnat.digest") == v2, what="v2 listed")
        child.stdin.write("go\n")
        child.stdin.flush()
        return dict(json.loads(child.stdout.readline()))
    finally:
        child.kill()
