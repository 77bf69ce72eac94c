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
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple, TypeVar

from xnatfs.cache.download import DISK_FULL
from xnatfs.tree.local import AlreadyReported, LocalFile, is_temporary, target_uri
from xnatfs.tree.nodes import Kind, NodeInfo
from xnatfs.tree.overlay import LocalOverlay
from xnatfs.tree.paths import join_path, split_path
from xnatfs.uploads import Journal, Spool, SpoolFile, Uploader
from xnatfs.uploads.checks import SharedChecks
from xnatfs.uploads.journal import DONE, FAILED, PENDING, Entry
from xnatfs.uploads.retry import classify
from xnatfs.xnat.errors import XnatError, unanswered

log = logging.getLogger(__name__)

#: Keep the listing the upload's check fetched (it shows the new file with its size and MD5)
#: as the folder's listing, in place of dropping it for the next lookup to fetch again:
#: one request less per file written (RESULTS.md, "Small files").  False: the old way.
KEEP_VERIFY_LISTING = True
#: Uploads to one resource whose checks come while a check's listing is under way share the
#: next listing (``uploads.checks.SharedChecks``): one request for all of them, never one that
#: began before their PUTs returned.  False: a listing per check.
SHARE_CHECKS = True


#: room a close asks of the cache when the journal meets a full disk: its sidecar (a few KiB)
_JOURNAL_ROOM = 1 << 20

_T = TypeVar("_T")

#: words of a refused connection: nothing was sent (urllib3's and the client's texts)
_NOT_CONNECTED = (
    "no connection within",
    "Failed to establish a new connection",
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
)


