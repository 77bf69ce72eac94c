"""Open files of the write side: ``WriteHandle`` and the operations on a ``LocalFile``
through it (write, read, truncate, release); a file's bytes live in a spool file on disk, never
whole in memory."""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import threading
import time
from dataclasses import replace
from typing import Any, Optional, Tuple

from xnatfs.tree.local import EMPTY, WRITING, LocalFile, target_uri
from xnatfs.tree.nodes import NodeInfo
from xnatfs.tree.paths import join_path
from xnatfs.tree.uploading import UploadPath
from xnatfs.uploads import SpoolFile, UploadTarget
from xnatfs.uploads.journal import FAILED, Entry

log = logging.getLogger(__name__)


def _release_failed(path: str, exc: BaseException) -> None:
    """The one line for a commit that failed at release, which answers no program.  A commit
    there is of bytes no flush put in the journal (``truncate -s`` by name while the file is
    open elsewhere, a write after the last flush) or a new try of a journal write a flush
    failed: an attempt of its own (a flush whose upload failed left nothing to commit: its
    version is in the journal).  Before, DEBUG only: taken for a failure a flush had said."""
    if getattr(exc, "reported", False):
        log.debug("release %s: %s", path, exc)
    else:
        log.error("release %s: not uploaded now: %s", path, exc)


class WriteHandle:
    """An open file being written; all state lives in its ``LocalFile``.

    A handle opened while the file was local may outlive its local copy: another handle's
    close() uploads it, XNAT confirms it and the journal drops its copy, while this handle is
    still open (the overlay keeps the file until its last handle closes).  Its reads then go to
    XNAT's copy, through the content cache (``HandleOps._open_uploaded``): before, they failed
    with EIO, and so did a program that wrote a file, closed it and read it back at once when
    its read came before the writer's RELEASE (the kernel sends RELEASE after close() returns)."""

    def __init__(self, writer: "HandleOps", lf: LocalFile, changed: bool = False) -> None:
        self.writer = writer
        self.lf = lf
        #: this handle wrote, truncated or created the file: only then do its flush and
        #: release commit (and upload) it.  A reader's close (a viewer, an indexer) committed
        #: a file still being written: XNAT got its first part, even when a later write failed
        #: and the file was to be "never uploaded"
        self.changed = changed
        self.direct_io = False
        self._lock = threading.Lock()
        #: XNAT's copy once the local one is gone (a ``ReadHandle``), and the file's
        #: ``generation`` it was opened for; guarded by _lock
        self._uploaded: Any = None
        self._uploaded_generation = -1

    def write(self, offset: int, data: bytes) -> int:
        self.changed = True  # a failed write too: close() answers its errno
        return self.writer._write(self.lf, offset, data)

    def read(self, offset: int, size: int) -> bytes:
        local = self._local(offset, size)
        return local if local is not None else self._uploaded.read(offset, size)

    def span(self, offset: int, size: int) -> "bytes | tuple[int, int]":
        """The bytes (the spool changes under writes, so no fd is handed out), or where
        XNAT's copy holds them once the local one is gone."""
        local = self._local(offset, size)
        return local if local is not None else self._uploaded.span(offset, size)

    def _local(self, offset: int, size: int) -> Optional[bytes]:
        """The local copy's bytes, or None when there is none (XNAT's copy is then open).
        The local copy is asked first every time: a write after the upload makes one again,
        and its bytes are the file's from then on.

        XNAT's copy is the one of the file's last upload: once a write after an upload was
        uploaded in turn (``generation`` moved), the copy opened before is another file's
        bytes.  Kept, it served them: SQLite (write, fsync, read back through one
        descriptor) read its previous transaction's pages and lost every later row."""
        generation = self.lf.generation  # before the look: a write after it moves it on
        data = self.writer._read(self.lf, offset, size)
        if data is not None:
            return data
        stale = None
        with self._lock:
            if self._uploaded is not None and self._uploaded_generation != generation:
                stale, self._uploaded = self._uploaded, None
            if self._uploaded is None:
                self._uploaded = self.writer._open_uploaded(self.lf)
                self._uploaded_generation = generation
        if stale is not None:
            stale.close()
        return None

    def truncate(self, length: int) -> None:
        self.changed = True
        self.writer._truncate(self.lf, length)

    def flush(self) -> None:
        if self.changed:
            self.writer._commit(self.lf)

    def fsync(self) -> None:
        """fsync(2) is about the file, whichever descriptor asks (``sync FILE`` opens it
        read-only): what any handle wrote is committed and uploaded."""
        self.writer._commit(self.lf)

    def close(self) -> None:
        with self._lock:
            uploaded, self._uploaded = self._uploaded, None
        try:
            if uploaded is not None:
                uploaded.close()
        finally:
            self.writer._release(self.lf, commit=self.changed)


