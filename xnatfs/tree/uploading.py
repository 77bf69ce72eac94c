"""The commit and upload path of the write side: a closed (or fsync'ed) file goes into the
upload journal, then to XNAT; the uploader's callbacks (``_put``, ``_verify``, ``_on_change``);
the times a file keeps when it lands (issue 15).

``flush``/``fsync`` return only after XNAT accepted the bytes; when the upload fails the bytes
stay in the journal, visible as pending (``user.xnat.cache_state``), retried with backoff,
resumed after a restart, and the caller gets the errno.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import time
from typing import Any, Dict, List, Optional, Tuple

from xnatfs.tree.local import AlreadyReported, LocalFile, is_temporary
from xnatfs.tree.nodes import Kind, NodeInfo
from xnatfs.tree.overlay import LocalOverlay
from xnatfs.tree.paths import join_path, split_path
from xnatfs.uploads import Journal, Spool, SpoolFile, Uploader
from xnatfs.uploads.checks import SharedChecks
from xnatfs.uploads.journal import DONE, FAILED, PENDING, Entry
from xnatfs.uploads.retry import classify

log = logging.getLogger(__name__)

#: Keep the listing the upload's check fetched (it shows the new file with its size and MD5)
#: as the folder's listing, in place of dropping it for the next lookup to fetch again:
#: one request less per file written (RESULTS.md, "Small files").  False: the old way.
KEEP_VERIFY_LISTING = True
#: Uploads to one resource whose checks come while a check's listing is under way share the
#: next listing (``uploads.checks.SharedChecks``): one request for all of them, never one that
#: began before their PUTs returned.  False: a listing per check.
SHARE_CHECKS = True


class UploadPath(LocalOverlay):
    """Commit to the journal, upload, and follow the uploader's changes of an entry."""

    tree: Any
    client: Any
    allow_delete: bool
    fs_timeout: float
    temp_delay: float
    spool: Spool
    journal: Journal
    uploader: Uploader
    #: import entries the server accepted (import has nothing to list-verify against)
    _imported: Dict[str, List[str]]
    #: entry id -> (the listing cache's mark before the check's request, the files it
    #: listed), from a check that confirmed the entry until ``_on_change`` uses it
    _verified: Dict[str, Tuple[int, List[Any]]]
    #: the checks' listings, shared by checks of one resource that come together
    _checks: SharedChecks

    def _commit(self, lf: LocalFile, upload: bool = True) -> None:
        """close()/fsync(): put the bytes in the journal, then upload them now.

        Returns once XNAT confirmed them; on failure raises the error (the caller answers its
        errno) with the bytes safe in the journal and a retry scheduled.  The journal step
        holds ``lf.io`` (a write or read by another handle waits for it); the upload does not.
        """
        with lf.holding(self.fs_timeout):
            entry = self._to_journal(lf)
        if entry is None or not upload:
            return
        if is_temporary(lf.parts[-1]):
            # rsync and editors rename their temporary file right after closing it: upload
            # under the final name then, not twice
            self.uploader.submit(entry, delay=self.temp_delay)
            return
        self._upload_now(lf, entry)

    def _to_journal(self, lf: LocalFile) -> Optional[Entry]:
        """The journal entry now holding ``lf``'s bytes, or None when there is nothing to
        upload.  Caller holds ``lf.io``.

        Long because: the checks before the journal (earlier error, emptied, same bytes,
        --allow-delete, empty) and the journal step must stay in this order, in one place.
        """
        path = join_path(lf.parts)
        if lf.removed:  # unlinked or renamed over while open: its bytes go nowhere
            lf.dirty = False
            log.info("write %s: removed while open: not uploaded", path)
            return None
        if lf.write_error:
            raise AlreadyReported(lf.write_error, "an earlier write failed: not uploaded", path)
        if not lf.dirty or lf.spool is None:
            return None
        if lf.spool.size == 0 and lf.target.overwrite:
            # opened with O_TRUNC (or truncated) and closed empty: XNAT cannot store an empty
            # file and still holds the old bytes; say so, never succeed silently (issue 17 §8).
            # Not sticky: a shell's `cmd > file` closes its first descriptor (after dup2)
            # before cmd writes; a later close with bytes is judged on them.  Still empty at
            # release: the empty local copy is dropped there.
            code = errno.ENOTSUP if self.allow_delete or lf.replaces is None else errno.EACCES
            log.warning(
                "write %s: emptied but XNAT cannot store an empty file: %s, the "
                "old bytes stay on XNAT",
                path,
                errno.errorcode[code],
            )
            raise OSError(
                code, "XNAT cannot store an empty file: the file on XNAT keeps its old bytes", path
            )
        if lf.replaces is not None:
            if self._spool_same(lf.spool, lf.replaces):
                # what rsync, cp and make do when nothing changed: no upload, and no
                # --allow-delete needed since nothing is destroyed; the write's time sticks
                lf.dirty = False
                self._remember_time(lf.replaces, lf.mtime_ns)
                log.info("write %s: the same bytes as on XNAT: nothing uploaded", path)
                return None
            if not self.allow_delete:
                lf.write_error = errno.EACCES
                raise OSError(
                    errno.EACCES,
                    "replacing a file on XNAT with other bytes needs "
                    "--allow-delete; XNAT keeps its copy",
                    path,
                )
        if lf.spool.size == 0:
            # XNAT refuses empty uploads (§4.5): nothing to store, nothing to lose
            log.info("write %s: empty file not uploaded (XNAT cannot store empty files)", path)
            lf.dirty = False
            return None
        entry = self.journal.add(lf.spool, lf.target, path, digest=False)
        with self._lock:
            lf.spool = None
            lf.entry = entry
            lf.dirty = False
            lf.state = PENDING
        return entry

    def _upload_now(self, lf: LocalFile, entry: Entry) -> None:
        path = join_path(lf.parts)
        try:
            self.uploader.upload_now(entry, time.monotonic() + self.fs_timeout)
        except Exception as exc:
            # the same table as the uploader's (uploads/retry.py); the ERROR line with the
            # errno is the _op wrapper's (one line per failure), this one says what happens next
            retry = classify(exc).retry
            with self._lock:
                lf.state = PENDING if retry else FAILED
            log.info(
                "upload %s: kept in the journal, %s",
                path,
                "retried in the background until XNAT has it"
                if retry
                else "not retryable: kept as failed",
            )
            raise

    # ------------------------------------------------------------------ uploader callbacks
    def _put(self, entry: Entry) -> None:
        target = entry.target
        with open(entry.data_path, "rb") as fh:
            if target is not None and target.is_file:
                self.client.upload_file(
                    target.resource_uri, target.relpath, fh, entry.size, overwrite=target.overwrite
                )
            elif target is not None and target.is_import:
                uris = self.client.import_archive(
                    fh,
                    entry.size,
                    project=target.project,
                    subject=target.subject,
                    dest=target.dest or None,
                    content_type=target.content_type,
                )
                self._imported[entry.id] = uris
                log.info("import %s: %s", entry.path, ", ".join(uris))
            else:
                raise OSError(errno.EINVAL, f"unknown upload target {target!r}", entry.path)

    def _verify(self, entry: Entry) -> bool:
        target = entry.target
        if target is None or not target.is_file:  # an import has no listing to check
            return entry.id in self._imported
        uri = target.resource_uri

        def listing() -> Tuple[int, List[Any]]:
            # the listing cache's mark right before the request: a change after it wins
            return self.tree.meta.mark(), self.client.list_files(uri)

        if SHARE_CHECKS:  # one listing for the uploads to this resource that end together
            since, files = self._checks.fetch(uri, listing)
        else:
            since, files = listing()
        for f in files:
            if f.path == target.relpath:
                ok = f.size == entry.size and (not f.digest or f.digest == entry.md5)
                if ok:
                    self._landed(entry, f)
                    if KEEP_VERIFY_LISTING:
                        # the folder's listing once the uploader says DONE (_on_change)
                        with self._lock:
                            self._verified[entry.id] = (since, files)
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
        self._keep_time(listed, mtime_ns, getattr(listed, "mtime", None))

    def _remember_time(self, node: NodeInfo, mtime_ns: int) -> None:
        self._keep_time(node, mtime_ns, getattr(node.record, "mtime", None))

    def _keep_time(self, obj: Any, mtime_ns: int, listed: Optional[float]) -> None:
        """``obj`` (a listing row or a node: uri, size, digest) shows ``mtime_ns`` in the
        cache's times index, next to the time XNAT lists for it (``listed``, 0 if none)."""
        times = getattr(self.tree, "times", None)
        if times is not None:
            times.set(obj.uri, obj.size, obj.digest, mtime_ns, listed=listed or 0.0)

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
        listing = entry.target.listing if entry.target is not None else ()
        with self._lock:
            lf = self._files.get(parts)
            if lf is not None and lf.entry is not None and lf.entry.id == entry.id:
                if entry.state == DONE:
                    lf.uploaded_size = entry.size
                    lf.entry = None
                    self._locked_forget_dirs(parts)
                    if lf.handles == 0 and lf.spool is None:
                        self._locked_drop(parts)
                else:
                    lf.entry = entry
                    lf.state = entry.state
        with self._lock:
            verified = self._verified.pop(entry.id, None)
        if entry.state == DONE and listing:
            if verified is None:
                self.tree.invalidate(join_path(listing))
            else:
                # the check's listing shows the file: the next lookup in the folder (tar's
                # next name, its utimens) is answered from it, not from one more request
                since, files = verified
                self.tree.refresh(
                    join_path(listing),
                    lambda node: self.tree.xnat.files_listing(node, files),
                    since,
                )