def _import_not_taken(exc: BaseException) -> bool:
    """Does the failure of an import's POST say XNAT did not take the archive?  An answer
    other than 500/502/504 (a 4xx refusal, a 503 or 429, a login page), no usable
    credentials, or no connection at all.  Anything else (a timeout, a connection broken
    after the body went, XNAT's 500, a proxy's 502/504) leaves it unknown."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "CredentialsError" in names:
        return True
    status = getattr(exc, "status", None)
    if "XnatError" in names and isinstance(status, int):
        return status not in (500, 502, 504)
    return "Unreachable" in names and any(w in str(exc) for w in _NOT_CONNECTED)


class ImportUnsure(OSError):
    """An import's POST may have reached XNAT, and its answer was lost: not sent again (a
    second POST makes a second session).  Kept as failed (``retryable`` False) with what is
    known, for the user to check; ETIMEDOUT after a timeout, else EIO."""

    retryable = False

    def __init__(
        self,
        entry: Entry,
        why: str,
        sent_at: float,
        found: Optional[List[str]],
        cause: Optional[BaseException] = None,
    ) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sent_at))
        if found is None:
            seen = "whether XNAT made a session could not be looked up"
        elif found:
            seen = f"XNAT lists there since then: {', '.join(found)}"
        else:
            seen = "XNAT lists no session there since then (yet)"
        timed_out = cause is not None and "XnatTimeout" in {c.__name__ for c in type(cause).__mro__}
        super().__init__(
            errno.ETIMEDOUT if timed_out else errno.EIO,
            f"import sent at {when}, its answer lost ({why}); XNAT may have imported it, so "
            f"it is not sent again (a second import makes a second session); {seen}. "
            "Check there; to import it again copy it out, rm it here and copy it in again",
            entry.path,
        )


class NotReplaced(OSError):
    """Another XNAT client stored the file since this mount's earlier version of it:
    replacing it needs --allow-delete.  Permanent (``retryable`` False): kept as failed."""

    retryable = False

    def __init__(self, entry: Entry) -> None:
        super().__init__(
            errno.EEXIST,
            "another XNAT client stored this file since this mount wrote it: not replaced "
            "(replacing another's file needs --allow-delete); kept as failed",
            entry.path,
        )


class ChangedOnXnat(OSError):
    """A lost update refused (with --allow-delete): another XNAT client stored other bytes at
    the name since the user's change began (opened, truncated, renamed over).  Overwriting
    them would destroy that client's version unseen; the user's bytes stay in the journal as
    failed (``retryable`` False) for the user to decide."""

    retryable = False

    def __init__(self, entry: Entry, url: str, found: str, expected: str) -> None:
        super().__init__(
            errno.EEXIST,
            f"another XNAT client changed this file since it was opened here: {url} holds "
            f"MD5 {found}, not {expected} (what this version was made over); not "
            "overwritten, your version is kept as failed (xnatfs status). To replace "
            "XNAT's: copy yours out of the mount, rm it here (XNAT's shows again), copy "
            "yours back in",
            entry.path,
        )


def entry_md5(entry: Entry) -> str:
    """The MD5 of a journal entry's bytes (hashed here when no attempt hashed them yet: an
    earlier attempt of these bytes may have landed)."""
    if entry.md5:
        return entry.md5
    md5 = hashlib.md5(usedforsecurity=False)
    with open(entry.data_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
    return md5.hexdigest()


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

    def _with_room(self, action: Callable[[], _T], need: int) -> _T:
        """``action()`` (a write into the spool or the journal), once more after the content
        cache evicted cached files when it met a full disk (ENOSPC, EDQUOT) and something
        was evicted: one eviction pass, then the errno.  ``action`` must leave nothing
        behind when it fails (``SpoolFile.write`` undoes itself, ``Journal.add`` makes no
        entry and leaves the bytes in the spool), so trying it again is safe.  Cached
        files are copies of XNAT's; the spool and journal hold the only copy of what users
        wrote, and nothing in them is evicted (``ContentCache.make_room_for_write``)."""
        try:
            return action()
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            make_room = getattr(getattr(self.tree, "content", None), "make_room_for_write", None)
            if make_room is None or not make_room(self.spool.directory, need):
                raise
        return action()

    def _room_for_journal(self, need: int) -> bool:
        """The uploader's ``make_room``: a failed attempt's journal record met a full disk;
        the content cache evicts cached files as for a user's write (``_with_room``)."""
        make_room = getattr(getattr(self.tree, "content", None), "make_room_for_write", None)
        return make_room is not None and bool(make_room(self.journal.directory, need))

    def _commit(self, lf: LocalFile, upload: bool = True) -> None:
        """close()/fsync(): put the bytes in the journal, then upload them now; with nothing
        new to put there, the version still pending in the journal (``_unconfirmed``).

        Returns once XNAT confirmed them; on failure raises the error (the caller answers its
        errno) with the bytes safe in the journal and a retry scheduled.  The journal step
        holds ``lf.io`` (a write or read by another handle waits for it); the upload does not.
        """
        with lf.holding(self.fs_timeout):
            entry = self._to_journal(lf, ask=upload)
            if entry is None and upload:
                entry = self._unconfirmed(lf)
        if entry is None or not upload:
            return
        if is_temporary(lf.parts[-1]):
            # rsync and editors rename their temporary file right after closing it: upload
            # under the final name then, not twice
            self.uploader.submit(entry, delay=self.temp_delay)
            return
        self._upload_now(lf, entry)

    def _unconfirmed(self, lf: LocalFile) -> Optional[Entry]:
        """The version of ``lf`` that is in the journal and not confirmed by XNAT, for a
        close()/fsync() with nothing new to commit to upload now; None when XNAT has it (or
        a temporary name's upload waits for its rename, as at its first close).  A version
        refused for good (``failed``) is not sent again: its refusal is answered again, the
        error a close() got (EEXIST, EACCES...; EIO with its recorded error when the refusal
        came in a background retry).  Before, a second fsync (a program retrying after EIO,
        ``sync FILE``) or the close after a failed fsync answered 0 with the bytes only in
        the journal (fsyncgate).  Caller holds ``lf.io``."""
        entry = lf.entry
        if entry is None or lf.removed or is_temporary(lf.parts[-1]):
            return None
        current = self.journal.get(entry.id)
        if current is None:
            return None  # confirmed meanwhile
        if current.state == FAILED:
            if lf.refusal is not None:
                raise lf.refusal.with_traceback(None)
            raise OSError(
                errno.EIO,
                f"refused for good, kept as failed (xnatfs status): {current.last_error}",
                join_path(lf.parts),
            )
        return current

    def _to_journal(self, lf: LocalFile, ask: bool = True) -> Optional[Entry]:
        """The journal entry now holding ``lf``'s bytes, or None when there is nothing to
        upload.  Caller holds ``lf.io``.  ``ask``: XNAT may be asked whether it holds the
        bytes already (``_held_by_xnat``); not at unmount, where they are journalled.

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
            same = self._spool_same(lf.spool, lf.replaces)
            if same and ask and self._held_by_xnat(lf, lf.replaces, path):
                # what rsync, cp and make do when nothing changed: no upload, and no
                # --allow-delete needed since nothing is destroyed; the write's time sticks
                lf.dirty = False
                with self._lock:  # XNAT's row, as an upload's (a later utimens: set_mtime)
                    lf.landed = lf.replaces.record
                self._keep_landed_time(lf)
                log.info("write %s: the same bytes as on XNAT: nothing uploaded", path)
                return None
            # the bytes as opened but not XNAT's now (a version of this mount's, or another
            # client's, stored since; or it could not be asked): journalled, also without
            # --allow-delete, since the upload replaces only those bytes (_check_replaces)
            if not same and not self.allow_delete:
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
        spool = lf.spool
        entry = self._with_room(
            lambda: self.journal.add(spool, lf.target, path, digest=False, mtime_ns=lf.mtime_ns),
            _JOURNAL_ROOM,
        )
        with self._lock:
            lf.spool = None
            lf.entry = entry
            lf.refusal = None
            lf.dirty = False
            lf.state = PENDING
        return entry

    def _held_by_xnat(self, lf: LocalFile, node: NodeInfo, path: str) -> bool:
        """Does XNAT hold now the bytes ``lf`` had at open (``node``: its size and MD5, which
        the spool has)?  One listing, shared with the uploads' checks of the resource.
        Before, the file as opened was taken for XNAT's: after a version of this mount's was
        confirmed (fsync) or while one was pending (a close that failed), writing the
        original bytes back uploaded nothing and XNAT kept, or got once the pending one
        landed, the bytes the user had replaced; after another client stored other bytes,
        close() answered 0 and the user's bytes were nowhere.

        The versions of ``lf`` still in the journal are older than these bytes: when XNAT
        holds them, they leave it (as a confirmed version drops the older ones,
        ``Uploader._succeeded``), held against their attempts (``Uploader.held``), so none
        lands after the look.  False when XNAT lists other bytes or cannot be asked: then the
        bytes are journalled and the upload's own check decides.  Caller holds ``lf.io``.

        Crash ordering: the versions leave the journal as one step (``Journal.remove_all``:
        a tombstone naming them, written atomically, then each removal).  A kill -9 before
        the tombstone is on disk leaves every version, as before this close (which has not
        answered): the newest still goes.  After it, the next mount drops every version it
        names: none lands.  Before, they were removed one by one, oldest first: a kill in
        between left the later ones, and the next mount uploaded them over the bytes the
        user had put back, the close's decision half made."""
        versions = self.journal.versions_for(path)
        held: ContextManager[Optional[Entry]] = (
            self.uploader.held(versions[-1], time.monotonic() + self.fs_timeout)
            if versions
            else nullcontext(None)
        )
        target = lf.target
        try:
            with held:
                if not any(
                    f.path == target.relpath and f.size == node.size and f.digest == node.digest
                    for f in self._listing_now(target.resource_uri)[1]
                ):
                    return False
                older = self.journal.versions_for(path)
                for gone in older:
                    log.info("write %s: dropping older version %s (superseded)", path, gone.id)
                self.journal.remove_all(older)  # one step, whatever the crash
        except (OSError, XnatError) as exc:
            log.info("write %s: XNAT's copy not checked (%s): the bytes are journalled", path, exc)
            return False
        with self._lock:
            lf.entry = None
            lf.older_landed = False  # XNAT holds this close's bytes: none older is shown
        return True

    def _listing_now(self, uri: str) -> Tuple[int, List[Any]]:
        """(the listing cache's mark right before the request, the files of resource ``uri``)
        as listed by a request begun after this call; the uploads' checks of one resource
        that end together share it (``SharedChecks``)."""

        def listing() -> Tuple[int, List[Any]]:
            # the mark right before the request: a change after it wins
            return self.tree.meta.mark(), self.client.list_files(uri)

        if not SHARE_CHECKS:
            return listing()
        what = f"GET {self.client.base_url}{uri}/files?format=json"
        since, files = self._checks.fetch(uri, listing, what)
        return since, list(files)

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
                # answered again by a later close()/fsync() (``_unconfirmed``)
                lf.refusal = None if retry else exc
            if lf.moving_from:
                # the rename drops this copy again (``Namespace._upload_copy``): "kept in the
                # journal" was a lie there, the new name never came
                log.info(
                    "mv %s %s: not moved (the old name stays%s)",
                    lf.moving_from,
                    path,
                    "; XNAT may have the copy under the new name too" if unanswered(exc) else "",
                )
            else:
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
                if target.overwrite and (target.replaces_md5 or target.base_md5s):
                    self._check_replaces(entry, target)
                self.client.upload_file(
                    target.resource_uri, target.relpath, fh, entry.size, overwrite=target.overwrite
                )
            elif target is not None and target.is_import:
                uris = self._import(entry, target, fh)
                self._imported[entry.id] = uris
                log.info("import %s: %s", entry.path, ", ".join(uris))
            else:
                raise OSError(errno.EINVAL, f"unknown upload target {target!r}", entry.path)

    def _check_replaces(self, entry: Entry, target: Any) -> None:
        """Before a version replaces a file: XNAT must hold what the user's change was made
        over (``target.base_md5s``: the file as opened, truncated or renamed over), the
        mount's own earlier version (``target.replaces_md5``), these bytes, or nothing there.
        Another client's file stored meanwhile is not replaced: without --allow-delete as
        XNAT refuses a new file over it (``NotReplaced``), with it as a lost update
        (``ChangedOnXnat``); both EEXIST, kept as failed.  Before, with --allow-delete the
        PUT overwrote whatever XNAT held when it landed, and nobody was told.  XNAT has no
        conditional PUT (no ETag, no If-Match: docs/XNAT-API.md): this narrows the window
        to one request."""
        chain = [d for d in (*target.base_md5s, target.replaces_md5) if d]  # oldest first
        known = set(chain)
        for f in self.client.list_files(target.resource_uri):
            if f.path != target.relpath:
                continue
            if not f.digest or f.digest in known or f.digest == entry_md5(entry):
                return
            if not self.allow_delete:
                raise NotReplaced(entry)
            if target.listing:  # it lists the old file: once the user's is gone, XNAT's shows
                self.tree.invalidate(join_path(target.listing))
            url = f"{self.client.base_url}{target_uri(target)}"
            # one bounded line: the newest (a log's chain of pending versions may be long)
            expected = chain[-1] + (f" or {len(chain) - 1} earlier" if len(chain) > 1 else "")
            raise ChangedOnXnat(entry, url, f.digest, expected)

    def _import(self, entry: Entry, target: Any, fh: Any) -> List[str]:
        """POST the archive to XNAT's import service, never twice while an answer is unknown.

        XNAT's import has no idempotent form (``Importer.java``: no request key; docs/XNAT-
        API.md §6): each POST it takes makes sessions, and a second one of the same archive
        makes a second session (a second prearchive folder, or a CONFLICT entry beside the
        archived one).  Before, a POST whose answer was lost (a timeout, a dropped
        connection, a proxy's 502/504, or the mount killed meanwhile) was sent again by the
        retries, and XNAT held the session twice.  Now the journal records each POST before
        its first byte (``Journal.mark_sent``); one whose answer did not say "not taken" is
        not sent again: the entry is kept as failed with a message saying what is known
        (``ImportUnsure``: the sessions XNAT lists there since), for the user to check."""
        recorded = self.journal.get(entry.id) or entry
        if recorded.sent_at:
            raise ImportUnsure(
                entry,
                "the mount stopped before XNAT's answer came (a crash or kill)",
                recorded.sent_at,
                self._sessions_since(target, recorded.sent_at),
            )
        sent_at = time.time()
        # durable before the first byte goes; a full disk makes room as a write does
        self._with_room(lambda: self.journal.mark_sent(entry.id, sent_at), _JOURNAL_ROOM)
        try:
            return self.client.import_archive(
                fh,
                entry.size,
                project=target.project,
                subject=target.subject,
                dest=target.dest or None,
                content_type=target.content_type,
            )
        except Exception as exc:
            if not _import_not_taken(exc):
                raise ImportUnsure(
                    entry, str(exc), sent_at, self._sessions_since(target, sent_at), exc
                ) from exc
            try:  # XNAT said it did not take it: a retry may send it again
                self.journal.mark_sent(entry.id, 0.0)
            except (KeyError, OSError):
                pass  # the next attempt then reports it as unknown: never sent twice
            raise

    def _sessions_since(self, target: Any, since: float) -> Optional[List[str]]:
        """URIs of the sessions XNAT lists at an import's destination as made or changed
        since ``since`` (less a margin for the server's clock); None if it cannot say."""
        try:
            if target.dest.startswith("/prearchive"):
                rows: List[Any] = list(self.client.list_prearchive(target.project))
            elif target.subject:
                rows = list(self.client.list_experiments(target.project, target.subject))
            else:
                return None
        except Exception as exc:  # noqa: BLE001 - only the hint is lost
            log.debug("import: the destination's listing failed: %s", exc)
            return None
        return sorted(r.uri for r in rows if r.mtime is not None and r.mtime >= since - 120)

    def _verify(self, entry: Entry, sent: bool) -> bool:
        """The uploader's ``verify``: does XNAT list ``entry``'s bytes at its target
        (``_shows``)?  ``sent``: a PUT of them has just returned; else a yes drops the entry
        unsent (an earlier attempt landed)."""
        target = entry.target
        if target is None or not target.is_file:  # an import has no listing to check
            return entry.id in self._imported
        since, files = self._listing_now(target.resource_uri)
        for f in files:
            if f.path == target.relpath:
                ok = self._shows(entry, f, sent)
                if ok:
                    self._landed(entry, f)
                    if KEEP_VERIFY_LISTING:
                        # the folder's listing once the uploader says DONE (_on_change)
                        with self._lock:
                            self._verified[entry.id] = (since, files)
                return ok
        return False

    def _shows(self, entry: Entry, listed: Any, sent: bool) -> bool:
        """Is the listing row ``listed`` the file of ``entry``'s bytes?  The same size and
        MD5; a row without an MD5 (checksums off, §1.8) has only its size to say it:

        - after a PUT of these bytes returned (``sent``): XNAT accepted them just now, and
          the size is taken;
        - before sending again, over a file (``overwrite``): it may be the file they
          replace; no, and they are sent again (the same bytes twice change nothing);
        - before sending again, a new file: sent again it would be refused as a duplicate
          if an earlier attempt landed, and kept as failed; XNAT's bytes are hashed (a
          download) and compared, so another client's file of that size is not taken for
          the user's either.

        Before, a row without an MD5 and of the right size said yes before sending too: a
        same-size change retried (or resumed at the next mount) was taken for landed and
        dropped unsent, XNAT keeping the bytes it replaced (README: such files "count as
        other bytes")."""
        if listed.size != entry.size:
            return False
        if listed.digest:
            return bool(listed.digest == entry.md5)
        if sent:
            return True
        target = entry.target
        if target is None or target.overwrite:
            return False
        md5 = hashlib.md5(usedforsecurity=False)
        self.client.download(target_uri(target), md5.update)
        return md5.hexdigest() == entry_md5(entry)

    # ------------------------------------------------------------------ times (issue 15)
    def _landed(self, entry: Entry, listed: Any) -> None:
        """XNAT has the bytes of ``entry`` as the listing row ``listed``: the time the file
        showed while local (its last write, or what ``utimens`` set) sticks to it, so that
        ``make`` and ``rsync -t`` see the time they expect, not the object's.  The file's
        overlay entry keeps the MD5 confirmed (``LocalFile.uploaded_md5``) and the row (a
        time set while it is still open goes there too: ``set_mtime``), or, when a newer
        version of it still waits, that an older one is on XNAT (``LocalFile.older_landed``).
        These are set here, in the attempt, before the uploader lets the path go: an rm or
        rename waiting for it (``Uploader.held``) sees them when its wait ends."""
        # the journal's record, not the uploader's copy: a utimens may have come since
        recorded = self.journal.get(entry.id) or entry
        with self._lock:
            lf = self._files.get(split_path(entry.path))
            mine = lf is not None and lf.entry is not None and lf.entry.id == entry.id
            if mine and lf is not None:
                # known before the journal lets go of its copy (``_confirmed_size``)
                lf.uploaded_md5 = entry.md5 or listed.digest
                # not once written again (``_reopen_spool`` cleared it before this landed): a
                # time set now goes with those newer bytes, not to these (a review finding)
                lf.landed = None if lf.dirty else listed
                lf.older_landed = False
            elif lf is not None and lf.entry is not None and lf.entry.seq > entry.seq:
                lf.older_landed = True
        if mine and lf is not None:
            self._keep_landed_time(lf)
        else:
            self._keep_time(listed, recorded.shown_mtime_ns, getattr(listed, "mtime", None))

    def _keep_landed_time(self, lf: LocalFile) -> None:
        """The time of ``lf`` now, into the times index for the bytes XNAT confirmed
        (``lf.landed``), if it has no newer ones.  Read and written under ``lf.stamping``:
        a ``utimens`` racing the confirmation is the last time written, not overwritten by
        the one ``_landed`` read before it."""
        with lf.stamping:
            with self._lock:
                landed, mtime_ns = lf.landed, lf.mtime_ns
            if landed is not None:
                self._keep_time(landed, mtime_ns, getattr(landed, "mtime", None))

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
        (their times are XNAT's objects').  A pending file's time goes into its journal
        record too (``Journal.set_mtime``): kept in memory only, a restart before the upload
        lost it (``cp -p`` or ``rsync -a`` while XNAT was down).  An open file whose bytes
        XNAT confirmed (an fsync) keeps it in the times index, as the file on XNAT it is:
        before, only in memory, lost at close (open, write, fsync, futimens, close)."""
        parts = split_path(path)
        with self._lock:
            lf = self._files.get(parts)
            if lf is not None:
                lf.mtime_ns = mtime_ns
                entry, landed = lf.entry, lf.landed
        if lf is not None:
            if entry is not None:
                self._record_mtime(lf, entry, mtime_ns)
            if landed is not None:
                self._keep_landed_time(lf)
            return
        node = self.tree.lookup(path)
        if node.kind is Kind.FILE and not node.prearchive and not node.is_dir:
            self._remember_time(node, mtime_ns)

    def _record_mtime(self, lf: LocalFile, entry: Entry, mtime_ns: int) -> None:
        """The time of ``lf`` into its journal record ``entry``.  A record XNAT confirmed
        meanwhile (gone from the journal) needs nothing here: its check (``_landed``) read
        this time, or ``set_mtime`` found ``lf.landed`` and kept it.  Before, this put it in
        the times index under the entry's MD5, which is "" until the upload (nothing kept)
        and which a listing without MD5s never matches.  A failed write (a full disk) keeps
        the time in memory, for this mount, with one line, once a full disk had nothing
        more to evict (``_with_room``; before, the first ENOSPC kept it in memory)."""
        try:
            self._with_room(lambda: self.journal.set_mtime(entry.id, mtime_ns), _JOURNAL_ROOM)
        except KeyError:
            return  # confirmed meanwhile: the time went with the check (docstring)
        except OSError as exc:
            log.warning(
                "utimens %s: the time holds until unmount, not kept in the journal: %s",
                join_path(lf.parts),
                exc,
            )

    def _spool_same(self, spool: SpoolFile, node: NodeInfo) -> bool:
        """Do the spool's bytes have the size and MD5 the listing gives for ``node``?  With
        no digest (checksums off, §1.8) they cannot be told equal without a download: no."""
        if not node.digest or spool.size != node.size:
            return False
        return self._spool_md5(spool) == node.digest

    @staticmethod
    def _spool_md5(spool: SpoolFile) -> str:
        """The MD5 of the spool's bytes as they are now (its size read at the start)."""
        md5 = hashlib.md5(usedforsecurity=False)
        offset, chunk, size = 0, 1 << 20, spool.size
        while offset < size:
            data = spool.read(offset, chunk)
            if not data:
                break
            md5.update(data)
            offset += len(data)
        return md5.hexdigest()

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
