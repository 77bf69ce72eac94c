"""cache.times.TimesIndex: times kept per (URI, bytes), across restarts, dropped on change."""

from __future__ import annotations

import os
import stat

from xnatfs.cache.times import TimesIndex

URI = "/data/experiments/E1/resources/101/files/sub/a.nii"
T1 = 1_600_000_000_123_456_789


def test_kept_across_restarts_and_private(tmp_path):
    path = str(tmp_path / "times.db")
    t = TimesIndex(path)
    t.start()
    t.set(URI, 10, "d1", T1)
    assert t.get(URI, 10, "d1") == T1
    t.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    t2 = TimesIndex(path)
    t2.start()
    assert t2.get(URI, 10, "d1") == T1  # nanoseconds survive (rsync compares them)
    t2.close()


def test_dropped_when_the_bytes_change(tmp_path):
    path = str(tmp_path / "times.db")
    t = TimesIndex(path)
    t.start()
    t.set(URI, 10, "d1", T1)
    assert t.get(URI, 10, "d2") is None  # another digest: changed on the server
    assert t.get(URI, 10, "d1") is None  # and forgotten, also on disk
    t.close()
    t2 = TimesIndex(path)
    t2.start()
    assert t2.get(URI, 10, "d1") is None
    # without a digest (checksums off) size and the listed time identify the bytes
    t2.set(URI, 10, "", T1, listed=1000.0)
    assert t2.get(URI, 10, "", 1000.0) == T1
    assert t2.get(URI, 11, "", 1000.0) is None
    t2.set(URI, 10, "", T1, listed=1000.0)
    assert t2.get(URI, 10, "", 2000.0) is None
    t2.close()


def test_bounded_oldest_go_first(tmp_path):
    t = TimesIndex(str(tmp_path / "times.db"), max_rows=10)
    t.start()
    for i in range(25):
        t.set(f"/u/{i}", 1, "d", T1 + i)
    assert len(t) <= 10
    assert t.get("/u/24", 1, "d") == T1 + 24
    assert t.get("/u/0", 1, "d") is None
    t.close()


def test_damaged_file_starts_empty(tmp_path):
    path = tmp_path / "times.db"
    path.write_bytes(b"not a database at all" * 100)
    t = TimesIndex(str(path))
    t.start()
    assert t.get(URI, 10, "d1") is None
    t.set(URI, 10, "d1", T1)
    assert t.get(URI, 10, "d1") == T1
    t.close()
