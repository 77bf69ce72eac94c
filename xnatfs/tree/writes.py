"""Writes become uploads (DESIGN.md §1.3): files in resources, objects by mkdir, imports, archive.

``Writer`` owns everything the user wrote that XNAT does not have yet:

- files being written (a spool file on disk, never whole in memory),
- files closed but not yet confirmed by the server (entries of the upload journal),
- folders made with ``mkdir`` inside ``files/`` (local until a file lands in them).

It shows them to the ``Tree`` as an overlay (rclone ``AddVirtualFn``), registered with
``Engine.attach_overlay``, so listings, ``stat`` and reads see them at once.  ``flush``/``fsync``
return only after XNAT accepted the bytes; when the upload fails the bytes stay in the journal,
visible as pending (``user.xnat.cache_state``), retried with backoff, resumed after a restart,
and the caller gets the errno.

Lock: ``_lock`` protects ``_files`` and ``_dirs``; it is never held across a request.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Set, Tuple

from xnatfs.tree.nodes import Kind, Local, NodeInfo
from xnatfs.tree.paths import (PathParts, check_write_name, join_path, split_path,
                               unescape_name)
from xnatfs.uploads import Journal, Spool, SpoolFile, Uploader
from xnatfs.uploads.journal import Entry
from xnatfs.uploads.retry import classify

log = logging.getLogger(__name__)

#: labels XNAT accepts for subjects, experiments, resources and scans (§10.17)
_LABEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: archives that become imports when written into experiments/ or .prearchive/P/ (§6)
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
#: names that editors and rsync write before renaming: uploaded after a delay, not at close
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9]{6}$|~$|^\.#|\.sw[a-p]$|\.tmp$|\.part$")
#: seconds a temporary file waits for its rename before it is uploaded under its own name
TEMP_UPLOAD_DELAY = 10.0


def is_temporary(name: str) -> bool:
    return bool(_TEMP_RE.search(name))


class AlreadyReported(OSError):
    """An error whose cause was logged when it happened (a failed ``write``): later calls on
    the same file (``flush``, ``release``) answer its errno again, but the error path
    (``fs/errmap.log_failure``) logs them at DEBUG, so one failure is one ERROR line."""

    reported = True


@dataclass
class LocalFile:
    """A file the user wrote that XNAT does not (yet) show."""

    parts: PathParts
    #: where it goes: {"kind": "file", resource_uri, relpath, overwrite, listing} or
    #: {"kind": "import", project, subject?, dest, listing}
    target: Dict[str, Any]
    spool: Optional[SpoolFile] = None
    entry: Optional[Entry] = None
    handles: int = 0
    #: bytes written since the last commit to the journal
    dirty: bool = False
    state: str = "writing"
    #: nanoseconds (rsync and make compare them; a float of seconds cannot hold them): the last
    #: write, or what ``utimens`` set
    mtime_ns: int = field(default_factory=time.time_ns)
    #: errno of a write that failed (ENOSPC...): the file is incomplete and is never uploaded
    write_error: int = 0
    #: the file on XNAT this one replaces (opened with O_TRUNC over it): a commit of the same
    #: size and MD5 uploads nothing (issue 15 §3)
    replaces: Optional[NodeInfo] = None
    #: size of the last upload XNAT confirmed: a ``stat`` between that confirmation (at
    #: close) and the release that drops this overlay entry must not see 0
    uploaded_size: int = 0

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def size(self) -> int:
        if self.spool is not None and not self.spool.closed:
            return self.spool.size
        return self.entry.size if self.entry is not None else self.uploaded_size


class WriteHandle:
    """An open file being written; all state lives in its ``LocalFile``."""

    def __init__(self, writer: "Writer", lf: LocalFile) -> None:
        self.writer = writer
        self.lf = lf
        self.direct_io = False

    def write(self, offset: int, data: bytes) -> int:
        return self.writer._write(self.lf, offset, data)

    def read(self, offset: int, size: int) -> bytes:
        return self.writer._read(self.lf, offset, size)

    def span(self, offset: int, size: int) -> bytes:
        """The bytes (the spool changes under writes, so no fd is handed out)."""
        return self.writer._read(self.lf, offset, size)

    def truncate(self, length: int) -> None:
        self.writer._truncate(self.lf, length)

    def flush(self) -> None:
        self.writer._commit(self.lf)

    def close(self) -> None:
        self.writer._release(self.lf)


class Writer:
    """The write side of the tree.  ``start()`` after the client is up; ``close()`` last."""

    def __init__(self, tree: Any, client: Any, directory: str, *, allow_delete: bool = False,
                 experiment_type: str = "xnat:mrSessionData",
                 scan_type: str = "xnat:mrScanData", fs_timeout: float = 60.0,
                 temp_delay: float = TEMP_UPLOAD_DELAY) -> None:
        self.tree = tree
        self.client = client
        self.allow_delete = allow_delete
        self.experiment_type = experiment_type
        self.scan_type = scan_type
        self.fs_timeout = fs_timeout
        self.temp_delay = temp_delay
        self.spool = Spool(os.path.join(directory, "spool"))
        self.journal = Journal(os.path.join(directory, "journal"))
        self.uploader = Uploader(self.journal, self._put, self._verify, workers=2,
                                 max_delay=300, base_delay=1, on_change=self._on_change)
        self._lock = threading.Lock()
        self._files: Dict[PathParts, LocalFile] = {}
        self._dirs: Set[PathParts] = set()
        #: folder -> number of local files below it (such folders show while files are local)
        self._ancestors: Dict[PathParts, int] = {}
        #: import entries the server accepted (import has nothing to list-verify against)
        self._imported: Dict[str, List[str]] = {}

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Reload the journal (files written before a crash show as pending again), keep stray
        spool files as failed entries (never delete user bytes), start the uploader."""
        self.journal.reload()
        for leftover in self.spool.leftovers():
            self.journal.keep_orphan(leftover, "spool file left by a crash; not uploaded")
        with self._lock:
            for entry in self.journal.entries():
                if entry.target is None or not entry.path:
                    continue
                parts = split_path(entry.path)
                self._locked_put(LocalFile(parts, dict(entry.target), entry=entry,
                                           state=entry.state,
                                           mtime_ns=int(entry.created * 1e9)))
        self.uploader.start()

    def close(self) -> None:
        with self._lock:
            open_files = [lf for lf in self._files.values() if lf.spool is not None]
        for lf in open_files:
            try:
                self._commit(lf, upload=False)
            except OSError as exc:
                log.error("write %s: could not save to the journal at unmount: %s",
                          join_path(lf.parts), exc)
        self.uploader.close(time.monotonic() + 10)

    def status(self) -> List[Dict[str, Any]]:
        return self.uploader.status()

    # ------------------------------------------------------------------ overlay for the tree
    def node(self, parts: PathParts) -> Optional[NodeInfo]:
        """The local file at ``parts`` (it wins over what XNAT lists), or None."""
        with self._lock:
            lf = self._files.get(parts)
            return self._file_node(lf) if lf is not None else None

    def dir_node(self, parts: PathParts) -> Optional[NodeInfo]:
        """A folder that exists only here (made by mkdir, or holding local files); asked only
        when XNAT's listing has no such name."""
        with self._lock:
            if parts in self._dirs or parts in self._ancestors:
                return self._dir(parts)
        return None

    def children(self, parts: PathParts) -> List[NodeInfo]:
        """Local files and folders directly in ``parts`` (folders only add missing names)."""
        n = len(parts) + 1
        with self._lock:
            files = [self._file_node(lf) for p, lf in self._files.items()
                     if len(p) == n and p[:-1] == parts]
            dirs = [self._dir(p) for p in set(self._dirs) | set(self._ancestors)
                    if len(p) == n and p[:-1] == parts]
        return files + dirs

    @staticmethod
    def _dir(parts: PathParts) -> NodeInfo:
        return NodeInfo(name=parts[-1], kind=Kind.FILES, is_dir=True, mtime=time.time(),
                        ref=Local())

    @staticmethod
    def _file_node(lf: LocalFile) -> NodeInfo:
        target = lf.target
        uri = ""
        if target.get("kind") == "file":
            uri = f"{target['resource_uri']}/files/{target['relpath']}"
        return NodeInfo(name=lf.parts[-1], kind=Kind.FILE, is_dir=False, size=lf.size,
                        mtime=lf.mtime, uri=uri, ref=Local(lf),
                        attrs={"cache_state": lf.state, "uri": uri,
                               "digest": lf.entry.md5 if lf.entry else ""})

    @staticmethod
    def owns(node: NodeInfo) -> bool:
        return isinstance(node.local_file, LocalFile)

    @staticmethod
    def mtime_ns(node: NodeInfo) -> int:
        """The mtime of a file this overlay owns (``view.layout.Overlay``)."""
        return int(node.local_file.mtime_ns)

    def local_read_handle(self, node: NodeInfo) -> WriteHandle:
        """Reading a file that is still local (being written, or pending upload)."""
        lf = node.local_file
        with self._lock:
            lf.handles += 1
        return WriteHandle(self, lf)

    # ------------------------------------------------------------------ create / open
    def create(self, path: str) -> WriteHandle:
        parts = split_path(path)
        check_write_name(parts[-1], path)  # before any request (issue 17 §3)
        parent = self.tree.lookup(join_path(parts[:-1]))
        name = parts[-1]
        try:
            existing = self.tree.lookup(path)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if existing.is_dir:
                raise OSError(errno.EISDIR, "is a directory", path)
            return self.open_write(existing, path, truncate=True)
        target = self._target_for(parent, parts, path)
        spool = self.spool.create()
        lf = LocalFile(parts, target, spool=spool, handles=1, dirty=False)
        with self._lock:
            old = self._files.get(parts)
            if old is not None and old.handles:
                spool.discard()
                raise OSError(errno.EBUSY, "being written by another handle", path)
            self._locked_put(lf)
        return WriteHandle(self, lf)

    def open_write(self, node: NodeInfo, path: str, truncate: bool) -> WriteHandle:
        parts = split_path(path)
        if isinstance(node.local_file, LocalFile):
            lf = node.local_file
            with self._lock:
                lf.handles += 1
            if truncate:
                self._truncate(lf, 0)
            return WriteHandle(self, lf)
        if node.kind is not Kind.FILE:
            raise OSError(errno.EACCES, "not a writable file", path)
        if not self.allow_delete and not truncate:
            # appending or changing bytes in place: the result differs from what XNAT has
            raise OSError(errno.EACCES, "changing a file on XNAT needs --allow-delete", path)
        parent = self.tree.lookup(join_path(parts[:-1]))
        target = self._target_for(parent, parts, path)
        target["overwrite"] = True
        spool = self.spool.create()
        if not truncate:
            self._fill_from_server(node, spool, path)
        # without --allow-delete an O_TRUNC open is let through: rewriting the same bytes
        # (cp, make, editors when nothing changed) destroys nothing and uploads nothing;
        # other bytes are refused with EACCES at the first write past the old size, else at
        # close (issue 15 §3)
        lf = LocalFile(parts, target, spool=spool, handles=1, dirty=truncate, replaces=node)
        with self._lock:
            self._locked_put(lf)
        return WriteHandle(self, lf)

    def truncate(self, path: str, length: int) -> None:
        """``truncate`` without a handle (libfuse2's O_TRUNC, ``truncate -s``).

        Shorter than the file: a real replace (the first ``length`` bytes are uploaded).  To
        zero bytes: ENOTSUP, since XNAT cannot store an empty file (§4.5) and answering 0 would
        leave the old bytes on the server behind a success (issue 17 §8).
        """
        node = self.tree.lookup(path)
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory", path)
        if not self.allow_delete and not isinstance(node.local_file, LocalFile) \
                and node.kind is Kind.FILE and length == node.size:
            return  # the same bytes: nothing changes (issue 15 §3)
        if not self.allow_delete and not isinstance(node.local_file, LocalFile):
            raise OSError(errno.EACCES, "truncating a file on XNAT needs --allow-delete", path)
        if length == 0 and self.allow_delete and not isinstance(node.local_file, LocalFile):
            log.warning("truncate %s: refused (ENOTSUP): XNAT cannot store an empty file", path)
            raise OSError(errno.ENOTSUP, "XNAT cannot store an empty file: the file on XNAT "
                          "is kept (rm it instead)", path)
        handle = self.open_write(node, path, truncate=(length == 0))
        try:
            handle.truncate(length)
            if handle.lf.handles <= 1:
                handle.flush()
        finally:
            handle.close()

    def _target_for(self, parent: NodeInfo, parts: PathParts, path: str) -> Dict[str, Any]:
        name = check_write_name(parts[-1], path)
        if parent.kind is Kind.FILES:
            resource_parts = self._files_root(parent, parts[:-1])
            # every folder below files/ is part of the upload URL: each is checked
            relpath = "/".join(check_write_name(p, path) for p in parts[len(resource_parts):])
            return {"kind": "file", "resource_uri": self._resource_uri(parent, resource_parts),
                    "relpath": relpath, "overwrite": False, "listing": list(resource_parts)}
        if parent.kind is Kind.EXPERIMENTS and name.lower().endswith(ARCHIVE_SUFFIXES):
            return {"kind": "import", "project": parent.project, "subject": parent.subject,
                    "dest": "/archive", "listing": list(parts[:-1]),
                    "content_type": _archive_type(name)}
        if parent.kind is Kind.PRE_PROJECT and name.lower().endswith(ARCHIVE_SUFFIXES):
            return {"kind": "import", "project": parent.project,
                    "dest": f"/prearchive/projects/{parent.project}",
                    "listing": list(parts[:-2]), "content_type": _archive_type(name)}
        if parent.kind in (Kind.EXPERIMENTS, Kind.PRE_PROJECT):
            raise OSError(errno.EPERM, "only .zip/.tar.gz/.tgz archives can be written here "
                          "(they are imported as sessions)", path)
        raise OSError(errno.EPERM, "XNAT has no place for a file here (files go below "
                      ".../resources/R/files/)", path)

    def _files_root(self, parent: NodeInfo, parent_parts: PathParts) -> PathParts:
        """Path of the ``files`` directory of the resource that holds ``parent``."""
        depth = len(parent.subpath)
        if parent.is_local:  # a local folder: walk up to a real one
            up = parent_parts[:-1]
            while up:
                node = self.tree.lookup(join_path(up))
                if node.kind is Kind.FILES and not node.is_local:
                    return up[:len(up) - len(node.subpath)]
                up = up[:-1]
            raise OSError(errno.EIO, "local folder outside a resource", join_path(parent_parts))
        return parent_parts[:len(parent_parts) - depth]

    def _resource_uri(self, parent: NodeInfo, resource_parts: PathParts) -> str:
        if not parent.is_local:
            return parent.uri
        return self.tree.lookup(join_path(resource_parts)).uri

    def _fill_from_server(self, node: NodeInfo, spool: SpoolFile, path: str) -> None:
        """Read-modify-write of a file on XNAT: its bytes first go into the spool."""
        handle = self.tree.open(node, path)
        try:
            offset, chunk = 0, 1 << 20
            while True:
                data = handle.read(offset, chunk)
                if not data:
                    break
                spool.write(offset, data)
                offset += len(data)
        finally:
            handle.close()

    def _locked_put(self, lf: LocalFile) -> None:
        """Show ``lf``; its parent folders show too while it is local.  Caller holds _lock."""
        if self._files.get(lf.parts) is None:
            for i in range(1, len(lf.parts)):
                self._ancestors[lf.parts[:i]] = self._ancestors.get(lf.parts[:i], 0) + 1
        self._files[lf.parts] = lf

    def _locked_drop(self, parts: PathParts) -> Optional[LocalFile]:
        """Stop showing the local file at ``parts`` (uploaded, removed, renamed).  Caller holds
        _lock."""
        lf = self._files.pop(parts, None)
        if lf is not None:
            for i in range(1, len(parts)):
                n = self._ancestors.get(parts[:i], 0) - 1
                if n > 0:
                    self._ancestors[parts[:i]] = n
                else:
                    self._ancestors.pop(parts[:i], None)
        return lf

    def _locked_forget_dirs(self, parts: PathParts) -> None:
        """A file landed on XNAT: its folders now come from the listing.  Caller holds _lock."""
        for i in range(1, len(parts)):
            self._dirs.discard(parts[:i])

    # ------------------------------------------------------------------ handle operations
    def _write(self, lf: LocalFile, offset: int, data: bytes) -> int:
        if lf.spool is None or lf.spool.closed:
            self._reopen_spool(lf)
        assert lf.spool is not None
        if (lf.replaces is not None and not self.allow_delete
                and offset + len(data) > lf.replaces.size):
            # longer than the file on XNAT: certainly other bytes; say so now, not only at
            # close (shells ignore close errors)
            lf.write_error = errno.EACCES
            raise OSError(errno.EACCES, "replacing a file on XNAT with other bytes needs "
                          "--allow-delete", join_path(lf.parts))
        try:
            n = lf.spool.write(offset, data)
        except OSError as exc:
            # the op's error path logs this one line (path, errno, what it means); the
            # flush/release after it answer the errno again without a line of their own
            lf.write_error = exc.errno or errno.EIO
            raise OSError(lf.write_error, f"{exc.strerror or exc}; the file is incomplete and "
                          "will not be uploaded", join_path(lf.parts)) from exc
        lf.dirty = True
        lf.state = "writing"
        lf.mtime_ns = time.time_ns()
        return n

    def _read(self, lf: LocalFile, offset: int, size: int) -> bytes:
        spool = lf.spool
        if spool is not None:
            try:
                return spool.read(offset, size)
            except OSError as exc:
                # another handle's close() committed it between our look and the read: the
                # spool is closed (EBADF from SpoolFile, never a reused descriptor) and its
                # bytes are now the journal entry's; read them there
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
        raise OSError(errno.EIO, "the local copy is gone (uploaded meanwhile): open again",
                      join_path(lf.parts))

    def _truncate(self, lf: LocalFile, length: int) -> None:
        if lf.spool is None or lf.spool.closed:
            self._reopen_spool(lf)
        assert lf.spool is not None
        lf.spool.truncate(length)
        lf.dirty = True
        lf.mtime_ns = time.time_ns()

    def _reopen_spool(self, lf: LocalFile) -> None:
        """More writes after a commit: continue from the committed bytes."""
        if lf.entry is not None and os.path.exists(lf.entry.data_path):
            lf.spool = self.spool.create(copy_from=lf.entry.data_path)
        else:
            lf.spool = self.spool.create()
            node = self.tree.lookup(join_path(lf.parts))
            if not isinstance(node.local_file, LocalFile):
                self._fill_from_server(node, lf.spool, join_path(lf.parts))
        lf.target = dict(lf.target, overwrite=True)

    def _commit(self, lf: LocalFile, upload: bool = True) -> None:
        """close()/fsync(): put the bytes in the journal, then upload them now.

        Returns once XNAT confirmed them; on failure raises the error (the caller answers its
        errno) with the bytes safe in the journal and a retry scheduled.
        """
        path = join_path(lf.parts)
        if lf.write_error:
            raise AlreadyReported(lf.write_error, "an earlier write failed: not uploaded", path)
        if not lf.dirty or lf.spool is None:
            return
        if lf.spool.size == 0 and lf.target.get("overwrite"):
            # opened with O_TRUNC (or truncated) and closed empty: XNAT cannot store an empty
            # file and still holds the old bytes; say so, never succeed silently (issue 17 §8).
            # Not sticky: a shell's `cmd > file` closes its first descriptor (after dup2)
            # before cmd writes; a later close with bytes is judged on them.  Still empty at
            # release: the empty local copy is dropped there.
            code = errno.ENOTSUP if self.allow_delete or lf.replaces is None else errno.EACCES
            log.warning("write %s: emptied but XNAT cannot store an empty file: %s, the "
                        "old bytes stay on XNAT", path, errno.errorcode[code])
            raise OSError(code, "XNAT cannot store an empty file: the file on XNAT "
                          "keeps its old bytes", path)
        if lf.replaces is not None:
            if self._spool_same(lf.spool, lf.replaces):
                # what rsync, cp and make do when nothing changed: no upload, and no
                # --allow-delete needed since nothing is destroyed; the write's time sticks
                lf.dirty = False
                self._remember_time(lf.replaces, lf.mtime_ns)
                log.info("write %s: the same bytes as on XNAT: nothing uploaded", path)
                return
            if not self.allow_delete:
                lf.write_error = errno.EACCES
                raise OSError(errno.EACCES, "replacing a file on XNAT with other bytes needs "
                              "--allow-delete; XNAT keeps its copy", path)
        if lf.spool.size == 0:
            # XNAT refuses empty uploads (§4.5): nothing to store, nothing to lose
            log.info("write %s: empty file not uploaded (XNAT cannot store empty files)", path)
            lf.dirty = False
            return
        entry = self.journal.add(lf.spool, lf.target, path, digest=False)
        with self._lock:
            lf.spool = None
            lf.entry = entry
            lf.dirty = False
            lf.state = "pending"
        if not upload:
            return
        if is_temporary(lf.parts[-1]):
            # rsync and editors rename their temporary file right after closing it: upload
            # under the final name then, not twice
            self.uploader.submit(entry, delay=self.temp_delay)
            return
        self._upload_now(lf, entry)

    def _upload_now(self, lf: LocalFile, entry: Entry) -> None:
        path = join_path(lf.parts)
        try:
            self.uploader.upload_now(entry, time.monotonic() + self.fs_timeout)
        except Exception as exc:
            # the same table as the uploader's (uploads/retry.py); the ERROR line with the
            # errno is the _op wrapper's (one line per failure), this one says what happens next
            retry = classify(exc).retry
            with self._lock:
                lf.state = "pending" if retry else "failed"
            log.info("upload %s: kept in the journal, %s", path,
                     "retried in the background until XNAT has it" if retry
                     else "not retryable: kept as failed")
            raise

    def _release(self, lf: LocalFile) -> None:
        path = join_path(lf.parts)
        try:
            emptied = (lf.spool is not None and not lf.spool.closed and lf.spool.size == 0
                       and lf.target.get("overwrite"))
            if lf.dirty and not emptied:  # an emptied file was refused (and logged) at flush
                self._commit(lf)
        except Exception as exc:  # noqa: BLE001 - release cannot report; flush already did
            log.debug("release %s: %s", path, exc)
        finally:
            with self._lock:
                lf.handles = max(0, lf.handles - 1)
                if lf.handles == 0 and lf.write_error and lf.spool is not None:
                    # the user was told at write() and close(); an incomplete file is dropped
                    lf.spool.discard()
                    lf.spool = None
                    lf.dirty = False
                if (lf.handles == 0 and lf.spool is not None and not lf.spool.closed
                        and lf.dirty and lf.spool.size == 0 and lf.target.get("overwrite")):
                    lf.dirty = False  # emptied and refused at close: XNAT keeps its bytes
                if lf.handles == 0:
                    if lf.spool is not None and not lf.spool.closed and not lf.dirty:
                        lf.spool.discard()
                        lf.spool = None
                    if lf.entry is None and lf.spool is None and self._files.get(lf.parts) is lf:
                        # uploaded (or empty): the listing shows it from now on
                        self._locked_drop(lf.parts)

    # ------------------------------------------------------------------ uploader callbacks
    def _put(self, entry: Entry) -> None:
        target = entry.target or {}
        with open(entry.data_path, "rb") as fh:
            if target.get("kind") == "file":
                self.client.upload_file(target["resource_uri"], target["relpath"], fh,
                                        entry.size, overwrite=bool(target.get("overwrite")))
            elif target.get("kind") == "import":
                uris = self.client.import_archive(
                    fh, entry.size, project=target["project"], subject=target.get("subject"),
                    dest=target.get("dest"),
                    content_type=target.get("content_type", "application/zip"))
                self._imported[entry.id] = uris
                log.info("import %s: %s", entry.path, ", ".join(uris))
            else:
                raise OSError(errno.EINVAL, f"unknown upload target {target!r}", entry.path)

    def _verify(self, entry: Entry) -> bool:
        target = entry.target or {}
        if target.get("kind") == "import":
            return entry.id in self._imported
        for f in self.client.list_files(target["resource_uri"]):
            if f.path == target["relpath"]:
                ok = f.size == entry.size and (not f.digest or f.digest == entry.md5)
                if ok:
                    self._landed(entry, f)
                return ok
        return False

    # ------------------------------------------------------------------ times (issue 15)
    def _landed(self, entry: Entry, listed: Any) -> None:
        """XNAT has the bytes of ``entry`` as the listing row ``listed``: the time the file
        showed while local (its last write, or what ``utimens`` set) sticks to it, so that
        ``make`` and ``rsync -t`` see the time they expect, not the object's."""
        with self._lock:
            lf = self._files.get(split_path(entry.path))
            mine = lf is not None and lf.entry is not None and lf.entry.id == entry.id
            mtime_ns = lf.mtime_ns if mine and lf is not None else int(entry.created * 1e9)
        times = getattr(self.tree, "times", None)
        if times is not None:
            times.set(listed.uri, listed.size, listed.digest, mtime_ns,
                      listed=getattr(listed, "mtime", None) or 0.0)

    def _remember_time(self, node: NodeInfo, mtime_ns: int) -> None:
        times = getattr(self.tree, "times", None)
        if times is not None:
            times.set(node.uri, node.size, node.digest, mtime_ns,
                      listed=getattr(node.record, "mtime", None) or 0.0)

    def set_mtime(self, path: str, mtime_ns: int) -> None:
        """``utimens``: a local file takes the time now (and keeps it when it lands); a file
        on XNAT keeps it in the cache's times index; directories accept it and keep nothing
        (their times are XNAT's objects')."""
        parts = split_path(path)
        with self._lock:
            lf = self._files.get(parts)
            if lf is not None:
                lf.mtime_ns = mtime_ns
                return
        node = self.tree.lookup(path)
        if node.kind is Kind.FILE and not node.prearchive and not node.is_dir:
            self._remember_time(node, mtime_ns)

    def _spool_same(self, spool: SpoolFile, node: NodeInfo) -> bool:
        """Do the spool's bytes have the size and MD5 the listing gives for ``node``?  With
        no digest (checksums off, §1.8) they cannot be told equal without a download: no."""
        if not node.digest or spool.size != node.size:
            return False
        md5 = hashlib.md5(usedforsecurity=False)
        offset, chunk = 0, 1 << 20
        while offset < spool.size:
            data = spool.read(offset, chunk)
            if not data:
                break
            md5.update(data)
            offset += len(data)
        return offset == node.size and md5.hexdigest() == node.digest

    def _entry_same(self, entry: Entry, node: NodeInfo) -> bool:
        """Does a journal entry hold the size and MD5 the listing gives for ``node``?"""
        if not node.digest or entry.size != node.size:
            return False
        digest = entry.md5
        if not digest:
            md5 = hashlib.md5(usedforsecurity=False)
            try:
                with open(entry.data_path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        md5.update(block)
            except OSError:
                return False
            digest = md5.hexdigest()
        return digest == node.digest

    def _on_change(self, entry: Entry) -> None:
        parts = split_path(entry.path)
        listing = tuple((entry.target or {}).get("listing") or ())
        with self._lock:
            lf = self._files.get(parts)
            if lf is not None and lf.entry is not None and lf.entry.id == entry.id:
                if entry.state == "done":
                    lf.uploaded_size = entry.size
                    lf.entry = None
                    self._locked_forget_dirs(parts)
                    if lf.handles == 0 and lf.spool is None:
                        self._locked_drop(parts)
                else:
                    lf.entry = entry
                    lf.state = entry.state
        if entry.state == "done" and listing:
            self.tree.invalidate(join_path(listing))

    # ------------------------------------------------------------------ namespace operations
    def mkdir(self, path: str) -> None:
        parts = split_path(path)
        name = check_write_name(parts[-1], path)  # before any request (issue 17 §3)
        parent = self.tree.lookup(join_path(parts[:-1]))
        try:
            self.tree.lookup(path)
            raise OSError(errno.EEXIST, "exists", path)
        except FileNotFoundError:
            pass
        if parent.kind is Kind.FILES:
            with self._lock:
                self._dirs.add(parts)
            return
        if parent.kind not in (Kind.SUBJECTS, Kind.EXPERIMENTS, Kind.SCANS, Kind.RESOURCES):
            raise OSError(errno.EPERM, "XNAT objects are made with mkdir only inside subjects/, "
                          "experiments/, scans/, resources/ or files/", path)
        if not _LABEL_RE.match(name):
            raise OSError(errno.EINVAL, "XNAT labels are 1-64 characters of A-Z a-z 0-9 _ -",
                          path)
        if parent.kind is Kind.SUBJECTS:
            self.client.create_subject(parent.project, name)
        elif parent.kind is Kind.EXPERIMENTS:
            self.client.create_experiment(parent.project, parent.subject, name,
                                          self.experiment_type)
        elif parent.kind is Kind.SCANS:
            self.client.create_scan(parent.uri, name, self.scan_type)
        else:
            self.client.create_resource(parent.uri, name)
        log.info("mkdir %s: created on XNAT", path)
        self.tree.invalidate(join_path(parts[:-1]))

    def unlink(self, path: str) -> None:
        parts = split_path(path)
        with self._lock:
            lf = self._files.get(parts)
        if lf is not None:
            if lf.handles:
                raise OSError(errno.EBUSY, "still open", path)
            with self._lock:
                self._locked_drop(parts)
            if lf.entry is not None:
                try:
                    self.journal.remove(lf.entry)
                except KeyError:
                    pass
            return
        node = self.tree.lookup(path)
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory", path)
        if node.kind is not Kind.FILE or node.prearchive:
            raise OSError(errno.EPERM, "cannot remove this", path)
        if not self.allow_delete:
            raise OSError(errno.EACCES, "removing files from XNAT needs --allow-delete", path)
        self.client.delete(node.uri)
        log.info("rm %s: deleted on XNAT", path)
        # a resource's files are one listing however deep the folders (§1.8): forget all of it,
        # else a file in a sub-folder stays listed after rm (found by tests/real)
        parent = self.tree.lookup(join_path(parts[:-1]))
        root = self._files_root(parent, parts[:-1]) if parent.kind is Kind.FILES else parts[:-1]
        self.tree.invalidate(join_path(root))

    def rmdir(self, path: str) -> None:
        parts = split_path(path)
        with self._lock:
            if parts in self._dirs:
                if any(p[:len(parts)] == parts and p != parts
                       for p in list(self._files) + list(self._dirs)):
                    raise OSError(errno.ENOTEMPTY, "not empty", path)
                self._dirs.discard(parts)
                return
        node = self.tree.lookup(path)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", path)
        deletable = {Kind.SUBJECT, Kind.EXPERIMENT, Kind.SCAN, Kind.RESOURCE, Kind.PRE_SESSION,
                     Kind.ASSESSOR}
        if node.kind not in deletable:
            raise OSError(errno.EPERM, "this directory cannot be removed", path)
        if not self.allow_delete:
            raise OSError(errno.EACCES, "removing XNAT objects needs --allow-delete", path)
        if node.kind is not Kind.PRE_SESSION and not self._is_empty(path, node):
            raise OSError(errno.ENOTEMPTY, "XNAT object is not empty", path)
        if node.kind is Kind.PRE_SESSION:
            self._prearc().delete(node.uri)
        else:
            self.client.delete(node.uri)
        log.info("rmdir %s: deleted on XNAT", path)
        self.tree.invalidate(join_path(parts[:-1]))

    def _is_empty(self, path: str, node: NodeInfo) -> bool:
        for child in self.tree.listdir(path):
            if child.kind is Kind.FILES:
                if self.tree.listdir(join_path(split_path(path) + (child.name,))):
                    return False
            elif child.is_dir and child.kind in (Kind.RESOURCES, Kind.SCANS, Kind.EXPERIMENTS,
                                                 Kind.ASSESSORS):
                if self.tree.listdir(join_path(split_path(path) + (child.name,))):
                    return False
            else:
                return False
        return True

    def rename(self, old: str, new: str) -> None:
        old_parts, new_parts = split_path(old), split_path(new)
        check_write_name(new_parts[-1], new)  # before any request (issue 17 §3)
        node = self.tree.lookup(old)
        new_parent = self.tree.lookup(join_path(new_parts[:-1]))
        if node.kind is Kind.PRE_SESSION and new_parent.kind is Kind.EXPERIMENTS:
            label = unescape_name(new_parts[-1])
            if not _LABEL_RE.match(label):
                raise OSError(errno.EINVAL, "XNAT labels are 1-64 characters of A-Z a-z 0-9 _ -",
                              new)
            uri = self._prearc().archive(node.uri, new_parent.project,
                                         _subject_label(self.tree, new_parts), label)
            log.info("mv %s: archived as %s", old, uri)
            self.tree.invalidate(join_path(new_parts[:-1]))
            self.tree.invalidate(join_path(old_parts[:-1]))
            return
        if node.kind is Kind.PRE_SESSION and new_parent.kind is Kind.PRE_PROJECT:
            self._prearchive_move(node, new_parent, old_parts, new_parts, new)
            return
        lf = node.local_file if isinstance(node.local_file, LocalFile) else None
        if lf is None and not node.is_local and not self.allow_delete:
            # XNAT has no move (a stored file can only be uploaded or deleted, §4.5), and mv
            # answers EXDEV with copy + remove; the remove would be refused after the copy
            # reached XNAT, leaving both there (a file twice, or a new empty subject): refuse
            # before anything is copied.  Local files and folders (rsync/editor temp files)
            # need no delete on XNAT and rename below (issue 16 §2)
            raise OSError(errno.EACCES, "moving what is on XNAT is a copy plus a delete: "
                          "it needs --allow-delete", old)
        if lf is None or new_parent.kind is not Kind.FILES:
            # XNAT cannot move a stored file: mv falls back to copy + unlink on EXDEV
            raise OSError(errno.EXDEV, "XNAT has no rename: copy and remove instead", old)
        try:
            existing = self.tree.lookup(new)
        except FileNotFoundError:
            existing = None
        target = self._target_for(new_parent, new_parts, new)
        if existing is not None and not isinstance(existing.local_file, LocalFile):
            if (existing.kind is Kind.FILE and lf.entry is not None and lf.spool is None
                    and lf.handles == 0 and self._entry_same(lf.entry, existing)):
                # rsync's temporary file renamed over a file XNAT has with the same bytes:
                # nothing to upload or destroy; the temp's time (rsync -t) sticks
                with self._lock:
                    if self._files.get(old_parts) is lf:
                        self._locked_drop(old_parts)
                try:
                    self.journal.remove(lf.entry)
                except KeyError:
                    pass
                self._remember_time(existing, lf.mtime_ns)
                log.info("mv %s %s: the same bytes as on XNAT: nothing uploaded", old, new)
                return
            if not self.allow_delete:
                raise OSError(errno.EACCES, "replacing a file on XNAT needs --allow-delete", new)
            target["overwrite"] = True
        with self._lock:
            if self._files.get(old_parts) is not lf:
                raise OSError(errno.ENOENT, "vanished", old)
            self._locked_drop(old_parts)
            replaced = self._locked_drop(new_parts)
            lf.parts = new_parts
            lf.target = target
            self._locked_put(lf)
        if replaced is not None and replaced.entry is not None:
            try:
                self.journal.remove(replaced.entry)
            except KeyError:
                pass
        if lf.entry is not None:
            entry = self.journal.update(replace(lf.entry, target=target, path=new))
            lf.entry = entry
            if not is_temporary(new_parts[-1]) and lf.handles == 0:
                self._upload_now(lf, entry)


    def _prearc(self) -> Any:
        """Prearchive actions that wait (within ``--timeout``) for the state XNAT needs."""
        from xnatfs.xnat.prearc import PrearcActions

        return PrearcActions(self.client, timeout=self.tree.fs_timeout)

    def _prearchive_move(self, node: NodeInfo, new_parent: NodeInfo, old_parts: PathParts,
                         new_parts: PathParts, new: str) -> None:
        """``mv .prearchive/P/TS/SESSION .prearchive/Q/``: XNAT's prearchive move (§7.3); the
        session then shows as ``.prearchive/Q/TS/SESSION`` (same timestamp and folder)."""
        if new_parts[-1] != old_parts[-1]:
            raise OSError(errno.EINVAL, "a prearchive session keeps its name when moved: "
                                        "mv it into the other project's folder", new)
        uri = self._prearc().move(node.uri, new_parent.project)
        log.info("mv %s: moved to %s", join_path(old_parts), uri)
        self.tree.invalidate(join_path(old_parts[:-1]))
        self.tree.invalidate(join_path(old_parts[:-2]))
        self.tree.invalidate(join_path(new_parts[:-1]))


def _archive_type(name: str) -> str:
    return "application/zip" if name.lower().endswith(".zip") else "application/x-gzip"


def _subject_label(tree: Any, parts: PathParts) -> str:
    """The label of the subject in ``P/subjects/S/experiments/...``."""
    subject = tree.lookup(join_path(parts[:3]))
    return subject.attrs.get("label") or unescape_name(parts[2])
