"""Journal: every upload that the server has not yet confirmed, durable on local disk.

One entry = a data file plus a JSON sidecar (rclone ``vfscache`` item ``Info``)::

    directory/                 0700
        <id>.data              0600  the bytes to upload (renamed in from the spool)
        <id>.json              0600  the sidecar: id, seq, target, path, size, md5, created,
                                     tries, next_attempt, last_error, state, mtime_ns,
                                     sent_at (+ source, supersedes: see below)
        .<id>.json.<rnd>.tmp         a sidecar being written (fsspec ``atomic_write``)
        <rnd>.drop             0600  a tombstone: the ids ``remove_all`` is removing

Every sidecar write goes to a temp file in the same directory, is fsynced, moved into place with
``os.replace`` and the directory is fsynced, so a sidecar on disk is always a whole one.

``add`` writes in this order: fsync the spool file, compute size and MD5 (or leave the MD5 to
the uploader, ``digest=False``: then ``reload`` computes it from the fsynced bytes), write the
sidecar (recording ``source`` = the spool path), rename the spool file to ``<id>.data``, fsync
the directory. A kill -9 at any point leaves one of:

- nothing new, the bytes still in the spool file;
- a sidecar and no data file, the bytes still at ``source``: ``reload`` completes the rename
  (roll forward), so the entry is complete;
- a complete entry.

One fsync of the bytes: an open ``SpoolFile`` is fsynced through its own descriptor and not
again through ``add``'s.  fsync(2) makes the *file* durable, whichever of its descriptors asks,
and nothing writes it in between (only the ``SpoolFile`` writes it, and ``add``'s caller holds
the file against writes while it commits, ``tree.uploading``), so the second fsync found
nothing to write and only cost a journal commit and a device flush (6 -> 5 fsyncs per add,
docs/RELIABILITY.md).  A path, or a closed ``SpoolFile``, is fsynced by ``add``.

All or nothing: when ``add`` raises, no entry exists and the bytes are at the spool path, even
when a directory fsync fails after its rename (ENOSPC or EIO on some filesystems): the sidecar
is removed and the data renamed back.  Left, the sidecar made the next mount roll the "failed"
add forward, and data renamed away from under the open spool file took its later writes.

``renamed`` writes the renamed sidecar with ``supersedes``, the ids of the entries its rename
replaces, then removes those: ``reload`` drops any that a crash left, so the rename is one step.

``remove_all`` removes several entries as one step (the versions of a file a close found
XNAT already holds, ``tree.uploading``): it writes a tombstone naming them, atomically as a
sidecar, then removes each (``remove``), then the tombstone.  A kill -9 before the
tombstone's ``os.replace`` leaves every entry; after it, ``reload`` drops every entry the
tombstone names that is still there, then the tombstone: none is left.  Removed one by one,
a kill in between left some (the later versions), which the next mount uploaded.

Whose file: a sidecar's ``source`` is taken only when it is a file of this mount's spool
(``Journal.spool_dir``; a regular file of ours with one link, named with no ``..`` out of it).
A sidecar put in the journal by anyone else named any file the mount's user could rename, and
``reload`` moved it in and uploaded it to the resource the sidecar chose.  A sidecar naming any
other file that exists is kept aside as ``.bad`` with a warning, and nothing is moved.  The
journal folder itself must be ours (``xnatfs.private``).

``remove`` deletes the data file first, then the sidecar. So a sidecar without a data file whose
``source`` is gone is an interrupted remove (or an add whose source vanished) and ``reload``
drops it: no bytes are lost that way. A data file without a sidecar cannot come from our own
ordering, but if one appears (a sidecar lost to corruption or a careless hand) it is *kept*, as a
failed entry with a reason, never deleted: user bytes are deleted only by ``remove``.

States: ``pending`` (waiting for an attempt), ``uploading`` (an attempt runs; ``reload`` turns it
back to pending), ``failed`` (a non-retryable error; kept and listed until someone retries or
removes it), ``done`` (confirmed by the server: the uploader then removes the entry, so ``done``
is seen by callbacks, never found on disk by ``reload`` -- and dropped if it is).

Entries are frozen: ``update`` stores a new version (``dataclasses.replace``), so a reader never
sees half an update. Entries of the same mount ``path`` are versions of one file, ordered by
``seq`` (a counter persisted in the sidecars; wall clocks may jump).

The sidecar's ``target`` is an :class:`~xnatfs.uploads.target.UploadTarget` written as the
plain JSON object of earlier versions (``UploadTarget.to_json``), so their sidecars still load.

This module imports nothing from the rest of xnatfs except ``uploads.spool``,
``uploads.target`` and ``private``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import posixpath
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Union

from xnatfs.private import private_dir
from xnatfs.uploads.spool import SpoolFile
from xnatfs.uploads.target import UploadTarget

log = logging.getLogger(__name__)

__all__ = [
    "Entry",
    "Journal",
    "UploadTarget",
    "STATES",
    "PENDING",
    "UPLOADING",
    "FAILED",
    "DONE",
    "journal_dir",
    "read_entries",
    "uploads_dir",
]

# Plain strings, not an Enum: they are the sidecar's JSON values and the ``cache_state``
# attribute users read, and a str-mixin Enum neither hashes like its value (sets mixing both)
# nor formats like it on every Python this supports (3.9+).

PENDING = "pending"
UPLOADING = "uploading"
FAILED = "failed"
DONE = "done"
STATES = (PENDING, UPLOADING, FAILED, DONE)

_FILE_MODE = 0o600
_DATA = ".data"
_SIDECAR = ".json"
_TMP = ".tmp"
_VERSION = 1
#: sidecar key of a renamed entry: ids of the entries its rename replaced (``renamed``);
#: also a tombstone's (``remove_all``)
_SUPERSEDES = "supersedes"
#: suffix of a tombstone: a JSON object whose ``supersedes`` names entries being removed
_DROP = ".drop"
_CHUNK = 1 << 20

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Entry:
    """One pending upload (a version of the sidecar). Frozen: use ``dataclasses.replace``."""

    #: journal-unique name of the entry (also the data and sidecar file names)
    id: str
    #: what to upload to (the journal only stores it); None for an orphan whose sidecar was
    #: lost.  A mapping in the sidecar's shape is read as an ``UploadTarget``.
    target: Optional[UploadTarget]
    #: path in the mount the bytes were written to ("" for an orphan)
    path: str
    #: bytes in the data file
    size: int
    #: MD5 hex digest of the data file (XNAT's ``digest``); "" until computed (``add`` with
    #: ``digest=False``: the uploader stores it with ``update``, or ``reload`` computes it)
    md5: str
    #: wall-clock time (time.time()) the entry was added
    created: float
    #: order of entries in this journal (several versions of one path upload oldest first)
    seq: int = 0
    #: attempts started so far (an attempt that was started may have reached the server)
    tries: int = 0
    #: when the next attempt is due, on the *uploader's* clock (monotonic): meaningless after a
    #: restart, where every pending entry is due at once
    next_attempt: float = 0.0
    #: text of the last failure ("" if none)
    last_error: str = ""
    #: pending | uploading | failed | done
    state: str = PENDING
    #: the file's mtime in nanoseconds (its last write, or what ``utimens`` set: ``cp -p``,
    #: ``rsync -a``), shown while it is pending and kept once it lands; 0 in sidecars of
    #: earlier versions (``created`` stands in).  Changed only by :meth:`Journal.set_mtime`
    mtime_ns: int = 0
    #: wall-clock time an import's POST was sent whose answer is not known (0: none): a
    #: POST that may have reached XNAT is not sent again blindly (a second import makes a
    #: second session).  Changed only by :meth:`Journal.mark_sent`
    sent_at: float = 0.0
    #: where the bytes are now (not stored in the sidecar; the journal sets it)
    data_path: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.target is not None and not isinstance(self.target, UploadTarget):
            object.__setattr__(self, "target", UploadTarget.coerce(self.target))

    def to_json(self) -> Dict[str, Any]:
        doc = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "data_path"
        }
        doc["target"] = None if self.target is None else self.target.to_json()
        doc["v"] = _VERSION
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], data_path: str) -> "Entry":
        state = doc.get("state", PENDING)
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        target = doc.get("target")
        return cls(
            id=str(doc["id"]),
            target=None if target is None else UploadTarget.from_json(target),
            path=str(doc.get("path", "")),
            size=int(doc["size"]),
            md5=str(doc["md5"]),
            created=float(doc.get("created", 0.0)),
            seq=int(doc.get("seq", 0)),
            tries=int(doc.get("tries", 0)),
            next_attempt=float(doc.get("next_attempt", 0.0)),
            last_error=str(doc.get("last_error", "")),
            state=state,
            mtime_ns=int(doc.get("mtime_ns", 0) or 0),
            sent_at=float(doc.get("sent_at", 0.0) or 0.0),
            data_path=data_path,
        )

    @property
    def shown_mtime_ns(self) -> int:
        """The time the file shows: ``mtime_ns``, or ``created`` for an older sidecar."""
        return self.mtime_ns or int(self.created * 1e9)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _in_spool(source: str, spool_dir: str) -> bool:
    """True when ``source`` names a regular file of ours, with one link, right in ``spool_dir``
    (by its name: no ``..`` out of it, not a symbolic link)."""
    path = os.path.normpath(source)
    if not os.path.isabs(path) or os.path.dirname(path) != spool_dir:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_json(directory: str, final: str, doc: Mapping[str, Any]) -> None:
    """Atomically replace the file ``final`` of the journal ``directory`` with ``doc`` (temp
    file ``.<name>.<rnd>.tmp``, fsync, os.replace, fsync of the directory).  On OSError
    the old file (if any) is intact and the temp file is gone."""
    payload = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
    name = os.path.basename(final)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}{_TMP}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except OSError:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(directory)


def _digest_fd(fd: int) -> "tuple[int, str]":
    """(size, md5 hex) of an open file, read from offset 0."""
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            return size, md5.hexdigest()
        md5.update(chunk)
        size += len(chunk)
        offset += len(chunk)


class Journal:
    """The on-disk set of pending uploads, with an in-memory index.

    Thread-safety: every method may be called from any thread. Two locks, taken in this order:
    ``_write_lock`` serializes changes on disk (sidecar writes, renames, unlinks) so an update
    racing a remove cannot bring a sidecar back; ``_lock`` guards the index (``_entries``,
    ``_by_path``, ``_seq``) and is held only briefly, never across I/O, so lookups from FUSE
    threads never wait for an fsync.

    Call ``reload()`` once at start, before the uploader runs.
    """

    def __init__(self, directory: PathLike, spool_dir: Optional[PathLike] = None) -> None:
        #: the journal directory (created 0700; local I/O only, nothing started)
        self.directory = os.path.abspath(os.fspath(directory))
        #: the ``Spool``'s folder (default: ``spool`` beside the journal, as in ``tree/writes``):
        #: the only one ``reload`` completes an interrupted add from (``_complete_add``)
        self.spool_dir = os.path.abspath(spool_dir or os.path.join(self.directory, "../spool"))
        # ours and 0700, or refused: a link planted here was followed (``xnatfs.private``)
        private_dir(self.directory)
        self._write_lock = threading.RLock()
        self._lock = threading.Lock()
        self._entries: Dict[str, Entry] = {}  # id -> newest version
        self._by_path: Dict[str, List[str]] = {}  # mount path -> ids, oldest first
        self._seq = 0
        self._loaded = False
        #: ids whose version in ``_entries`` is newer than their sidecar (``remember``: its
        #: write met a full disk); guarded by ``_lock``, written again by ``save_unsaved``
        self._unsaved: Set[str] = set()

    # ----------------------------------------------------------------------- file names
    def _data_path(self, entry_id: str) -> str:
        return os.path.join(self.directory, entry_id + _DATA)

    def _sidecar_path(self, entry_id: str) -> str:
        return os.path.join(self.directory, entry_id + _SIDECAR)

    def _write_sidecar(self, entry: Entry, **extra: Any) -> None:
        """Atomically replace the sidecar of ``entry`` (temp file, fsync, os.replace, fsync of
        the directory). On OSError the old sidecar is intact and the temp file is gone."""
        doc = entry.to_json()
        doc.update(extra)
        _write_json(self.directory, self._sidecar_path(entry.id), doc)

    # ----------------------------------------------------------------------- index
    def _locked_insert(self, entry: Entry) -> None:
        """Caller holds self._lock."""
        before = self._entries.get(entry.id)
        if before is not None and before.path and before.path != entry.path:
            # a renamed entry is no version of its old path any more: left listed there, it
            # was "superseded" (dropped, bytes and all) when a new file of the old name was
            # confirmed, and once removed it left an id that versions_for raised KeyError on
            ids = self._by_path.get(before.path, [])
            if entry.id in ids:
                ids.remove(entry.id)
            if not ids:
                self._by_path.pop(before.path, None)
        self._entries[entry.id] = entry
        self._seq = max(self._seq, entry.seq)
        if entry.path:
            ids = self._by_path.setdefault(entry.path, [])
            if entry.id not in ids:
                ids.append(entry.id)
                ids.sort(key=lambda i: (self._entries[i].seq, i))

    def _locked_drop(self, entry_id: str) -> None:
        """Caller holds self._lock."""
        entry = self._entries.pop(entry_id, None)
        if entry is not None and entry.path:
            ids = self._by_path.get(entry.path, [])
            if entry_id in ids:
                ids.remove(entry_id)
            if not ids:
                self._by_path.pop(entry.path, None)

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    # ----------------------------------------------------------------------- public API
    @property
    def loaded(self) -> bool:
        """True once ``reload()`` ran."""
        return self._loaded

    def add(
        self,
        spool: Union[PathLike, SpoolFile],
        target: Union[UploadTarget, Mapping[str, Any]],
        path: str,
        digest: bool = True,
        mtime_ns: int = 0,
    ) -> Entry:
        """Take ownership of the bytes in ``spool`` (a closed-or-open ``SpoolFile`` or a path)
        as a new pending entry uploading to ``target`` for mount path ``path``, whose time is
        ``mtime_ns`` (its last write or ``utimens``).  The file is moved, not copied
        (os.rename; same filesystem expected, a copy is the EXDEV fallback). The entry is
        durable before this returns. On ``OSError`` (ENOSPC writing the sidecar, ...) no
        entry exists and the bytes are still at the spool path.
        A ``SpoolFile`` is fsynced first and closed once the entry holds its bytes; when this
        raises, an open one stays open (closed, its file showed no bytes, and a later write
        began a fresh spool: zeros uploaded in place of what was written before).  With
        ``digest`` False the entry's ``md5`` is left empty (reading a large file once
        more just to hash it is as slow as uploading it): whoever uploads it computes the MD5
        beside the upload and stores it with :meth:`update`.  The bytes are fsynced before the
        sidecar exists either way, so ``reload`` can always compute it from them."""
        spool_file = spool if isinstance(spool, SpoolFile) else None
        synced = spool_file is not None and not spool_file.closed
        if spool_file is not None and synced:
            spool_file.fsync()  # once: module docstring, "One fsync of the bytes"
        source = spool.path if isinstance(spool, SpoolFile) else os.path.abspath(spool)
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if not synced:
                os.fsync(fd)  # the bytes must be on disk before a sidecar points at them
            os.fchmod(fd, _FILE_MODE)
            size, md5 = _digest_fd(fd) if digest else (os.fstat(fd).st_size, "")
        finally:
            os.close(fd)
        entry = Entry(
            id=f"{time.time_ns():016x}-{secrets.token_hex(6)}",
            target=UploadTarget.coerce(target),
            path=path,
            size=size,
            md5=md5,
            created=time.time(),
            seq=self._next_seq(),
            mtime_ns=int(mtime_ns),
        )
        entry = dataclasses.replace(entry, data_path=self._data_path(entry.id))
        with self._write_lock:
            try:
                self._write_sidecar(entry, source=source)
                self._move_in(source, entry.data_path)
            except OSError:  # all or nothing, even after a rename (module docstring)
                self._undo_move(source, entry.data_path)
                _unlink_quietly(self._sidecar_path(entry.id))  # a new id: nothing older
                raise
            with self._lock:
                self._locked_insert(entry)
        if spool_file is not None:
            spool_file.close()  # its bytes are the entry's now (renamed, not copied)
        log.debug("journal: added %s for %s (%d bytes, md5 %s)", entry.id, path, size, md5)
        return entry

    @staticmethod
    def _undo_move(source: str, data_path: str) -> None:
        """The bytes back at ``source`` after a failed ``_move_in``: renamed back, or the copy
        dropped when ``source`` is still there (the EXDEV fallback)."""
        if not os.path.exists(data_path):
            return
        if os.path.exists(source):
            _unlink_quietly(data_path)
            return
        try:
            os.rename(data_path, source)
        except OSError as exc:  # the bytes stay as a data file: kept (``reload``), not lost
            log.error("journal: cannot move %s back to %s: %s", data_path, source, exc)

    def _move_in(self, source: str, data_path: str) -> None:
        """Rename ``source`` to ``data_path`` durably; copy + fsync + rename across
        filesystems (the source is deleted only once the copy is in place)."""
        try:
            os.rename(source, data_path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            tmp = data_path + "." + secrets.token_hex(4) + _TMP
            try:
                with (
                    open(source, "rb") as src,
                    open(
                        os.open(
                            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE
                        ),
                        "wb",
                    ) as dst,
                ):
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.rename(tmp, data_path)
            except OSError:
                _unlink_quietly(tmp)
                raise
            _fsync_dir(self.directory)
            os.unlink(source)
            return
        _fsync_dir(self.directory)
        try:
            _fsync_dir(os.path.dirname(source))
        except OSError:
            pass

    def update(self, entry: Entry) -> Entry:
        """Store a new version of an entry (durably). Raises KeyError if the entry is no longer
        in the journal (removed meanwhile): a removed entry is never brought back.

        The entry's ``mtime_ns`` and ``sent_at`` stay the journal's (:meth:`set_mtime` and
        :meth:`mark_sent` change them): callers store copies taken earlier (the uploader's,
        made before its attempt), and such a copy wrote back the time the file had before a
        ``utimens`` that came meanwhile."""
        with self._write_lock:
            with self._lock:
                current = self._entries.get(entry.id)
                if current is None:
                    raise KeyError(entry.id)
            entry = self._as_stored(entry, current)
            self._write_sidecar(entry)
            with self._lock:
                self._locked_insert(entry)
                self._unsaved.discard(entry.id)
        return entry

    def _as_stored(self, entry: Entry, current: Entry) -> Entry:
        """``entry`` as the journal stores a new version of ``current``: its own data path,
        and the time and send mark the journal holds (``update``'s docstring says why)."""
        return dataclasses.replace(
            entry,
            data_path=self._data_path(entry.id),
            mtime_ns=current.mtime_ns,
            sent_at=current.sent_at,
        )

    def remember(self, entry: Entry) -> Optional[Entry]:
        """Hold a new version of an entry in memory only, after its ``update`` failed (a full
        disk, ENOSPC or EDQUOT): the sidecar keeps the last version written, this process
        goes on with this one; None if the entry left the journal.  Why: the index is what
        ``status``, the uploader's next attempt and the write paths read, and left at the
        older version it showed a refused upload as ``pending`` with 0 tries (and an attempt
        that may have reached XNAT as never started).  ``save_unsaved`` (at unmount) writes
        it; until then a restart finds the older sidecar, a state ``reload`` handles."""
        with self._write_lock:
            with self._lock:
                current = self._entries.get(entry.id)
                if current is None:
                    return None
                entry = self._as_stored(entry, current)
                self._locked_insert(entry)
                self._unsaved.add(entry.id)
        return entry

    def save_unsaved(self) -> int:
        """Write the sidecars ``remember`` left behind (the disk may have room again); how
        many are still unsaved.  A failure is one line per entry."""
        with self._lock:
            pending = [self._entries[i] for i in sorted(self._unsaved) if i in self._entries]
            self._unsaved.intersection_update(self._entries)
        for entry in pending:
            try:
                self.update(entry)
            except KeyError:
                pass
            except OSError as exc:
                log.warning(
                    "journal: %s (%s): its record on disk stays at an older version "
                    "(%s, %d tries): %s",
                    entry.id,
                    entry.path,
                    entry.state,
                    entry.tries,
                    exc,
                )
        with self._lock:
            return len(self._unsaved)

    def set_mtime(self, entry_id: str, mtime_ns: int) -> Entry:
        """Store the file's time (``utimens`` of a pending file) durably, so that it shows
        after a restart and sticks when the file lands; raises as ``update``.  Before, the
        time lived in memory only, and a crash or remount before the upload lost it."""
        return self._set(entry_id, mtime_ns=int(mtime_ns))

    def mark_sent(self, entry_id: str, when: float) -> Entry:
        """Record durably that an import's POST goes out now (``when``), or (0) that its
        answer came and says XNAT did not take it; raises as ``update``.  Written before the
        first byte is sent: after a crash, or an answer lost, the entry says so."""
        return self._set(entry_id, sent_at=float(when))

    def _set(self, entry_id: str, **fields: Any) -> Entry:
        with self._write_lock:
            with self._lock:
                current = self._entries.get(entry_id)
                if current is None:
                    raise KeyError(entry_id)
            entry = dataclasses.replace(current, **fields)
            self._write_sidecar(entry)
            with self._lock:
                self._locked_insert(entry)
                self._unsaved.discard(entry.id)
        return entry

    def renamed(
        self,
        entry: Entry,
        target: Union[UploadTarget, Mapping[str, Any]],
        path: str,
        supersedes: Sequence[Entry] = (),
    ) -> Entry:
        """Store ``entry`` under a new name: its ``target`` and mount ``path``, and a fresh
        ``seq``, so it is the newest version of that name, as the rename that made it is the
        newest change to it.  With its old number a version of the name written before the
        rename (pending, or left by a crash between the rename and that version's removal)
        counted as newer, and its bytes won over the renamed file's.  Raises as ``update``.

        ``supersedes``: the records the rename replaces (older versions of the old name, the
        versions of the file renamed over); they leave the journal with it.  Their ids go into
        the renamed sidecar, whose one atomic write is the rename's commit point, and
        ``reload`` drops any of them a crash left on disk.  Removed one by one after it, a
        crash in between left both names (the old one with older bytes) at the next mount."""
        with self._write_lock:
            with self._lock:
                current = self._entries.get(entry.id)
                if current is None:
                    raise KeyError(entry.id)
            new = dataclasses.replace(
                entry,
                target=UploadTarget.coerce(target),
                path=path,
                seq=self._next_seq(),
                data_path=self._data_path(entry.id),
                mtime_ns=current.mtime_ns,
                sent_at=current.sent_at,
            )
            gone = [e for e in supersedes if e.id != entry.id]
            extra = {_SUPERSEDES: sorted(e.id for e in gone)} if gone else {}
            self._write_sidecar(new, **extra)
            with self._lock:
                self._locked_insert(new)
                self._unsaved.discard(new.id)
            for old in gone:
                try:
                    self.remove(old)
                except OSError as exc:  # the sidecar written above drops it at the next reload
                    log.warning("journal: superseded entry %s stays on disk: %s", old.id, exc)
                    with self._lock:
                        self._locked_drop(old.id)
        return new

    def remove(self, entry: Entry) -> None:
        """Delete an entry's data file, then its sidecar (the order ``reload`` relies on).
        Idempotent. Only the uploader (after the server confirmed the bytes) and explicit user
        deletes should call this."""
        with self._write_lock:
            _unlink_missing_ok(self._data_path(entry.id))
            _unlink_missing_ok(self._sidecar_path(entry.id))
            _fsync_dir(self.directory)
            with self._lock:
                self._locked_drop(entry.id)
                self._unsaved.discard(entry.id)
        log.debug("journal: removed %s (%s)", entry.id, entry.path)

    def remove_all(self, entries: Sequence[Entry]) -> None:
        """Remove ``entries`` as one step: after a kill -9 at any point the next ``reload``
        finds all of them or none (module docstring: the tombstone, written first, is the
        commit point).  One entry is one ``remove``, which is one step already.  An entry
        whose removal fails after the tombstone is written leaves this journal's index all
        the same (one line; its files go at the next ``reload``, the tombstone staying until
        then); raises OSError only when the tombstone cannot be written, nothing removed."""
        if len(entries) < 2:
            for entry in entries:
                self.remove(entry)
            return
        with self._write_lock:
            tombstone = os.path.join(self.directory, secrets.token_hex(8) + _DROP)
            _write_json(
                self.directory, tombstone, {_SUPERSEDES: sorted(e.id for e in entries), "v": 1}
            )
            left = 0
            for entry in entries:
                try:
                    self.remove(entry)
                except OSError as exc:  # the tombstone drops it at the next reload
                    log.warning("journal: removed entry %s stays on disk: %s", entry.id, exc)
                    left += 1
                    with self._lock:
                        self._locked_drop(entry.id)
            if not left:
                _unlink_missing_ok(tombstone)
                _fsync_dir(self.directory)

    def get(self, entry_id: str) -> Optional[Entry]:
        """The current version of an entry, or None if it is not (any longer) in the journal."""
        with self._lock:
            return self._entries.get(entry_id)

    def entries(self) -> List[Entry]:
        """Every entry (current versions), oldest first."""
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: (e.seq, e.id))

    def pending_for(self, path: str) -> Optional[Entry]:
        """The newest entry for mount path ``path`` (any state: a failed upload stays visible),
        or None. The tree shows this size instead of the server's."""
        with self._lock:
            ids = self._by_path.get(path)
            return self._entries[ids[-1]] if ids else None

    def versions_for(self, path: str) -> List[Entry]:
        """All entries for ``path``, oldest first."""
        with self._lock:
            return [self._entries[i] for i in self._by_path.get(path, ())]

    def by_path(self) -> Dict[str, Entry]:
        """Snapshot: mount path -> newest entry, for listings (rclone ``AddVirtualFn``)."""
        with self._lock:
            return {p: self._entries[ids[-1]] for p, ids in self._by_path.items() if ids}

    def pending_in(self, directory: str) -> List[Entry]:
        """Newest entry of every path directly inside mount directory ``directory``."""
        directory = directory.rstrip("/") or "/"
        with self._lock:
            return [
                self._entries[ids[-1]]
                for p, ids in self._by_path.items()
                if ids and posixpath.dirname(p) == directory
            ]

    # ----------------------------------------------------------------------- recovery
    def reload(self) -> List[Entry]:
        """Rebuild the index from disk after a restart (or crash) and return every entry.

        - temp files (``*.tmp``) are deleted: they never held the only copy of anything;
        - a sidecar whose data file is missing: if its ``source`` still exists (an ``add`` was
          interrupted after the sidecar was written) the rename is completed; otherwise (an
          interrupted ``remove``) the sidecar is dropped;
        - ``uploading`` becomes ``pending`` (the attempt died with the process; ``tries`` is
          kept, so the uploader checks the server before sending again); ``done`` is removed;
        - a data file without a readable sidecar is kept as a ``failed`` entry with a reason.
        """
        with self._write_lock:
            with self._lock:
                self._entries.clear()
                self._by_path.clear()
                self._unsaved.clear()
                self._seq = 0
            for name in sorted(os.listdir(self.directory)):
                if name.endswith(_TMP):
                    log.info("journal: removing temp file %s left by a crash", name)
                    _unlink_quietly(os.path.join(self.directory, name))
            names = set(os.listdir(self.directory))
            _drop_superseded(self.directory, names)
            orphans: List[str] = []
            for name in sorted(names):
                if name.endswith(_SIDECAR):
                    self._reload_sidecar(name[: -len(_SIDECAR)], names, orphans)
            for name in sorted(names):
                if name.endswith(_DATA):
                    entry_id = name[: -len(_DATA)]
                    if entry_id + _SIDECAR not in names or entry_id in orphans:
                        self._keep_orphan_data(entry_id, "journal sidecar missing or unreadable")
            with self._lock:
                self._loaded = True
        found = self.entries()
        if found:
            log.info("journal %s: %d upload(s) to resume", self.directory, len(found))
        return found

    def _reload_sidecar(self, entry_id: str, names: Set[str], orphans: List[str]) -> None:
        """Rebuild one entry from its sidecar after a restart.  Caller holds self._write_lock.

        Long because: each crash point of add/remove/upload (unreadable sidecar, add cut
        before its data moved in, remove cut after its data went, done, uploading, not yet
        hashed) is one case here, read top to bottom."""
        sidecar = self._sidecar_path(entry_id)
        data_path = self._data_path(entry_id)
        try:
            with open(sidecar, "rb") as fh:
                doc = json.load(fh)
            entry = Entry.from_json(doc, data_path)
            if entry.id != entry_id:
                raise ValueError(f"sidecar names entry {entry.id!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "journal: sidecar %s is unreadable (%s); keeping it as %s.bad",
                sidecar,
                exc,
                sidecar,
            )
            os.replace(sidecar, sidecar + ".bad")
            orphans.append(entry_id)
            return
        if entry_id + _DATA not in names:
            if not self._complete_add(entry, doc.get("source"), orphans):
                return
            names.add(entry_id + _DATA)
        if entry.state == DONE:
            _unlink_missing_ok(data_path)
            _unlink_missing_ok(sidecar)
            return
        changed = False
        if entry.state == UPLOADING:
            entry = dataclasses.replace(entry, state=PENDING)
            changed = True
        if not entry.md5:  # added with digest=False: the data was fsynced, hash it now
            fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _, md5 = _digest_fd(fd)
            finally:
                os.close(fd)
            entry = dataclasses.replace(entry, md5=md5)
            changed = True
        if changed:
            try:
                self._write_sidecar(entry)
            except OSError as exc:  # the in-memory state is right; disk lags behind
                log.warning("journal: cannot update sidecar of %s: %s", entry_id, exc)
        with self._lock:
            self._locked_insert(entry)

    def _complete_add(self, entry: Entry, source: Any, orphans: List[str]) -> bool:
        """True once an ``add`` a crash interrupted (a sidecar, no data file) has its bytes
        moved in from ``source``, taken only from the spool (module docstring, "Whose file").
        Caller holds self._write_lock."""
        sidecar = self._sidecar_path(entry.id)
        if not isinstance(source, str) or not os.path.lexists(source):
            log.info(
                "journal: dropping entry %s (%s): no data file (interrupted remove)",
                entry.id,
                entry.path,
            )
            _unlink_missing_ok(sidecar)
            return False
        if not _in_spool(source, self.spool_dir):
            log.warning(
                "journal: sidecar %s names %s, not a file of the spool %s: not taken, kept as .bad",
                sidecar,
                source,
                self.spool_dir,
            )
            os.replace(sidecar, sidecar + ".bad")
            orphans.append(entry.id)
            return False
        log.info(
            "journal: completing interrupted add of %s (%s) from %s", entry.id, entry.path, source
        )
        try:
            self._move_in(source, entry.data_path)
        except OSError as exc:  # leave both for the next reload; the bytes are safe
            log.warning("journal: cannot complete the add of %s from %s: %s", entry.id, source, exc)
            return False
        return True

    def _keep_orphan_data(self, entry_id: str, reason: str) -> Entry:
        """Make a failed entry of a data file that has no sidecar. Caller holds _write_lock."""
        data_path = self._data_path(entry_id)
        fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size, md5 = _digest_fd(fd)
            mtime = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        entry = Entry(
            id=entry_id,
            target=None,
            path="",
            size=size,
            md5=md5,
            created=mtime,
            seq=self._next_seq(),
            state=FAILED,
            last_error=f"{reason}: target unknown; bytes kept at {data_path}",
            data_path=data_path,
        )
        log.warning(
            "journal: %s has no usable sidecar; kept as a failed entry (%d bytes at %s)",
            entry_id,
            size,
            data_path,
        )
        try:
            self._write_sidecar(entry)
        except OSError as exc:
            # a full disk at mount start: the bytes are in the journal directory, and a data
            # file without a sidecar is kept again by the next reload; this mount lists it
            # (unsaved, ``save_unsaved`` writes it).  Raised, it failed the whole mount
            log.warning("journal: %s: its sidecar waits for room: %s", entry_id, exc)
            with self._lock:
                self._locked_insert(entry)
                self._unsaved.add(entry_id)
            return entry
        with self._lock:
            self._locked_insert(entry)
        return entry

    def keep_orphan(self, source: PathLike, reason: str) -> Entry:
        """Move a stray file (e.g. a spool leftover) into the journal as a ``failed`` entry with
        no target, so its bytes are kept and listed by ``xnatfs status`` rather than deleted."""
        source = os.path.abspath(os.fspath(source))
        entry_id = f"{time.time_ns():016x}-{secrets.token_hex(6)}"
        with self._write_lock:
            self._move_in(source, self._data_path(entry_id))
            return self._keep_orphan_data(entry_id, reason)


