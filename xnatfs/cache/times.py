"""Times that stick (issue 15 §2): file mtimes set on the mount, kept in the cache directory.

XNAT's file listing has no time column (docs/XNAT-API.md §1.8: ``CatalogUtils.FILE_HEADERS``),
so a file on XNAT shows its object's time, and ``utimens`` had nowhere to go: ``rsync -a`` and
``make`` then saw every file as changed.  This index remembers, per file, the mtime the user set
(``touch``, ``cp -p``, ``tar -x``, ``rsync -t``) or the time the mount wrote it, keyed by the
file's URI *and* the identity of its bytes: the listing's MD5 ``digest`` and size (or, on servers
with checksums off, size and the listed time).  When the server's copy changes, the identity no
longer matches and the row is dropped on the next look (``get``): a time set here never outlives
the bytes it was set on.

The times are local to this cache directory (this machine): another machine mounting the same
XNAT shows XNAT's own times for these files.

Storage: one small SQLite file ``times.db`` beside the content cache (mode 0600).  It is not
part of the content cache's LRU (evicting a cached copy must not forget a time) and holds no
bytes and no credentials.  Every row is also in memory (``_rows``), so ``getattr`` storms cost a
dict look-up; writes go to SQLite at once (a few per ``cp -p``).  Bounded: above ``max_rows``
the rows set longest ago are dropped.

A full disk (ENOSPC, EDQUOT; SQLite says "database or disk is full" or "disk I/O error"):
only a file SQLite calls damaged is started afresh.  Before, any error at ``start`` counted
as damage: a mount started on a full cache disk deleted ``times.db`` (every remembered time)
and then failed to start.  Now the index starts from memory alone (the file untouched, its
times not shown in this mount), and a write that fails keeps its row in ``_unsaved``: the
next write that succeeds, and ``close``, write them again, so a time set while the disk was
full is on disk once there is room (one line per failure, none per row).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Dict, Optional

from xnatfs.cache.index import damaged
from xnatfs.private import NotPrivate, private_file, refuse_planted_db

log = logging.getLogger(__name__)

#: rows kept at most; the oldest-set ones go first (a forgotten time shows XNAT's time again)
MAX_ROWS = 200_000


@dataclass(frozen=True)
class _Row:
    #: the listing's MD5 ("" when the server has checksums off)
    digest: str
    size: int
    #: without a digest: the time the listing gave when the time was set (the bytes' identity)
    listed: float
    #: the time to show, in nanoseconds since the epoch (rsync and make compare nanoseconds;
    #: a float of seconds cannot hold them)
    mtime_ns: int
    seq: int


class TimesIndex:
    """uri -> the mtime to show for the file at that URI while its bytes stay the same."""

    def __init__(self, path: str, max_rows: int = MAX_ROWS) -> None:
        self.path = path
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._rows: Dict[str, _Row] = {}
        self._seq = 0
        self._db: Optional[sqlite3.Connection] = None
        #: rows whose write failed (a full disk), written again by the next write that
        #: succeeds and by ``close``; guarded by ``_lock``
        self._unsaved: Dict[str, _Row] = {}
        #: the file could not be opened at ``start`` (not damaged: a full disk); guarded by
        #: ``_lock``.  ``close`` tries once more to write this mount's rows into it
        self._unopened = False

    def start(self, _retry: bool = True) -> None:
        """Open ``times.db`` and read its rows.  A damaged file is started afresh (only
        remembered times are lost); any other failure (a full disk) leaves the file as it
        is and runs from memory, with one WARNING (module docstring)."""
        try:
            db, rows = self._open()
        except NotPrivate:
            raise  # planted by someone else: the mount refuses to start (one line)
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and damaged(exc) and _retry:
                # a damaged file loses only remembered times (XNAT's show instead)
                log.warning("times index %s unreadable (%s): starting empty", self.path, exc)
                os.unlink(self.path)
                self.start(_retry=False)
                return
            log.warning(
                "times index %s: cannot open it (%s): times set on the mount hold until "
                "unmount (written then if there is room), those remembered before show "
                "XNAT's times in this mount; the file is kept",
                self.path,
                exc,
            )
            with self._lock:
                self._unopened = True
            return
        with self._lock:
            self._db = db
            for uri, digest, size, listed, mtime, seq in rows:
                self._rows[uri] = _Row(
                    digest or "", int(size), float(listed or 0.0), int(mtime), int(seq)
                )
                self._seq = max(self._seq, int(seq))

    def _open(self) -> "tuple[sqlite3.Connection, list]":
        """A connection to ``times.db`` and its rows; raises what SQLite or the OS raise."""
        # a link or another user's file there is refused, not followed (``xnatfs.private``)
        os.close(private_file(self.path))
        refuse_planted_db(self.path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS times (uri TEXT PRIMARY KEY, digest TEXT, "
                "size INTEGER, listed REAL, mtime_ns INTEGER, seq INTEGER)"
            )
            rows = db.execute(
                "SELECT uri, digest, size, listed, mtime_ns, seq FROM times"
            ).fetchall()
        except BaseException:
            db.close()
            raise
        return db, rows

    def close(self) -> None:
        """Write what a full disk kept in memory (if there is room now), then close."""
        with self._lock:
            if self._unopened and self._unsaved:
                self._unopened = False
                try:
                    self._db, rows = self._open()
                    self._locked_after(max((int(r[5]) for r in rows), default=0))
                except (sqlite3.Error, OSError) as exc:
                    log.warning(
                        "times index %s: %d time(s) set in this mount are not kept: %s",
                        self.path,
                        len(self._unsaved),
                        exc,
                    )
            if self._db is not None and self._unsaved:
                self._locked_write_unsaved()
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def _locked_after(self, base: int) -> None:
        """Number this mount's unsaved rows after the file's ``base`` (the highest ``seq``
        on disk): counted from 0 while the file could not be opened, they came first in its
        order and the next trim dropped them, the newest times, first.  Caller holds _lock."""
        for uri, row in list(self._unsaved.items()):
            if self._rows.get(uri) is row:
                row = dataclasses.replace(row, seq=base + row.seq)
                self._rows[uri] = self._unsaved[uri] = row

    def get(self, uri: str, size: int, digest: str, listed: float = 0.0) -> Optional[int]:
        """The remembered mtime of these bytes at ``uri``, or None.  A row for other bytes
        (the file changed on the server) is dropped."""
        row = self._rows.get(uri)
        if row is None:
            return None
        if _same(row, size, digest, listed):
            return row.mtime_ns
        with self._lock:
            if self._rows.get(uri) is row:
                del self._rows[uri]
                self._unsaved.pop(uri, None)
                self._exec("DELETE FROM times WHERE uri = ?", (uri,))
        log.debug("times: %s changed on the server; its remembered mtime is dropped", uri)
        return None

    def set(self, uri: str, size: int, digest: str, mtime_ns: int, listed: float = 0.0) -> None:
        """Remember ``mtime_ns`` for the bytes (``size``, ``digest``) now at ``uri``."""
        if not uri:
            return
        with self._lock:
            self._seq += 1
            row = _Row(digest or "", int(size), float(listed), int(mtime_ns), self._seq)
            self._rows[uri] = row
            self._unsaved.pop(uri, None)
            if not self._locked_insert(uri, row):
                self._unsaved[uri] = row
            elif self._unsaved:  # room again: what a full disk kept in memory goes in too
                self._locked_write_unsaved()
            if len(self._rows) > self.max_rows:
                self._locked_trim()

    def _locked_insert(self, uri: str, row: _Row) -> bool:
        """Caller holds _lock.  False: not on disk (no file open, or the write failed)."""
        if self._db is None:
            return not self._unopened
        return self._exec(
            "INSERT OR REPLACE INTO times VALUES (?, ?, ?, ?, ?, ?)",
            (uri, row.digest, row.size, row.listed, row.mtime_ns, row.seq),
        )

    def _locked_write_unsaved(self) -> None:
        """Caller holds _lock.  The rows a full disk kept in memory, written again; stops
        at the first failure (the disk is still full: one line, not one per row)."""
        for uri, row in list(self._unsaved.items()):
            if self._rows.get(uri) is not row:
                self._unsaved.pop(uri, None)  # changed or dropped since
                continue
            if not self._locked_insert(uri, row):
                return
            self._unsaved.pop(uri, None)

    def __len__(self) -> int:
        return len(self._rows)

    def _locked_trim(self) -> None:
        drop = sorted(self._rows.items(), key=lambda kv: kv[1].seq)
        drop = drop[: len(self._rows) - self.max_rows + self.max_rows // 10]
        for uri, _ in drop:
            del self._rows[uri]
            self._unsaved.pop(uri, None)
        if drop:
            self._exec("DELETE FROM times WHERE seq <= ?", (drop[-1][1].seq,))

    def _exec(self, sql: str, args: tuple) -> bool:
        """Caller holds _lock.  False when the write failed: the in-memory row stays (this
        mount still shows it), one line says so, and ``set`` keeps it for a later write."""
        if self._db is None:
            return False
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            log.warning(
                "times index %s: %s (kept in memory; written again once there is room)",
                self.path,
                exc,
            )
            return False
        return True


def _same(row: _Row, size: int, digest: str, listed: float) -> bool:
    if row.size != size:
        return False
    if row.digest or digest:
        return row.digest == digest
    return abs(row.listed - listed) < 1e-6
