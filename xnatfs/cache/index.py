"""The content cache's index: diskcache with adoption, and the offline check of its entries.

``_Index`` is the SQLite index plus the cached files (``stored_name`` says where a key's file
lives); ``ContentCache`` (``content.py``) owns the one instance.  ``verify_entries`` is ``xnatfs
cache verify``: every entry's size and MD5 checked, bad ones dropped on request.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import diskcache
from diskcache.core import MODE_BINARY

from xnatfs.cache.download import digest_file
from xnatfs.private import private_dir

#: one logger for the whole content cache, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.cache.content")


# -- storage: diskcache with adoption -------------------------------------------------------------


def stored_name(hexname: str) -> str:
    """A cached file's path below ``index/``: ``ab/<hex>.bin``, so a file is found from its key
    alone (the index's ``filename`` column holds the same relative path, which is what
    diskcache's clean-up of evicted rows deletes).  One level of 256 folders, not diskcache's
    two (65,536): with two, nearly every new file of a scan made a new folder as well."""
    return os.path.join(hexname[:2], hexname + ".bin")


class _Index(diskcache.Cache):
    """The diskcache index, with a cull that skips pinned keys and removes one entry at a time.

    diskcache's own culling removes up to ten least-recently-used entries per step (``cull_limit``
    rows in ``set``, ten per round in ``cull``), which for large files throws away far more than
    needed, possibly the file just stored, and it cannot spare files that are open. So the index is
    opened with ``cull_limit=0`` (``set`` never culls) and ``ContentCache`` calls
    ``cull_unpinned`` after each insertion. This is the one place that relies on diskcache
    internals (``_transact`` and the ``Cache`` table's ``key``/``access_time``/``filename``
    columns, stable through diskcache 5.x); ``test_content_cache.py`` covers it.
    """

    #: the ``ab`` folders known to exist (one mkdir attempt each per process)
    _folders: Optional[Set[str]] = None

    def _make_parents(self, name: str) -> None:
        """Create the folder of ``name`` below the index (0700) unless it is known to exist; one
        that is a link or another user's is refused (``xnatfs.private``)."""
        if self._folders is None:
            self._folders = set()
        folder = os.path.dirname(name)
        if folder in self._folders:
            return
        private_dir(os.path.join(self.directory, folder))
        self._folders.add(folder)

    def _move_in(self, name: str, path: str, full: str) -> None:
        """Rename ``path`` to ``full`` (the stored ``name``), making its folder first."""
        self._make_parents(name)
        try:
            os.rename(path, full)
        except FileNotFoundError:
            # diskcache's removal of an evicted (or dropped) file also removes
            # its folder once empty (``Disk.remove``: ``os.removedirs``)
            if self._folders is not None:
                self._folders.discard(os.path.dirname(name))
            self._make_parents(name)
            os.rename(path, full)

    def adopt_many(
        self, items: Sequence[Tuple[str, str, int, str]]
    ) -> List[Optional[BaseException]]:
        """Move finished files (``(hex key, path, size, md5)``, on the same filesystem) into the
        store by rename and index them, all in one SQLite transaction; per item None or its
        error.  The MD5 (the listing's, checked) goes into the row's ``tag`` column ("" /
        NULL: none), so ``xnatfs cache verify`` can check a file without knowing its URI.

        Rows are written directly (what ``Cache.set`` would write for a raw str key with a
        file value: ``MODE_BINARY``, a relative ``filename``); diskcache's triggers keep its
        count and size.  One transaction for a batch instead of one ``set`` each: adopting the
        400 members of a zip cost ~0.5 ms a file with ``set``.  A key already indexed (only
        when another mount shares the directory) keeps its row and the new file is dropped,
        unless the indexed file is gone.
        """
        results: List[Optional[BaseException]] = [None] * len(items)
        moved: List[Tuple[int, str]] = []
        now = time.time()
        try:
            with self._transact(retry=True) as (sql, _cleanup):
                for i, (key, path, size, digest) in enumerate(items):
                    name = stored_name(key)
                    full = os.path.join(self.directory, name)
                    row = sql(
                        "SELECT rowid FROM Cache WHERE key = ? AND raw = 1", (key,)
                    ).fetchone()
                    if row is not None:
                        if os.path.exists(full):
                            os.unlink(path)
                            continue
                        sql("DELETE FROM Cache WHERE rowid = ?", row)  # its file was lost
                    try:
                        self._move_in(name, path, full)
                    except OSError as exc:
                        results[i] = exc
                        continue
                    moved.append((i, full))
                    sql(
                        "INSERT INTO Cache(key, raw, store_time, expire_time, access_time,"
                        " access_count, tag, size, mode, filename, value)"
                        " VALUES (?, 1, ?, NULL, ?, 0, ?, ?, ?, ?, NULL)",
                        (key, now, now, digest or None, size, MODE_BINARY, name),
                    )
        except BaseException as exc:
            # the rows are rolled back: do not leave unindexed files behind
            for i, full in moved:
                results[i] = exc
                try:
                    os.unlink(full)
                except OSError:
                    pass
            if not isinstance(exc, Exception):
                raise
        return results

    def entries(self) -> Dict[str, int]:
        """hex key -> size of every cached file (read once at start: ``ContentCache._present``).

        Rows in another layout (an older xnatfs, or not ours) are removed with their files:
        a cached file must be where ``stored_name`` says."""
        rows = self._sql("SELECT rowid, key, size, filename FROM Cache").fetchall()
        stray = [
            (rowid, filename)
            for rowid, key, _, filename in rows
            if not isinstance(key, str) or filename != stored_name(key)
        ]
        if stray:
            with self._transact(retry=True) as (sql, cleanup):
                for rowid, filename in stray:
                    sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                    if filename:
                        cleanup(filename)
        return {
            key: int(size or 0)
            for _, key, size, filename in rows
            if isinstance(key, str) and filename == stored_name(key)
        }

    def free_up(
        self, pinned: Set[str], need: int, touched: Optional[Dict[str, float]] = None
    ) -> List[str]:
        """The cache disk is full: delete the files of least-recently-used unpinned entries
        until ``need`` bytes are freed, *then* their rows.  Files first because SQLite needs
        disk space to delete a row (its WAL grows); a row whose file is gone is harmless (an
        open finds the file missing and fetches it again).  Returns the deleted keys.

        ``touched``: access times not written yet (they cannot be, on a full disk) that
        count over the rows' own: without them the order was that of the last flush, and a
        file read over and over since was evicted first."""
        rows = self._sql(
            "SELECT key, size, filename, access_time FROM Cache WHERE raw = 1 ORDER BY access_time"
        ).fetchall()
        if touched:
            rows.sort(key=lambda row: max(row[3] or 0.0, touched.get(row[0], 0.0)))
        freed, victims, stale = 0, [], []
        for key, size, filename, _ in rows:
            if freed >= need:
                break
            if key in pinned or not filename:
                continue
            try:
                os.unlink(os.path.join(self.directory, filename))
            except FileNotFoundError:
                # a row left by an earlier eviction whose DELETE found no room: its file
                # freed nothing now (counted, it ended the loop with nothing freed and the
                # download failed ENOSPC while real entries could still go); its row goes,
                # and it is no eviction (counted when its file went)
                stale.append(key)
                continue
            except OSError:
                continue
            victims.append(key)
            freed += int(size or 0)
        if victims or stale:
            try:
                with self._transact(retry=True) as (sql, _cleanup):
                    for key in victims + stale:
                        sql("DELETE FROM Cache WHERE key = ? AND raw = 1", (key,))
            except sqlite3.Error as exc:  # still no room: the rows go at their next open
                log.warning(
                    "content cache: cannot drop %d evicted rows: %s", len(victims + stale), exc
                )
        return victims

    def size_of(self, key: str) -> Optional[int]:
        """The indexed size of ``key``, None when it is not indexed (one SQLite read)."""
        row = self._sql("SELECT size FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        return None if row is None else int(row[0] or 0)

    def drop(self, key: str) -> bool:
        """Delete ``key``'s row and file (a damaged entry); True if there was a row."""
        with self._transact(retry=True) as (sql, cleanup):
            row = sql(
                "SELECT rowid, filename FROM Cache WHERE key = ? AND raw = 1", (key,)
            ).fetchone()
            if row is None:
                return False
            sql("DELETE FROM Cache WHERE rowid = ?", (row[0],))
            if row[1]:
                cleanup(row[1])
        return True

    def touch_many(self, touched: Dict[str, float]) -> None:
        """Write access times kept in memory (LRU order for ``cull_unpinned``), in one
        transaction instead of one per open."""
        if not touched:
            return
        with self._transact(retry=True) as (sql, _cleanup):
            for key, when in touched.items():
                sql(
                    "UPDATE Cache SET access_time = ?, access_count = access_count + 1 "
                    "WHERE key = ? AND raw = 1",
                    (when, key),
                )

    def cull_unpinned(self, pinned: Set[str], target: Optional[int] = None) -> List[str]:
        """Delete least-recently-used entries whose key is not in ``pinned`` until ``volume()`` is
        at most ``target`` (default ``size_limit``); returns the deleted keys.

        A pinned file is open, so deleting it would free no space until its last reader closes;
        when only pinned entries are left the cache stays over its limit until they are unpinned.
        """
        removed: List[str] = []
        limit = self.size_limit if target is None else target
        while self.volume() > limit:
            with self._transact(retry=True) as (sql, cleanup):
                rows = sql(
                    "SELECT rowid, key, filename FROM Cache ORDER BY access_time LIMIT ?",
                    (len(pinned) + 1,),
                ).fetchall()
                victim = next((row for row in rows if row[1] not in pinned), None)
                if victim is None:
                    break
                rowid, key, filename = victim
                sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                cleanup(filename)
            removed.append(key)
        return removed


# -- offline check: ``xnatfs cache verify`` --------------------------------------------------------


@dataclass
class VerifyReport:
    """What ``verify_entries`` found: counts, and one line per bad entry."""

    checked: int = 0
    #: entries whose MD5 was compared (the others have no digest: size only)
    hashed: int = 0
    bad: int = 0
    dropped: int = 0
    problems: List[str] = dataclasses.field(default_factory=list)


#: SQLITE_CORRUPT, SQLITE_NOTADB (sqlite3 has the names from Python 3.11; typeshed lacks them)
_DAMAGED = (11, 26)


def damaged(error: sqlite3.DatabaseError) -> bool:
    """SQLite says its file is not a database or is malformed (not: locked, busy, full)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _DAMAGED  # the primary code of an extended one
    text = str(error).lower()
    return "not a database" in text or "malformed" in text


def set_index_aside(index_dir: str, tag: str) -> None:
    """Replace a damaged index by an empty one.  Its files go too: without the rows nothing
    says which file is which (the cache is a copy of XNAT; they are fetched again)."""
    aside = f"{index_dir}.damaged-{tag}"
    os.rename(index_dir, aside)
    private_dir(index_dir)
    shutil.rmtree(aside, ignore_errors=True)


def verify_entries(
    directory: Union[str, os.PathLike],
    repair: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    on_total: Optional[Callable[[int, int], None]] = None,
) -> VerifyReport:
    """Check every entry of the content cache at ``directory`` (its ``content`` folder):
    the file exists, has the indexed size, and its MD5 is the one stored with it (the row's
    ``tag``; entries without one are checked by size only).  With ``repair``, bad entries are
    dropped (row and file) so the next read fetches them again.

    Safe beside a running mount: only the index is opened (no partial files are touched), each
    drop is one SQLite transaction that deletes the row only if it is still the one checked
    (same rowid and store time), and a mount that finds a dropped file gone fetches it again.
    ``on_total(entries, bytes)`` is called once, ``progress(bytes)`` after each file.
    """
    index_dir = os.path.join(os.fspath(directory), "index")
    report = VerifyReport()
    try:
        return _verify_index(index_dir, report, repair, progress, on_total)
    except sqlite3.DatabaseError as exc:
        if not damaged(exc):
            raise
        report.bad += 1
        report.problems.append(f"cache.db: the index is damaged ({exc})")
        if repair:  # what the next start would do (``ContentCache.start``)
            set_index_aside(index_dir, f"verify{os.getpid()}")
            report.dropped += 1
        return report


def _verify_index(
    index_dir: str,
    report: VerifyReport,
    repair: bool,
    progress: Optional[Callable[[int], None]],
    on_total: Optional[Callable[[int, int], None]],
) -> VerifyReport:
    """``verify_entries`` once the index is known to open."""
    index = _Index(index_dir, eviction_policy="least-recently-used", cull_limit=0)
    try:
        rows = index._sql(
            "SELECT rowid, key, size, tag, filename, store_time FROM Cache WHERE raw = 1"
        ).fetchall()
        if on_total is not None:
            on_total(len(rows), sum(int(r[2] or 0) for r in rows))
        for rowid, key, size, tag, filename, stored in rows:
            size = int(size or 0)
            report.checked += 1
            problem = _entry_problem(os.path.join(index_dir, filename or ""), size, tag or "")
            if tag:
                report.hashed += 1
            if progress is not None:
                progress(size)
            if problem is None:
                continue
            report.bad += 1
            report.problems.append(f"{filename}: {problem}")
            if repair:
                with index._transact(retry=True) as (sql, cleanup):
                    gone = sql(
                        "DELETE FROM Cache WHERE rowid = ? AND key = ? AND store_time = ?",
                        (rowid, key, stored),
                    ).rowcount
                    if gone and filename:
                        cleanup(filename)
                report.dropped += int(bool(gone))
    finally:
        index.close()
    return report


def _entry_problem(path: str, size: int, digest: str) -> Optional[str]:
    """Why the cached file at ``path`` is bad, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            return f"size {actual}, indexed {size}"
        if digest:
            got = digest_file(fd, size)
            if got != digest.strip().lower():
                return f"MD5 {got}, expected {digest}"
    finally:
        os.close(fd)
    return None