#: most MD5s a version carries of the versions before it that may still be on XNAT
#: (``_made_over``): a log closed more often than this while XNAT is down may be refused as
#: changed by another client once XNAT answers (its bytes kept as failed, never lost)
MAX_MADE_OVER = 128


def _made_over(target: UploadTarget, pending: bool) -> Tuple[str, ...]:
    """What a version continuing from the one ``target`` describes is made over, besides that
    one (its ``replaces_md5``): while that one is pending, what it was made over too (XNAT
    may hold any of them: a close uploads its version at once, ahead of an older one still
    queued); once XNAT confirmed it, nothing older.  Before, only the one before it counted,
    and four shells appending to a log refused each other's versions as another client's."""
    if not pending:
        return ()
    chain = (*target.base_md5s, target.replaces_md5)
    return tuple(d for d in dict.fromkeys(chain) if d)[-MAX_MADE_OVER:]


class HandleOps(UploadPath):
    """What a ``WriteHandle`` does to its ``LocalFile``; all state lives in the file."""

    def local_read_handle(self, node: NodeInfo) -> WriteHandle:
        """Reading a file that is still local (being written, or pending upload)."""
        lf = node.local_file
        with self._lock:
            lf.handles += 1
        return WriteHandle(self, lf)

    # ------------------------------------------------------------------ handle operations
    def _write(self, lf: LocalFile, offset: int, data: bytes) -> int:
        # not while another handle's close() commits the file (LocalFile.io)
        with lf.holding(self.fs_timeout):
            return self._locked_write(lf, offset, data)

    def _locked_write(self, lf: LocalFile, offset: int, data: bytes) -> int:
        if lf.spool is None or lf.spool.closed:
            self._reopen_or_fail(lf)
        assert lf.spool is not None
        if (
            lf.replaces is not None
            and not self.allow_delete
            and offset + len(data) > lf.replaces.size
        ):
            # longer than the file on XNAT: certainly other bytes; say so now, not only at
            # close (shells ignore close errors)
            lf.write_error = errno.EACCES
            raise OSError(
                errno.EACCES,
                "replacing a file on XNAT with other bytes needs --allow-delete",
                join_path(lf.parts),
            )
        spool = lf.spool
        try:
            n = self._with_room(lambda: spool.write(offset, data), len(data))
        except OSError as exc:
            # the op's error path logs this one line (path, errno, what it means); the
            # flush/release after it answer the errno again without a line of their own
            lf.write_error = exc.errno or errno.EIO
            raise OSError(
                lf.write_error,
                f"{exc.strerror or exc}; the file is incomplete and will not be uploaded",
                join_path(lf.parts),
            ) from exc
        lf.dirty = True
        lf.state = WRITING
        lf.mtime_ns = time.time_ns()
        return n

    def _read(self, lf: LocalFile, offset: int, size: int) -> Optional[bytes]:
        """The bytes of the local copy (the spool, else the journal's entry); None when
        neither holds them any more: uploaded since (``WriteHandle``).  Under ``lf.io``: a
        commit by another handle moves the bytes from the spool to the journal, and a read
        in between found neither."""
        with lf.holding(self.fs_timeout):
            if lf.state == EMPTY:
                return b""  # a new file closed empty (never on XNAT)
            spool = lf.spool
            if spool is not None and not spool.closed:
                try:
                    return spool.read(offset, size)
                except OSError as exc:
                    # closed after the look all the same (EBADF from SpoolFile, never a
                    # reused descriptor): its bytes are the journal entry's, if any
                    if exc.errno != errno.EBADF:
                        raise
            entry = lf.entry
            if entry is not None:
                try:
                    with open(entry.data_path, "rb") as fh:
                        fh.seek(offset)
                        return fh.read(size)
                except FileNotFoundError:
                    pass
            return None

    def _open_uploaded(self, lf: LocalFile) -> Any:
        """A read handle on XNAT's copy of ``lf``, whose local copy is gone: the journal drops
        it only once XNAT confirmed the upload (``lf.uploaded_size``).  The file as XNAT lists
        it now, through the content cache (one download, checked against the listed size and
        MD5).  EIO when that cannot be: an archive import (no file to read back), or a listing
        that does not show the uploaded size and MD5 (changed on XNAT since: open again; a
        descriptor reads what it wrote, never another client's bytes)."""
        path = join_path(lf.parts)
        size = self._confirmed_size(lf)
        if not size or not lf.target.is_file or lf.removed:
            raise OSError(
                errno.EIO, "the local copy is gone (uploaded meanwhile): open again", path
            )
        # the listing as XNAT answers it now, not one cached before the upload (the uploader
        # invalidates it too, but just after the journal let go of its copy)
        self.tree.invalidate(path)
        node = self.tree.listing(lf.parts[:-1], self.tree.node(lf.parts[:-1])).children.get(
            lf.parts[-1]
        )
        if (
            node is None
            or node.is_dir
            or node.size != size
            or (node.digest and lf.uploaded_md5 and node.digest != lf.uploaded_md5)
        ):
            raise OSError(
                errno.EIO,
                "uploaded meanwhile, and XNAT does not list it as uploaded: open again",
                path,
            )
        log.debug("read %s: the local copy is gone (uploaded): reading XNAT's", path)
        return self.tree.open(node, path)

    @staticmethod
    def _confirmed_size(lf: LocalFile) -> int:
        """The size XNAT confirmed for ``lf``'s last upload, 0 when none is known.  The
        uploader removes the journal's copy once XNAT confirmed it and only then tells the
        overlay (``Uploader._succeeded``, ``UploadPath._on_change``): in between, ``lf.entry``
        still names a copy that is gone, and its size is the confirmed one -- asked first:
        ``lf.uploaded_size`` is then an earlier upload's (a file fsync'ed twice)."""
        entry = lf.entry
        if entry is not None and not os.path.exists(entry.data_path):
            return entry.size
        return lf.uploaded_size

    def _truncate(self, lf: LocalFile, length: int) -> None:
        with lf.holding(self.fs_timeout):
            if lf.spool is None or lf.spool.closed:
                self._reopen_or_fail(lf)
            assert lf.spool is not None
            lf.spool.truncate(length)
            lf.dirty = True
            lf.mtime_ns = time.time_ns()

    def _reopen_or_fail(self, lf: LocalFile) -> None:
        """``_reopen_spool``; when it fails, the file is incomplete, as after a failed spool
        write (README): this write's or truncate's change is lost (a full disk, XNAT gone
        while the spool is filled from its copy, which may be left half-filled), and a later
        write past it uploaded zeros, or the half copy, in its place."""
        try:
            self._reopen_spool(lf)
        except Exception as exc:
            lf.write_error = getattr(exc, "errno", None) or errno.EIO
            raise

    def _reopen_spool(self, lf: LocalFile) -> None:
        """More writes after a commit: continue from the committed bytes, the journal's copy
        while it has one, else XNAT's.  Caller holds ``lf.io``."""
        lf.generation += 1  # XNAT's copy of the last upload is not the file's any more
        lf.landed = None  # a time set now goes with the next commit, not to those bytes
        if lf.state == EMPTY:
            # a new file closed empty, written or truncated now: still new (never on XNAT,
            # nothing to continue from, nothing it replaces); the overlay forgets it as EMPTY
            lf.state = WRITING
            lf.spool = self.spool.create()
            return
        entry = lf.entry
        copied = False
        if entry is not None:
            try:
                source = entry.data_path
                lf.spool = self._with_room(lambda: self.spool.create(copy_from=source), entry.size)
                copied = True
            except FileNotFoundError:
                pass  # confirmed by XNAT and dropped from the journal just now
        if not copied:
            if lf.removed:
                # removed while open and its bytes not kept (Namespace._forget_local): its
                # name may be another file's by now, and a spool of zeros is not its bytes
                raise OSError(
                    errno.EIO, "removed while open; its bytes are gone", join_path(lf.parts)
                )
            lf.spool = self.spool.create()
            node = self.tree.lookup(join_path(lf.parts))
            if not isinstance(node.local_file, LocalFile):
                self._fill_from_server(node, lf.spool, join_path(lf.parts))
            elif self._confirmed_size(lf) and lf.target.is_file:
                # committed (fsync(), or another handle's close) and confirmed by XNAT since:
                # the journal's copy is gone and the bytes are XNAT's; more writes continue
                # from them, not from a spool of zeros (which uploaded zeros in place of the
                # first part)
                self._fill_from_upload(lf)
        if not self._refused_by_xnat(entry):
            # the committed version is, or may soon be, on XNAT as this file: the next
            # replaces it.  Not after a refusal: one as another client's file there
            # ("duplicates") let the next version overwrite that file without --allow-delete.
            # The bytes it replaces are named (their MD5): refused later (another client
            # stored the name while it waited), the next version replaced that file all the
            # same; the upload now checks first (UploadPath._put)
            spool = lf.spool
            replaces = self._spool_md5(spool) if spool is not None and spool.size else ""
            lf.target = replace(
                lf.target,
                overwrite=True,
                replaces_md5=replaces,
                base_md5s=_made_over(lf.target, pending=copied),
            )

    def _refused_by_xnat(self, entry: Optional[Entry]) -> bool:
        """Was ``entry`` refused for good (``failed``: never on XNAT; 409 a file of another
        client there, 403, 413...)?  A failed attempt after its PUT returned is always
        retried, never failed, so a failed record never landed."""
        current = self.journal.get(entry.id) if entry is not None else None
        return current is not None and current.state == FAILED

    def _fill_from_upload(self, lf: LocalFile) -> None:
        """The spool of ``lf`` gets the bytes XNAT holds at its upload target (straight from
        the client: the overlay still shows the local file), if they are the bytes XNAT
        confirmed (size and MD5, hashed here: a listing may have no MD5).  Another client may
        have stored the name since: its bytes, taken by their size alone, became this
        descriptor's, read back as its own and uploaded with its next write over them, with
        or without --allow-delete (the version "replaced" their MD5).  Then EEXIST, as for a
        version refused over another client's file (README): XNAT keeps theirs.  A failed
        download drops the spool and raises: the write answers the errno, nothing is
        half-filled."""
        spool = lf.spool
        assert spool is not None
        size = self._confirmed_size(lf)
        offset = [0]
        md5 = hashlib.md5(usedforsecurity=False)

        def sink(chunk: bytes) -> None:
            self._with_room(functools.partial(spool.write, offset[0], chunk), len(chunk))
            md5.update(chunk)
            offset[0] += len(chunk)

        uri = target_uri(lf.target)
        try:
            self.client.download(uri, sink)
            if offset[0] != size or md5.hexdigest() != lf.uploaded_md5:
                raise OSError(
                    errno.EEXIST,
                    f"{self.client.base_url}{uri} holds {offset[0]} bytes, "
                    f"MD5 {md5.hexdigest()}, not the {size} bytes, MD5 "
                    f"{lf.uploaded_md5 or '(unknown)'} XNAT confirmed from this mount: another "
                    "XNAT client stored it since; writes do not continue from its bytes, and "
                    "XNAT keeps them (open the file again to change them)",
                    join_path(lf.parts),
                )
        except BaseException:
            spool.discard()
            lf.spool = None
            raise

    @staticmethod
    def _new_and_empty(lf: LocalFile) -> bool:
        """A file made here and closed without bytes (``touch``, ``mktemp``): never on XNAT,
        replacing nothing there, a plain file (not an archive to import)."""
        assert lf.spool is not None
        return (
            lf.spool.size == 0
            and lf.replaces is None
            and lf.entry is None
            and not lf.uploaded_size
            and not lf.write_error
            and lf.target.is_file
            and not lf.target.overwrite
        )

    def _fill_from_server(self, node: NodeInfo, spool: SpoolFile, path: str) -> None:
        """Read-modify-write of a file on XNAT: its bytes first go into the spool, making
        room on a full disk as a write does (``_with_room``: the file read is open, so its
        own cached copy is pinned and never the one evicted)."""
        handle = self.tree.open(node, path)
        try:
            offset, chunk = 0, 1 << 20
            while True:
                data = handle.read(offset, chunk)
                if not data:
                    break
                self._with_room(functools.partial(spool.write, offset, data), len(data))
                offset += len(data)
        finally:
            handle.close()

    def _release(self, lf: LocalFile, commit: bool = True) -> None:
        path = join_path(lf.parts)
        try:
            if not commit:
                return  # a handle that changed nothing (WriteHandle.changed)
            emptied = (
                lf.spool is not None
                and not lf.spool.closed
                and lf.spool.size == 0
                and lf.target.overwrite
            )
            if lf.dirty and not emptied:  # an emptied file was refused (and logged) at flush
                self._commit(lf)
        except Exception as exc:  # noqa: BLE001 - release cannot report: one line says it
            _release_failed(path, exc)
        finally:
            with self._lock:
                self._released.notify_all()  # a rename may wait for this (namespace.py)
                lf.handles = max(0, lf.handles - 1)
                if lf.handles == 0 and lf.write_error:
                    # the user was told at write() and close(); an incomplete file is dropped,
                    # and its error with it: a file still shown (an older version pending)
                    # refused every later version at close with this error
                    if lf.spool is not None:
                        lf.spool.discard()
                        lf.spool = None
                    lf.dirty = False
                    lf.write_error = 0
                if (
                    lf.handles == 0
                    and lf.spool is not None
                    and not lf.spool.closed
                    and lf.dirty
                    and lf.spool.size == 0
                    and lf.target.overwrite
                ):
                    lf.dirty = False  # emptied and refused at close: XNAT keeps its bytes
                if lf.handles == 0:
                    empty = lf.state == EMPTY and not lf.removed
                    if lf.spool is not None and (
                        lf.removed or (not lf.spool.closed and not lf.dirty)
                    ):
                        empty = not lf.removed and self._new_and_empty(lf)
                        lf.spool.discard()
                        lf.spool = None
                    if empty:
                        # XNAT cannot store it; shown while the kernel may hold its name
                        empty = self._locked_keep_empty(lf)
                    if (
                        lf.entry is None
                        and lf.spool is None
                        and not empty
                        and self._files.get(lf.parts) is lf
                    ):
                        # uploaded (or empty): the listing shows it from now on
                        self._locked_drop(lf.parts)
