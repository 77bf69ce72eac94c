"""The emulator's store says what it found when its database cannot be read."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import List

import pytest

from xnatfs.emulator.store import Store


def test_an_unreadable_database_is_logged_with_its_first_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new thread's connection to a database whose header was overwritten fails; the log
    line holds the bytes found there (what tells an overwritten file from an fd mix-up)."""
    store = Store(tmp_path / "data")
    try:
        store.get_user("nobody")  # this thread opens its connection while the file is good
        # every page into the file itself, so a reader finds page 1 there, not in the WAL
        store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(store.db_path, "r+b") as fh:
            fh.write(b"HTTP/1.1 500 not a database header".ljust(100, b"."))
        errors: List[BaseException] = []

        def new_thread() -> None:
            try:
                store.get_user("nobody")
            except sqlite3.DatabaseError as exc:
                errors.append(exc)

        with caplog.at_level(logging.ERROR, logger="xnatfs.emulator.store"):
            t = threading.Thread(target=new_thread)
            t.start()
            t.join(30)
        assert len(errors) == 1
        assert "HTTP/1.1 500 not a database header" in caplog.text
        assert str(store.db_path) in caplog.text
    finally:
        store.close()
