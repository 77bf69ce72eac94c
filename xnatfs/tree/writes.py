"""Writes become uploads (docs/LAYOUT.md §1.3): files in resources, objects by mkdir, imports,
archive.

``Writer`` owns everything the user wrote that XNAT does not have yet:

- files being written (a spool file on disk, never whole in memory),
- files closed but not yet confirmed by the server (entries of the upload journal),
- folders made with ``mkdir`` inside ``files/`` (local until a file lands in them).

It shows them to the ``Tree`` as an overlay (rclone ``AddVirtualFn``), registered with
``Engine.attach_overlay``, so listings, ``stat`` and reads see them at once.  ``flush``/``fsync``
return only after XNAT accepted the bytes; when the upload fails the bytes stay in the journal,
visible as pending (``user.xnat.cache_state``), retried with backoff, resumed after a restart,
and the caller gets the errno.

The class is built in layers, one module each, every one using only those below it:

- ``local``      ``LocalFile`` (a file XNAT does not show yet), its states, temporary names;
- ``overlay``    ``LocalOverlay``: the local files and folders as nodes for the engine;
- ``uploading``  ``UploadPath``: commit to the journal, upload, the uploader's callbacks, times;
- ``handles``    ``WriteHandle`` and ``HandleOps``: write, read, truncate, release of a file;
- ``opening``    ``Opening``: create, open for writing, truncate, where the bytes go on XNAT;
- ``objects``    ``XnatObjects``: mkdir, rmdir, the DELETE of a file on XNAT;
- ``namespace``  ``Namespace``: unlink, rename (``prearchive_moves`` for sessions);
- ``writes``     ``Writer``: construction and life cycle (journal reload, uploader start/stop).

Lock: ``_lock`` protects ``_files`` and ``_dirs``; it is never held across a request.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from typing import IO, Any, Dict, List, Optional, Tuple

from xnatfs import settings
from xnatfs.private import private_file
from xnatfs.tree.handles import WriteHandle
from xnatfs.tree.local import (
    ARCHIVE_SUFFIXES,
    TEMP_UPLOAD_DELAY,
    WRITING,
    AlreadyReported,
    LocalFile,
    is_temporary,
)
from xnatfs.tree.namespace import Namespace
from xnatfs.tree.paths import join_path, split_path
from xnatfs.uploads import Journal, Spool, Uploader
from xnatfs.uploads.checks import SharedChecks
from xnatfs.uploads.journal import journal_dir

__all__ = [
    "ARCHIVE_SUFFIXES",
    "TEMP_UPLOAD_DELAY",
    "WRITING",
    "AlreadyReported",
    "LocalFile",
    "WriteHandle",
    "Writer",
    "is_temporary",
]

log = logging.getLogger(__name__)

#: at most this many empty files are named in the unmount's log line
_EMPTY_LOG_LIMIT = 20


class UploadsInUse(OSError):
    """Another process writes through the same upload journal (a second mount of one
    ``--cache-dir``): this one must not touch it (``Writer.start``)."""


class Writer(Namespace):
    """The write side of the tree.  ``start()`` after the client is up; ``close()`` last."""

    def __init__(
        self,
        tree: Any,
        client: Any,
        directory: str,
        *,
        allow_delete: bool = False,
        experiment_type: str = "xnat:mrSessionData",
        scan_type: str = "xnat:mrScanData",
        fs_timeout: float = 60.0,
        temp_delay: float = TEMP_UPLOAD_DELAY,
        empty_ttl: float = 0.0,
        upload_workers: int = settings.default("upload_workers"),
        upload_backoff: float = settings.default("upload_backoff"),
        upload_backoff_max: float = settings.default("upload_backoff_max"),
    ) -> None:
        super().__init__()  # the overlay's state (``LocalOverlay``)
        self.tree = tree
        self.client = client
        self.allow_delete = allow_delete
        self.experiment_type = experiment_type
        self.scan_type = scan_type
        self.fs_timeout = fs_timeout
        self.temp_delay = temp_delay
        self.empty_ttl = empty_ttl
        self.spool = Spool(os.path.join(directory, "spool"))
        self.journal = Journal(journal_dir(directory), spool_dir=self.spool.directory)
        # workers and backoff: the --upload-* settings (xnatfs/settings.py)
        self.uploader = Uploader(
            self.journal,
            self._put,
            self._verify,
            workers=upload_workers,
            max_delay=upload_backoff_max,
            base_delay=upload_backoff,
            on_change=self._on_change,
            make_room=self._room_for_journal,
        )
        #: import entries the server accepted (import has nothing to list-verify against)
        self._imported: Dict[str, List[str]] = {}
        self._uploads_lock_path = os.path.join(directory, "lock")
        self._uploads_lock: Optional[IO[str]] = None
        #: the checks' listings, until the uploader says DONE (``UploadPath._verify``)
        self._verified: Dict[str, Tuple[int, List[Any]]] = {}
        #: the checks' listings, shared by checks of one resource that come together
        self._checks = SharedChecks(timeout=fs_timeout)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Reload the journal (files written before a crash show as pending again), keep stray
        spool files as failed entries (never delete user bytes), start the uploader.

        First the uploads directory's lock (``flock``, exclusive, held until ``close``):
        raises ``UploadsInUse`` when another mount of the same cache directory holds it.
        Without it the second mount's start took the first one's open spool files for a
        crash's leftovers and moved them into the journal (the first mount's close then
        failed, its file neither on XNAT nor in the journal under its name), and both
        mounts uploaded, and removed, the same journal entries."""
        self._lock_uploads()
        self.journal.reload()
        for leftover in self.spool.leftovers():
            try:
                self.journal.keep_orphan(leftover, "spool file left by a crash; not uploaded")
            except OSError as exc:  # its bytes stay in the spool: the next start tries again
                log.warning("uploads: spool file %s left by a crash stays there: %s", leftover, exc)
        with self._lock:
            for entry in self.journal.entries():
                if entry.target is None or not entry.path:
                    continue
                parts = split_path(entry.path)
                self._locked_put(
                    LocalFile(
                        parts,
                        entry.target,
                        entry=entry,
                        state=entry.state,
                        mtime_ns=entry.shown_mtime_ns,
                    )
                )
        self.uploader.start()

    def _lock_uploads(self) -> None:
        # held until close(); a link or another user's file there is refused (xnatfs.private)
        lock = os.fdopen(private_file(self._uploads_lock_path, os.O_RDWR), "r+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UploadsInUse(
                    errno.EBUSY,
                    "the upload journal is in use by another xnatfs mount of this cache "
                    "directory; give this mount its own --cache-dir to write",
                    os.path.dirname(self._uploads_lock_path),
                ) from exc
            # a filesystem without flock: go on as before, unguarded
            log.warning("uploads: no lock on %s (%s)", self._uploads_lock_path, exc)
            return
        self._uploads_lock = lock

    def close(self) -> None:
        try:
            self._close()
        finally:
            if self._uploads_lock is not None:
                self._uploads_lock.close()  # the journal is another mount's to take now
                self._uploads_lock = None

    def _close(self) -> None:
        with self._lock:
            open_files = [lf for lf in self._files.values() if lf.spool is not None]
        for lf in open_files:
            try:
                self._commit(lf, upload=False)
            except OSError as exc:
                log.error(
                    "write %s: could not save to the journal at unmount: %s",
                    join_path(lf.parts),
                    exc,
                )
            with self._lock:
                if lf.spool is not None and not lf.dirty:
                    # nothing unsaved (a copy of XNAT's file not changed since), as at its
                    # last close.  Left on disk, the next mount kept it as a failed upload
                    # with no name ("spool file left by a crash")
                    lf.spool.discard()
                    lf.spool = None
        self.uploader.close(time.monotonic() + 10)
        empties = self.empty_files()
        if empties:
            # they were never anywhere but here (XNAT cannot store empty files): say so once
            log.info(
                "unmount: %d empty file(s) made in this mount go with it (XNAT cannot store "
                "empty files): %s%s",
                len(empties),
                ", ".join(empties[:_EMPTY_LOG_LIMIT]),
                " ..." if len(empties) > _EMPTY_LOG_LIMIT else "",
            )

    def status(self) -> List[Dict[str, Any]]:
        return self.uploader.status()
