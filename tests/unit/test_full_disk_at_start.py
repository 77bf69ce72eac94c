"""runtime.full_disk_at_start: which start failures the mount puts down to a full cache disk
(one line naming the disk and the uploads kept) and which it leaves alone."""

from __future__ import annotations

import errno
import sqlite3

from tests.helpers.filling import fill_up
from tests.helpers.tmpfs import small_tmpfs
from xnatfs.runtime import full_disk_at_start
from xnatfs.xnat.errors import XnatError


def test_a_write_refused_for_space_or_quota_is_the_disk(tmp_path):
    for code in (errno.ENOSPC, errno.EDQUOT):
        line = full_disk_at_start(tmp_path, OSError(code, "full"))
        assert line is not None and "its disk is full" in line and str(tmp_path) in line
        assert "upload(s)" not in line  # no journal here: nothing waits


def test_other_failures_on_a_roomy_disk_are_not_the_disk(tmp_path):
    # SQLite's "disk I/O error" says nothing by itself: the free space decides (roomy here)
    assert full_disk_at_start(tmp_path, sqlite3.OperationalError("disk I/O error")) is None
    assert full_disk_at_start(tmp_path, OSError(errno.EACCES, "no")) is None


def test_a_server_error_is_never_the_disk_even_when_it_is_full(tmp_path):
    """A refused login at start while the cache disk happens to be full is the login's
    failure, said as such (before: "its disk is full")."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        fill_up(disk)
        error = XnatError("GET", "http://x/data", 401, "no")
        assert full_disk_at_start(disk, error) is None
        assert full_disk_at_start(disk, sqlite3.OperationalError("disk I/O error"))
