"""Spool: the local files that writes land in before they become journal entries.

A file opened for writing on the mount gets one ``SpoolFile``: a real file on disk (never the
whole content in memory) that takes positional writes, reads, truncates and fsyncs. On release,
the caller hands the spool file to ``Journal.add``, which *renames* it into the journal (so the
spool directory must be on the same filesystem as the journal directory; a copy is the fallback).

Failure model: a write that fails (ENOSPC, EDQUOT, EIO...) raises that ``OSError`` unchanged and
leaves the spool file as it was before the call: any growth is truncated away (freeing the space)
and bytes that the failed write overwrote are put back. The FUSE layer answers the errno and the
application, which believes nothing was written, is right.

Layout: ``directory/<random>.spool``, directory 0700, files 0600.

Files left in the directory by a crash are not deleted here: ``leftovers()`` lists them and the
caller decides (``Journal.keep_orphan`` keeps them as failed entries, ``discard_leftovers``
drops them).

This module imports nothing from the rest of xnatfs.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import threading
from typing import Callable, List, Optional, Set, Union

from xnatfs.private import private_dir

log = logging.getLogger(__name__)

__all__ = ["Spool", "SpoolFile", "SPOOL_SUFFIX"]

#: Suffix of every spool file (``leftovers()`` looks for it).
SPOOL_SUFFIX = ".spool"
_FILE_MODE = 0o600
_COPY_CHUNK = 1 << 20

PathLike = Union[str, "os.PathLike[str]"]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite until every byte is written: a short count (disk nearly full) is not an error yet,
    the next call raises it."""
    while data:
        n = os.pwrite(fd, data, offset)
        if n <= 0:  # pragma: no cover - pwrite raises rather than returning 0 on regular files
            raise OSError(errno.EIO, "pwrite wrote nothing")
        data = data[n:]
        offset += n


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts: List[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


class SpoolFile:
    """One write-side file. Thread-safe: FUSE may call ``write`` on one handle from several
    threads, and a failed write's undo must not interleave with another write (``_lock``
    protects ``_fd``, ``_size`` and ``_modified``; it is held across each syscall sequence).

    Offsets and sizes are bytes. Operations on a closed file raise ``OSError(EBADF)``, so the
    FUSE layer can answer an errno whatever happens.
    """

    def __init__(self, path: str, fd: int, on_close: Callable[[str], None]) -> None:
        self._path = path
        self._fd: Optional[int] = fd
        self._on_close = on_close
        self._lock = threading.Lock()
        self._size = os.fstat(fd).st_size
        self._modified = False

    # --------------------------------------------------------------------------- properties
    @property
    def path(self) -> str:
        """Where the bytes are; hand this (or the SpoolFile) to ``Journal.add``."""
        return self._path

    @property
    def size(self) -> int:
        with self._lock:
            return self._size

    @property
    def modified(self) -> bool:
        """True once a write or truncate succeeded: a read-modify-write copy that was never
        changed need not be uploaded."""
        with self._lock:
            return self._modified

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._fd is None

    # --------------------------------------------------------------------------- I/O
    def _locked_fd(self) -> int:
        """Caller holds self._lock."""
        if self._fd is None:
            raise OSError(errno.EBADF, "spool file is closed", self._path)
        return self._fd

    def write(self, offset: int, data: Union[bytes, bytearray, memoryview]) -> int:
        """Write ``data`` at ``offset`` (a gap becomes a hole of zeros); returns ``len(data)``.

        Raises the ``OSError`` of a failed write after undoing its effects (see module doc).
        """
        if offset < 0:
            raise OSError(errno.EINVAL, f"negative offset {offset}", self._path)
        view = memoryview(data).cast("B")
        end = offset + len(view)
        with self._lock:
            fd = self._locked_fd()
            old_size = self._size
            # bytes this write overwrites, to put back if it fails half-way
            overlap = max(0, min(end, old_size) - offset)
            saved = _pread_all(fd, overlap, offset) if overlap else b""
            try:
                _pwrite_all(fd, view, offset)
            except OSError as exc:
                self._locked_undo(fd, offset, saved, old_size, exc)
                raise
            self._size = max(old_size, end)
            self._modified = True
            return len(view)

    def _locked_undo(self, fd: int, offset: int, saved: bytes, old_size: int, exc: OSError) -> None:
        """Restore the file after a failed write. Caller holds self._lock.

        Truncating frees the space the partial write took, so the undo itself needs no space;
        rewriting ``saved`` goes to blocks that held those bytes a moment ago.
        """
        try:
            if os.fstat(fd).st_size > old_size:
                os.ftruncate(fd, old_size)
            if saved:
                _pwrite_all(fd, memoryview(saved), offset)
        except OSError as undo_exc:
            self._size = os.fstat(fd).st_size
            log.error(
                "spool %s: write failed (%s) and could not be undone: %s", self._path, exc, undo_exc
            )

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; fewer only at end of file."""
        if offset < 0 or size < 0:
            raise OSError(errno.EINVAL, f"bad read offset={offset} size={size}", self._path)
        with self._lock:
            return _pread_all(self._locked_fd(), size, offset)

    def truncate(self, length: int) -> None:
        """Set the size (growing makes a hole; no space is allocated)."""
        if length < 0:
            raise OSError(errno.EINVAL, f"negative length {length}", self._path)
        with self._lock:
            os.ftruncate(self._locked_fd(), length)
            self._size = length
            self._modified = True

    def fsync(self) -> None:
        """Flush the bytes to disk (``Journal.add`` calls this before taking the file)."""
        with self._lock:
            os.fsync(self._locked_fd())

    def close(self) -> None:
        """Close the descriptor; the file stays on disk for the journal. Idempotent."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            finally:
                self._on_close(self._path)

    def discard(self) -> None:
        """Close and delete: the writes were abandoned (or the copy was never modified)."""
        self.close()
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "SpoolFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SpoolFile({self._path!r}, size={self._size}, closed={self._fd is None})"


class Spool:
    """Factory and owner of the spool directory. Thread-safe (``_lock`` guards ``_open``)."""

    def __init__(self, directory: PathLike) -> None:
        #: the spool directory (created 0700; local I/O only, nothing started)
        self.directory = os.path.abspath(os.fspath(directory))
        private_dir(self.directory)  # ours and 0700, or refused (``xnatfs.private``)
        self._lock = threading.Lock()
        self._open: Set[str] = set()

    def create(self, copy_from: Optional[PathLike] = None) -> SpoolFile:
        """A new spool file, empty or holding a copy of the local file ``copy_from`` (for a
        read-modify-write of a file that exists on the server, the caller passes its cached
        copy).

        Raises ``OSError`` (ENOSPC when the copy does not fit; nothing is left behind).
        """
        path = os.path.join(self.directory, secrets.token_hex(16) + SPOOL_SUFFIX)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            if copy_from is not None:
                self._copy_into(os.fspath(copy_from), fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        with self._lock:
            self._open.add(path)
        return SpoolFile(path, fd, self._forget)

    @staticmethod
    def _copy_into(source: str, fd: int) -> None:
        with open(source, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", source)
            offset = 0
            while True:
                chunk = src.read(_COPY_CHUNK)
                if not chunk:
                    break
                _pwrite_all(fd, memoryview(chunk), offset)
                offset += len(chunk)

    def _forget(self, path: str) -> None:
        with self._lock:
            self._open.discard(path)

    def leftovers(self) -> List[str]:
        """Spool files on disk that no open ``SpoolFile`` of this process owns: writes that a
        crash interrupted, or files whose ``Journal.add`` failed. Sorted by name."""
        with self._lock:
            open_now = set(self._open)
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(
            p
            for p in (os.path.join(self.directory, n) for n in names if n.endswith(SPOOL_SUFFIX))
            if p not in open_now
        )

    def discard_leftovers(self) -> int:
        """Delete ``leftovers()``; returns how many. Only call this after ``Journal.reload``,
        which may still need a leftover to complete an interrupted ``add``."""
        removed = 0
        for path in self.leftovers():
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        if removed:
            log.info("spool %s: removed %d leftover file(s)", self.directory, removed)
        return removed