def _unlink_missing_ok(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _drop_superseded(directory: str, names: Set[str]) -> None:
    """Remove the entries that a rename replaced (``renamed``), or a ``remove_all`` was
    removing, and a crash left on disk: the renamed sidecar, or the tombstone, names
    them; then the tombstones.  Caller holds the journal's ``_write_lock``."""
    for entry_id in sorted(_superseded_ids(directory, names)):
        if entry_id + _SIDECAR not in names and entry_id + _DATA not in names:
            continue
        log.info(
            "journal: dropping %s, replaced or removed by a step a crash interrupted",
            entry_id,
        )
        _unlink_missing_ok(os.path.join(directory, entry_id + _DATA))
        _unlink_missing_ok(os.path.join(directory, entry_id + _SIDECAR))
        names.discard(entry_id + _DATA)
        names.discard(entry_id + _SIDECAR)
    _fsync_dir(directory)
    tombstones = sorted(n for n in names if n.endswith(_DROP))
    for name in tombstones:  # after the removals they name are durable
        _unlink_missing_ok(os.path.join(directory, name))
        names.discard(name)
    if tombstones:
        _fsync_dir(directory)


def _superseded_ids(directory: str, names: Iterable[str]) -> Set[str]:
    """Ids that the renamed sidecars among ``names`` say their renames replaced, and that
    the tombstones among them say a ``remove_all`` was removing."""
    found: Set[str] = set()
    for name in names:
        if not name.endswith((_SIDECAR, _DROP)) or name.startswith("."):
            continue
        try:
            with open(os.path.join(directory, name), "rb") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            continue  # an unreadable sidecar is _reload_sidecar's to keep
        ids = doc.get(_SUPERSEDES) if isinstance(doc, dict) else None
        if isinstance(ids, list):
            found.update(str(i) for i in ids)
    return found


def uploads_dir(cache_dir: PathLike) -> str:
    """``<cache-dir>/uploads``: the spool and the upload journal (``tree/writes.py``)."""
    return os.path.join(cache_dir, "uploads")


def journal_dir(uploads: PathLike) -> str:
    """Where the upload journal of ``uploads`` (``<cache-dir>/uploads``) lives: also read by
    ``xnatfs umount`` after the daemon exited, to say what is not on XNAT yet.  Both paths
    are here, not beside the runtime that makes them, so that ``xnatfs umount`` imports this
    module alone: importing ``xnatfs.runtime`` (requests, the BIDS view, the whole tree)
    took 0.4 s of its 0.8 s."""
    return os.path.join(uploads, "journal")


def read_entries(directory: PathLike) -> List[Entry]:
    """The entries of a journal no process has open, read without changing anything (what
    ``xnatfs umount`` reports as not on XNAT yet, after the daemon exited): no crash repair,
    no temp files removed; a sidecar that cannot be read is skipped (the next mount's
    ``Journal.reload`` keeps its bytes).  Oldest first; [] when there is no journal."""
    directory = os.fspath(directory)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    superseded = _superseded_ids(directory, names)
    for name in names:
        if not name.endswith(_SIDECAR) or name.startswith("."):
            continue
        entry_id = name[: -len(_SIDECAR)]
        if entry_id in superseded:
            continue  # replaced by a rename: the next mount drops it
        try:
            with open(os.path.join(directory, name), "rb") as fh:
                doc = json.load(fh)
            found.append(Entry.from_json(doc, os.path.join(directory, entry_id + _DATA)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda e: (e.seq, e.id))
