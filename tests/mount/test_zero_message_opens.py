"""Zero-message opens (issue 12, B3; ``fs/noopen.py``): on a ``--read-only
--zero-message-opens`` mount the kernel opens files without asking the daemon, keeps their
pages across opens, and reads still give XNAT's bytes: the same as a mount that answers every
open, a changed file read anew, generated files whole and fresh, writes refused."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import needs_fuse
from tests.helpers.damage import damaged_page_then_eio, flip_a_bit
from tests.mount.helpers import hash_files, put_file, wait_for

pytestmark = [needs_fuse]

RESOURCE = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1/resources/DICOM/files"
NO_OPEN = ("--read-only", "--zero-message-opens")


def _stats(mount: Path) -> dict:
    return json.loads((mount / ".xnatfs" / "stats").read_text())


def _stats_after(mount: Path, when: float) -> dict:
    """The stats document made after ``when`` (``time.time()``): in this mode a document is
    made anew when the kernel asks for its attributes after the listing TTL, and shows the
    time it was made as its mtime."""
    stats = mount / ".xnatfs" / "stats"
    wait_for(lambda: stats.stat().st_mtime > when, timeout=30, what="a stats document made later")
    return _stats(mount)


def _wait_dropped(mount: Path) -> None:
    """Until no path is poisoned: the pages of bytes that failed their check are gone."""
    wait_for(
        lambda: _stats_after(mount, time.time())["zero_message_opens"]["poisoned_now"] == 0,
        what="the kernel's pages dropped",
    )


def _hashes(folder: Path) -> dict:
    """name -> [md5, size] of every file of ``folder``, read in a child process."""
    return {Path(p).name: v for p, v in hash_files(sorted(map(str, folder.iterdir()))).items()}


def test_reads_need_no_open_and_warm_ones_no_request(shared_emulator, make_mount):
    emu = shared_emulator
    plain = make_mount(emu.url, "--read-only")
    m = make_mount(emu.url, *NO_OPEN, "--listing-ttl", "1")
    files = sorted((m.path / RESOURCE).iterdir())
    assert len(files) > 3
    want = _hashes(plain.path / RESOURCE)
    assert _hashes(m.path / RESOURCE) == want
    cold = _stats_after(m.path, time.time())
    assert cold["zero_message_opens"] is not None, m.log_tail()
    # the first OPEN (answered ENOSYS) is the last: every later open is the kernel's alone
    assert cold["fuse_calls"].get("open", 0) <= 1, cold["fuse_calls"]
    assert cold["zero_message_opens"]["opens"] >= len(files)
    # warm: the pages of verified bytes stay, so a second pass sends no READ at all
    assert _hashes(m.path / RESOURCE) == want
    warm = _stats_after(m.path, time.time())
    # (the stats documents read in between cost their own READs)
    assert warm["fuse_calls"]["read"] - cold["fuse_calls"]["read"] <= 3, (cold, warm)
    assert warm["fuse_calls"].get("open", 0) == cold["fuse_calls"].get("open", 0)
    # the plain read-only mount answered an open per file
    assert _stats(plain.path)["fuse_calls"]["open"] >= len(files)


def test_generated_files_are_whole_and_fresh(shared_emulator, make_mount):
    """Without an open there is no direct I/O: ``stats`` is sized at lookup and read whole
    (each of many reads parses), and shows later numbers within seconds; ``.xnat.json``
    parses."""
    m = make_mount(shared_emulator.url, *NO_OPEN)  # listing TTL 60 s
    before = _stats(m.path)["fuse_calls"]["getattr"]
    for _ in range(20):
        os.listdir(m.path / "DEMO1")
        _stats(m.path)
    # made anew about every second while it is read (not only after the listing TTL)
    wait_for(
        lambda: _stats(m.path)["fuse_calls"]["getattr"] > before, timeout=10, what="fresh stats"
    )
    doc = json.loads((m.path / "DEMO1" / ".xnat.json").read_text())
    assert doc, doc
    assert (m.path / ".xnatfs" / "metrics").read_text().startswith("#")


def test_writes_are_refused(shared_emulator, make_mount):
    m = make_mount(shared_emulator.url, *NO_OPEN)
    existing = next((m.path / RESOURCE).iterdir())
    for flags in (os.O_WRONLY, os.O_RDWR | os.O_APPEND, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(OSError) as err:
            os.close(os.open(existing, flags))
        assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        (m.path / RESOURCE / "new.dcm").write_bytes(b"x")
    assert err.value.errno == errno.EROFS


def test_a_file_changed_on_the_server_is_read_anew(make_emulator, make_mount):
    """Same size, other bytes: the listing's new MD5 reaches ``getattr`` after the listing
    TTL, and the pages of the old bytes are dropped."""
    emu = make_emulator()
    uri = "/data/projects/DEMO2/resources/CHG/files/c.bin"
    put_file(emu.url, uri, b"A" * 50_000)
    m = make_mount(emu.url, *NO_OPEN, "--listing-ttl", "1")
    path = m.path / "DEMO2/resources/CHG/files/c.bin"
    assert path.read_bytes() == b"A" * 50_000
    put_file(emu.url, uri, b"B" * 50_000)
    wait_for(lambda: path.read_bytes() == b"B" * 50_000, timeout=30, what="the new bytes")


def test_bytes_that_fail_their_check_are_an_io_error_then_right(make_emulator, make_mount):
    """The server's file changed behind its listing (size and MD5 stay the old ones): every
    ``cat`` fails with EIO, none succeeds with other bytes; once the listing is right again,
    the right bytes (the kernel kept none of the failed ones)."""
    emu = make_emulator()
    data = os.urandom(3 << 20)
    uri = "/data/projects/DEMO2/resources/BAD/files/bad.bin"
    put_file(emu.url, uri, data)
    (stored,) = [p for p in emu.data.rglob("bad.bin") if p.is_file()]
    stored.write_bytes(data[:-1] + b"!")
    m = make_mount(emu.url, *NO_OPEN, "--prefetch", "0", "--listing-ttl", "1")
    path = m.path / "DEMO2/resources/BAD/files/bad.bin"
    for _ in range(3):
        res = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
        assert res.returncode != 0 and b"Input/output error" in res.stderr
        assert res.stdout != data[:-1] + b"!"
    _wait_dropped(m.path)
    stored.write_bytes(data)
    res = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout == data, res.stderr


def test_pages_of_a_damaged_cached_file_never_serve_a_later_read(
    make_emulator, make_mount, tmp_path
):
    """A large cached entry from an earlier mount (hashed while it is read) is damaged: a
    first reader is served the damaged page before the verdict and then fails with EIO; that
    page is dropped (the kernel keeps pages across opens here, so nothing else would), and
    every later ``cat`` gives the right bytes."""
    from xnatfs.cache.content import VERIFY_INLINE_MAX

    emu = make_emulator()
    data = os.urandom(VERIFY_INLINE_MAX + (4 << 20))
    put_file(emu.url, "/data/projects/DEMO2/resources/BIG/files/big.bin", data)
    cache = tmp_path / "cache"
    m = make_mount(emu.url, *NO_OPEN, "--prefetch", "0", cache=cache)
    path = m.path / "DEMO2/resources/BIG/files/big.bin"
    assert path.read_bytes() == data
    m.umount()
    (stored,) = sorted((cache / "content" / "index").glob("??/*.bin"))
    flip_a_bit(stored, len(data) // 2)
    m = make_mount(emu.url, *NO_OPEN, "--prefetch", "0", "--listing-ttl", "1", cache=cache)
    path = m.path / "DEMO2/resources/BIG/files/big.bin"
    damaged_page_then_eio(path, data, len(data) // 2 - 8192)
    _wait_dropped(m.path)
    for _ in range(3):
        again = subprocess.run(["cat", str(path)], capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert again.stdout == data, "0 wrong bytes"


def test_the_bids_view_reads_the_same(shared_emulator, make_mount):
    """Generated sidecars and converted images of ``.bids`` through a mount that answers
    opens and one that does not: the same files, the same bytes, twice."""

    def files(root: Path) -> dict:
        return {
            os.path.relpath(os.path.join(d, f), root): os.path.join(d, f)
            for d, _, names in os.walk(root)
            for f in names
        }

    plain = make_mount(shared_emulator.url, "--read-only")
    m = make_mount(shared_emulator.url, *NO_OPEN)
    want_paths, got_paths = files(plain.path / ".bids/DEMO1"), files(m.path / ".bids/DEMO1")
    assert sorted(want_paths) == sorted(got_paths) and len(want_paths) > 5
    want = hash_files(sorted(want_paths.values()), timeout=600)
    for _ in range(2):
        got = hash_files(sorted(got_paths.values()), timeout=600)
        assert {k: got[p] for k, p in got_paths.items()} == {
            k: want[p] for k, p in want_paths.items()
        }


def test_a_folders_zip_is_sized_at_lookup_and_whole(shared_emulator, make_mount):
    """XNAT's zip of a scan (unlisted ``.zip``): with no open to ask for direct I/O it is
    downloaded at its lookup, so ``stat`` shows its true size and ``zipfile`` (which seeks
    from the end) opens it straight from the mount."""
    import zipfile

    m = make_mount(shared_emulator.url, *NO_OPEN)
    zipped = (m.path / RESOURCE).parents[2] / ".zip"  # scans/1/.zip
    size = zipped.stat().st_size
    assert size > 0
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
        assert archive.testzip() is None
    files = {p.name for p in (m.path / RESOURCE).iterdir()}
    assert files and all(any(n.endswith("/" + f) for n in names) for f in files)
    assert len(zipped.read_bytes()) == size


def test_without_read_only_the_mount_is_refused(shared_emulator, tmp_path):
    """A write needs its open: ``--zero-message-opens`` alone is a usage error, one line."""
    import sys

    from xnatfs.fs.mounting import is_mounted

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "mount", shared_emulator.url, str(mnt)]
        + ["--zero-message-opens", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 1 and "needs --read-only" in res.stderr, res.stderr
    assert not is_mounted(str(mnt))
