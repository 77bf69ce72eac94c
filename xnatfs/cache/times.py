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
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Dict, Optional

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

    def start(self, _retry: bool = True) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
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
        except sqlite3.Error as exc:
            # a damaged file loses only remembered times (XNAT's show instead): start afresh
            log.warning("times index %s unreadable (%s): starting empty", self.path, exc)
            db.close()
            if not _retry:
                raise
            os.unlink(self.path)
            self.start(_retry=False)
            return
        with self._lock:
            self._db = db
            for uri, digest, size, listed, mtime, seq in rows:
                self._rows[uri] = _Row(
                    digest or "", int(size), float(listed or 0.0), int(mtime), int(seq)
                )
                self._seq = max(self._seq, int(seq))

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

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
                self._exec("DELETE FROM times WHERE uri = ?", (uri,))
        log.debug("times: %s changed on the server; its remembered mtime is dropped", uri)
        return None

    def set(self, uri: str, size: int, digest: str, mtime_ns: int, listed: float = 0.0) -> None:
        """Remember ``mtime_ns`` for the bytes (``size``, ``digest``) now at ``uri``."""
        if not uri:
            return
        with self._lock:
            self._seq += 1
            self._rows[uri] = _Row(digest or "", int(size), float(listed), int(mtime_ns), self._seq)
            self._exec(
                "INSERT OR REPLACE INTO times VALUES (?, ?, ?, ?, ?, ?)",
                (uri, digest or "", int(size), float(listed), int(mtime_ns), self._seq),
            )
            if len(self._rows) > self.max_rows:
                self._locked_trim()

    def __len__(self) -> int:
        return len(self._rows)

    def _locked_trim(self) -> None:
        drop = sorted(self._rows.items(), key=lambda kv: kv[1].seq)
        drop = drop[: len(self._rows) - self.max_rows + self.max_rows // 10]
        for uri, _ in drop:
            del self._rows[uri]
        if drop:
            self._exec("DELETE FROM times WHERE seq <= ?", (drop[-1][1].seq,))

    def _exec(self, sql: str, args: tuple) -> None:
        """Caller holds _lock.  A failed write keeps the in-memory row (this mount still shows
        it) and says so once per failure: only a later mount would miss it."""
        if self._db is None:
            return
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            log.warning("times index %s: %s (the time holds until unmount)", self.path, exc)


def _same(row: _Row, size: int, digest: str, listed: float) -> bool:
    if row.size != size:
        return False
    if row.digest or digest:
        return row.digest == digest
    return abs(row.listed - listed) < 1e-6
