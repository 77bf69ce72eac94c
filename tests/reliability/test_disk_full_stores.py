"""The side stores on a really full cache disk (integ10): ``times.db`` and the BIDS view.

A small tmpfs holds the store; another file fills it to its last block (SQLite then answers
"database or disk is full" or "disk I/O error"), and the test gives the room back by removing
that file.  Each test says what it showed before its fix.
"""

from __future__ import annotations

import logging

from tests.helpers.filling import fill_up
from tests.helpers.tmpfs import small_tmpfs
from xnatfs.cache.times import TimesIndex

URI = "/data/experiments/E1/resources/101/files/a{}.nii"
T0 = 1_600_000_000_123_456_789


def test_times_db_on_a_full_disk_is_kept_and_catches_up(tmp_path, caplog):
    """A mount that starts on a full disk keeps ``times.db`` as it is and starts; a time set
    while the disk is full holds in memory and is on disk once there is room (a write after
    it, or the unmount).  Before, the start took the full disk for a damaged file: it
    deleted ``times.db`` (every remembered time gone), then raised, so the mount failed."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        path = str(disk / "times.db")
        before = TimesIndex(path)
        before.start()
        for i in range(20):
            before.set(URI.format(i), 10, f"d{i}", T0 + i)
        before.close()
        filler = fill_up(disk)

        caplog.set_level(logging.WARNING, logger="xnatfs.cache.times")
        full = TimesIndex(path)
        full.start()  # before: sqlite3.OperationalError, times.db deleted
        full.set(URI.format("new"), 10, "dn", T0 - 1)  # while the disk is full
        assert full.get(URI.format("new"), 10, "dn") == T0 - 1  # this mount shows it
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and path in lines[0], lines
        filler.unlink()  # room again
        full.close()  # the time set while full is written now

        after = TimesIndex(path)
        after.start()
        assert after.get(URI.format(3), 10, "d3") == T0 + 3  # before: None (file deleted)
        assert after.get(URI.format("new"), 10, "dn") == T0 - 1
        after.close()


def test_a_times_write_that_met_a_full_disk_is_written_with_the_next(tmp_path):
    """The file open, the disk fills: the failed write keeps its row, and the first write
    that succeeds once there is room writes it too; the connection works on (a failed
    SQLite write does not poison it).  Before, the row was in memory only: gone at the
    next mount."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        path = str(disk / "times.db")
        times = TimesIndex(path)
        times.start()
        times.set(URI.format(0), 10, "d0", T0)
        filler = fill_up(disk)
        for i in range(1, 40):  # enough rows to need a new page of the database
            times.set(URI.format(i), 10, f"d{i}" * 30, T0 + i)
        filler.unlink()
        times.set(URI.format("room"), 10, "dr", T0 - 5)
        # another process (the next mount) reads the file while this one still runs
        other = TimesIndex(path)
        other.start()
        assert other.get(URI.format("room"), 10, "dr") == T0 - 5
        assert [other.get(URI.format(i), 10, f"d{i}" * 30) for i in range(1, 40)] == [
            T0 + i for i in range(1, 40)
        ]
        other.close()
        times.close()
