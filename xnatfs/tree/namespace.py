"""Namespace operations of the write side on files: ``unlink`` and ``rename`` (local files,
files on XNAT, prearchive moves); ``mkdir``, ``rmdir`` and the DELETE of a file on XNAT are
``objects.XnatObjects``'s."""

from __future__ import annotations

import errno
import logging
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import replace
from typing import ContextManager, Iterator, List, Optional, Sequence, Tuple

from xnatfs import deadline
from xnatfs.tree import prearchive_moves
from xnatfs.tree.handles import WriteHandle
from xnatfs.tree.local import EMPTY, LocalFile, is_temporary
from xnatfs.tree.nodes import Kind, NodeInfo
from xnatfs.tree.objects import XnatObjects, check_label
from xnatfs.tree.paths import PathParts, check_write_name, join_path, split_path, unescape_name
from xnatfs.tree.uploading import entry_md5
from xnatfs.uploads import Journal, UploadTarget
from xnatfs.uploads.journal import FAILED, Entry
from xnatfs.xnat.errors import NotFound, XnatError

log = logging.getLogger(__name__)

#: largest file on XNAT a rename moves itself (a download, an upload under the new name and
#: a DELETE, all inside the one rename call and its --timeout); a larger one answers EXDEV,
#: and mv copies it with its own progress instead
MOVE_ON_XNAT_MAX = 64 << 20
#: how long a rename waits for the RELEASE of a file just closed and uploaded (the kernel
#: sends it after close() returns): a program that closes then renames (Python's
#: RotatingFileHandler) must not meet its own file still "open"
RELEASE_WAIT_S = 0.5
#: looks at the new name a rename makes before it gives up (EBUSY): it looks again when a
#: local file is made or dropped there between its look and its lock
_RENAME_TRIES = 5


def _half_moved(old: str, new: str, exc: BaseException) -> BaseException:
    """The error of a move whose copy landed and whose DELETE of the old name failed: the
    DELETE's own (its errno, URL and status), saying where the bytes are.  Before, it was
    the bare DELETE error: the user learnt the rename failed, not that the new name held
    the file (and, after a lost answer, that the old one might be gone)."""
    what = (
        f"the file was copied to {new} on XNAT first, then deleting this name failed: "
        f"{new} holds it; this name may still be there too (rm it to finish the move)"
    )
    if isinstance(exc, XnatError):
        told = type(exc)(
            exc.method,
            exc.url,
            exc.status,
            f"{exc.message}; {what}" if exc.message else what,
            retry_after=exc.retry_after,
        )
        told.reported = False  # the breaker's "down" line is not this rename's
        return told
    code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
    return OSError(code, f"{exc}; {what}", old)


def _same_bytes(a: NodeInfo, b: NodeInfo) -> bool:
    return bool(a.digest) and a.digest == b.digest and a.size == b.size


def _made_over(existing: NodeInfo, journal: Journal) -> Tuple[str, ...]:
    """The MD5s a version renamed over ``existing`` is made over (``UploadTarget.
    base_md5s``): XNAT's file's; for a local file there, what that one was made over and
    each of its versions (any may be on XNAT by the time this one lands).  () when one
    of them is not known (no MD5 listed, a version confirmed and gone): no check then,
    rather than refusing a version because the mount forgot what it replaced."""
    local = existing.local_file
    if not isinstance(local, LocalFile):
        return (existing.digest,) if existing.digest else ()
    if local.uploaded_size or (local.replaces is not None and not local.replaces.digest):
        return ()
    digests = [*local.target.base_md5s, local.target.replaces_md5]
    if local.replaces is not None:
        digests.append(local.replaces.digest)
    try:
        versions = journal.versions_for(join_path(local.parts))
        digests += [entry_md5(v) for v in versions]
    except OSError:
        return ()
    return tuple(d for d in dict.fromkeys(digests) if d)


def _older_version_landed(path: str, allow_delete: bool, rename: bool = False) -> None:
    """rm (or ``rename``) of a local file one of whose older versions XNAT confirmed while a
    newer one waits (``LocalFile.older_landed``: before the call, or while it waited for
    that upload, ``Uploader.held``): the name is on XNAT now, with bytes the user had
    overwritten.  With --allow-delete the call deletes it there (``_delete_older``), as
    when the newest version itself landed; without, this raises EACCES saying so, and
    nothing is dropped or renamed (the newest version still goes over it).  Before, rm
    dropped the newest version and answered 0, and a rename moved it and answered 0 (EXDEV
    when it landed during its wait): XNAT kept the older bytes under the name."""
    if allow_delete:
        return
    what = "renaming" if rename else "removing"
    raise OSError(
        errno.EACCES,
        "an older version of it reached XNAT (its upload went on in the background): "
        f"{what} it needs --allow-delete to delete it there; the newest version is kept "
        "and still goes to XNAT over it under this name",
        path,
    )


def _next_version_target(
    lf: LocalFile, target: UploadTarget, renamed: Optional[Entry]
) -> UploadTarget:
    """Where the next version of ``lf`` goes once it has the new name (``target``, where its
    ``renamed`` record goes).  Written on since that record was committed (a log that
    logrotate renames while its program writes; not after XNAT refused the record),
    ``lf.target`` describes that next version as ``_reopen_spool`` made it: over the record
    (``replaces_md5``), which lands at the new name first.  Before, the rename gave it the
    plain ``target``: the last close() met its own earlier version there as another client's
    file ("duplicates", EEXIST), the newest bytes were kept as failed and XNAT kept the
    older.  What the old name was made over stays behind (``target.base_md5s`` is the new
    name's).  Not written on since: ``_reopen_spool`` makes it from ``target`` later."""
    if renamed is None or lf.spool is None or renamed.state == FAILED:
        return target
    return replace(target, overwrite=True, replaces_md5=lf.target.replaces_md5)


class Namespace(XnatObjects):
    """unlink and rename over the overlay and XNAT (mkdir, rmdir: ``XnatObjects``)."""

    def unlink(self, path: str) -> None:
        parts = split_path(path)
        with self._lock:
            lf = self._files.get(parts)
        if lf is None:
            self._unlink_remote(path, parts)
        else:
            self._unlink_local(lf, parts, path)

    def _unlink_local(self, lf: LocalFile, parts: PathParts, path: str) -> None:
        """Remove a local file, open or not (as POSIX does: a handle still open keeps its
        bytes until it closes, and they are not uploaded, ``LocalFile.removed``).  A refusal
        as "still open" (EBUSY) failed rm at random just after a close(): the kernel sends
        RELEASE after close() returns, and another thread may serve it after the UNLINK.

        Held against its upload like a rename (``Uploader.held``): dropping the journal entry
        under a running attempt let its PUT land after rm answered 0.  A local version (a
        pending entry, unsaved writes) is what rm drops, and XNAT's copy, if any, shows again
        (README: how to retry a failed file); with none left (all confirmed by XNAT, the
        handle still open) the file is XNAT's and is removed as such (``--allow-delete``)."""
        with lf.holding(self.fs_timeout):
            held = lf.entry
            with self._held(held) as current:
                # older versions of the name go too: left queued, they uploaded after the rm
                older = self._older_versions(current, path)
                confirmed = held is not None and current is None
                if current is not None and self._older_landed(lf):  # before, or meanwhile
                    _older_version_landed(path, self.allow_delete)
                    self._delete_older(lf, path)  # then its local versions go (below)
                local_version = current is not None or lf.dirty
                if (
                    lf.target.is_file
                    and not local_version
                    and (confirmed or lf.uploaded_size or lf.replaces is not None)
                ):
                    if confirmed and lf.target.listing:  # XNAT's row, not a cached one
                        self.tree.invalidate(join_path(lf.target.listing))
                    # one DELETE under lf.io and the held entry: no upload of this file lands
                    # after it
                    self._unlink_remote(path, parts)
                # the older versions before the newest: a crash in between left an older
                # version alone in the journal, and the next mount showed the removed name
                # again with bytes the user had overwritten; now it leaves the name as it
                # was (its newest bytes: the rm not done) or gone
                for gone in older:
                    self.journal.remove(gone)
                self._forget_local(lf, parts, current)

    def _keep_for_open_handles(self, lf: LocalFile, entry: Optional[Entry]) -> None:
        """A file removed (rm, or renamed over) while a descriptor holds it open: that one
        keeps its bytes, as on a local disk, when they are the journal's ``entry`` only (it is
        about to go).  Before, its reads found nothing, or after a write a spool of zeros."""
        if not lf.handles or lf.spool is not None or entry is None:
            return
        try:
            lf.spool = self.spool.create(copy_from=entry.data_path)
        except OSError as exc:  # its reads and writes then answer EIO (_reopen_spool)
            log.warning(
                "rm %s: the open descriptor's copy could not be kept: %s", join_path(lf.parts), exc
            )

    def _forget_local(self, lf: LocalFile, parts: PathParts, current: Optional[Entry]) -> None:
        """``lf`` was removed (unlink, or a rename over it): it leaves the overlay and the
        journal, and a handle still open neither shows nor uploads its bytes.  Caller holds
        ``lf.io`` and ``current`` (``Uploader.held``)."""
        self._keep_for_open_handles(lf, current)
        with self._lock:
            lf.removed = True
            if self._files.get(parts) is lf:
                self._locked_drop(parts)
            if lf.handles == 0 and lf.spool is not None:
                lf.spool.discard()
                lf.spool = None
        if current is not None:
            self.journal.remove(current)

    def rename(self, old: str, new: str) -> None:
        old_parts, new_parts = split_path(old), split_path(new)
        check_write_name(new_parts[-1], new)  # before any request (issue 17 §3)
        node = self.tree.lookup(old)
        new_parent = self.tree.lookup(join_path(new_parts[:-1]))
        if node.kind is Kind.PRE_SESSION and new_parent.kind is Kind.EXPERIMENTS:
            label = unescape_name(new_parts[-1])
            check_label(label, new)
            with self._told_or_expired(join_path(old_parts[:-1]), join_path(new_parts[:-1])):
                prearchive_moves.archive_session(
                    self._prearc(), self.tree, node, new_parent, old, new, label
                )
            return
        if node.kind is Kind.PRE_SESSION and new_parent.kind is Kind.PRE_PROJECT:
            with self._told_or_expired(*map(join_path, (old_parts[:-1], old_parts[:-2]))):
                prearchive_moves.move_session(
                    self._prearc(), self.tree, node, new_parent, old_parts, new_parts, new
                )
            return
        lf = node.local_file if isinstance(node.local_file, LocalFile) else None
        if lf is None and not node.is_local and not self.allow_delete:
            # XNAT has no move (a stored file can only be uploaded or deleted, §4.5), and mv
            # answers EXDEV with copy + remove; the remove would be refused after the copy
            # reached XNAT, leaving both there (a file twice, or a new empty subject): refuse
            # before anything is copied.  Local files and folders (rsync/editor temp files)
            # need no delete on XNAT and rename below (issue 16 §2)
            raise OSError(
                errno.EACCES,
                "moving what is on XNAT is a copy plus a delete: it needs --allow-delete",
                old,
            )
        if lf is not None and self._uploaded_and_closing(lf):
            node = self.tree.lookup(old)  # XNAT's file now, shown from its listing
            lf = node.local_file if isinstance(node.local_file, LocalFile) else None
        if lf is None and new_parent.kind is Kind.FILES and self._in_a_resource(node, old_parts):
            self._move_on_xnat(node, new_parent, old, new)
            return
        if lf is None or new_parent.kind is not Kind.FILES:
            # XNAT cannot move a stored folder or object: mv falls back to copy + unlink
            raise OSError(errno.EXDEV, "XNAT has no rename: copy and remove instead", old)
        self._rename_local(lf, new_parent, old, new)

    def _uploaded_and_closing(self, lf: LocalFile) -> bool:
        """``lf`` is on XNAT with no local version, and its last handle went within
        ``RELEASE_WAIT_S`` (the overlay then lets go of it): a close() then rename() met the
        file still open, since the kernel's RELEASE comes after close() returns.  A handle
        still open after that (a program writing its log) keeps it local: EXDEV as before."""
        if not (self.allow_delete and lf.uploaded_size and lf.entry is None and not lf.dirty):
            return False
        until = time.monotonic() + min(RELEASE_WAIT_S, deadline.left(RELEASE_WAIT_S))
        with self._released:
            while self._files.get(lf.parts) is lf:
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._released.wait(left)
        return True

    def _in_a_resource(self, node: NodeInfo, parts: PathParts) -> bool:
        """A file of a resource (not of the prearchive, not a view's own file)."""
        if node.kind is not Kind.FILE or node.prearchive or not node.uri:
            return False
        return self.tree.lookup(join_path(parts[:-1])).kind is Kind.FILES

    def _move_on_xnat(self, node: NodeInfo, new_parent: NodeInfo, old: str, new: str) -> None:
        """rename() of a file XNAT has (``--allow-delete``): XNAT has no move, so this is its
        bytes (through the cache, checked against the listed MD5) uploaded under the new name,
        then the old name deleted: what mv's EXDEV fallback does, inside the one call, so that
        programs that rename() without a fallback (Python's ``os.rename``, a rotating log)
        work.  Not atomic: a failed upload changes nothing (the new name's local version is
        dropped again); a failed DELETE leaves both names on XNAT, and is the answer, saying
        so (``_half_moved``); an old name gone already is a done move.  Up to
        ``MOVE_ON_XNAT_MAX``; a rename over a local file, or of a larger file, is EXDEV."""
        if split_path(old) == split_path(new):
            return
        if not 0 < node.size <= MOVE_ON_XNAT_MAX:
            # an empty one cannot be uploaded (§4.5): deleting it would lose the name
            raise OSError(errno.EXDEV, "XNAT has no rename: mv copies this one instead", old)
        try:
            existing: Optional[NodeInfo] = self.tree.lookup(new)
        except FileNotFoundError:
            existing = None
        if existing is not None and (existing.is_dir or self.owns(existing)):
            raise OSError(errno.EXDEV, "XNAT has no rename: copy and remove instead", old)
        if existing is None or not _same_bytes(node, existing):
            new_files = self._files_root(new_parent, split_path(new)[:-1])
            with self._told_or_expired(join_path(new_files)):  # an upload without an answer
                self._upload_copy(node, existing, new_parent, old, new)
        try:
            self._unlink_remote(old, split_path(old))
        except (FileNotFoundError, NotFound):
            # another client removed the old name meanwhile (the listing loaded after the
            # upload has it no more, or the DELETE answered 404): the file is at the new name
            # only, which is what the rename was to do.  Before, mv answered ENOENT (a failed
            # move) with the move done, and no line said so
            log.info("mv %s %s: uploaded under the new name; the old was gone already", old, new)
            self.tree.invalidate(join_path(split_path(old)[:-1]))
            return
        except Exception as exc:
            self.tree.invalidate(join_path(split_path(old)[:-1]))  # `ls` shows XNAT's truth
            raise _half_moved(old, new, exc) from exc
        log.info("mv %s %s: moved on XNAT (uploaded under the new name, then deleted)", old, new)

    def _upload_copy(
        self,
        node: NodeInfo,
        existing: Optional[NodeInfo],
        new_parent: NodeInfo,
        old: str,
        new: str,
    ) -> None:
        """``node``'s bytes become the file ``new`` (over ``existing``), uploaded now; the
        file keeps the time ``node`` showed.  On failure nothing is left at ``new``."""
        new_parts = split_path(new)
        target = self._target_for(new_parent, new_parts, new)
        if existing is not None:
            target = replace(target, overwrite=True, base_md5s=_made_over(existing, self.journal))
        spool = self.spool.create()
        try:
            self._fill_from_server(node, spool, old)
        except BaseException as exc:
            spool.discard()
            if isinstance(exc, XnatError):
                # the breaker's "XNAT down" is one line per outage, for reads; a failed
                # rename is a user's change and gets its own line (path, URL, cause)
                exc.reported = False
            raise
        lf = LocalFile(
            new_parts,
            target,
            spool=spool,
            handles=1,
            dirty=True,
            mtime_ns=self.tree.mtime_ns(node),
            moving_from=old,
        )
        with self._lock:
            if new_parts in self._files:  # written meanwhile: not ours to replace
                spool.discard()
                raise OSError(errno.EXDEV, "XNAT has no rename: copy and remove instead", old)
            self._locked_put(lf)
        handle = WriteHandle(self, lf, changed=True)
        try:
            handle.flush()  # the journal, then the upload, as a close() does
        except BaseException:
            handle.changed = False  # its release must not commit (and upload) it after all
            handle.close()
            try:
                # its local version only (a pending record): XNAT's file there, if any, stays
                self.unlink(new)
            except Exception as exc:  # noqa: BLE001 - the upload's error is the answer
                log.warning("mv %s %s: the copy under the new name stays: %s", old, new, exc)
            raise
        handle.close()

    def _rename_local(self, lf: LocalFile, new_parent: NodeInfo, old: str, new: str) -> None:
        """A local file (being written, or pending upload) takes its new name; over a file on
        XNAT it replaces it (with --allow-delete) or, holding the same bytes, just goes."""
        new_parts = split_path(new)
        target = self._target_for(new_parent, new_parts, new)
        for _ in range(_RENAME_TRIES):
            try:
                existing: Optional[NodeInfo] = self.tree.lookup(new)
            except FileNotFoundError:
                existing = None
            other = existing.local_file if existing is not None else None
            replaced = other if isinstance(other, LocalFile) and other is not lf else None
            # under lf.io: a close() of a handle still open (a log renamed by logrotate while
            # its program writes) commits either before, and its entry is renamed here, or
            # after, with the new name; and no upload of the entry runs meanwhile
            # (Uploader.held), so none sends it under the old name after this.  And under the
            # io of the local file renamed over: a close() of it committing in the same
            # instant had looked at its ``removed`` before the move set it, and went on to
            # upload it under the name, newer than the renamed file (EEXIST at its close and
            # a failed record kept, or rsync's record dropped as "superseded")
            with self._holding_both(lf, replaced):
                with self._lock:
                    there = self._files.get(new_parts)
                if there is not replaced and there is not lf:
                    continue  # a local file came or went at the new name meanwhile: again
                if self._same_as_xnat(lf, existing):
                    assert existing is not None
                    self._drop_same_bytes(lf, old, existing)
                    log.info("mv %s %s: the same bytes as on XNAT: nothing uploaded", old, new)
                    return
                entry = self._rename_held(lf, existing, replaced, target, old, new)
            if entry is not None and not is_temporary(new_parts[-1]) and lf.handles == 0:
                self._upload_renamed(lf, entry, old, new)
            return
        raise OSError(errno.EBUSY, "the new name keeps changing under the rename", new)

    @contextmanager
    def _holding_both(self, lf: LocalFile, other: Optional[LocalFile]) -> Iterator[None]:
        """``io`` of ``lf`` and of ``other`` (if any), taken in one order (by id) whoever
        asks, so two renames in opposite directions wait for each other, never deadlock."""
        with ExitStack() as stack:
            for f in sorted([f for f in (lf, other) if f is not None], key=id):
                stack.enter_context(f.holding(self.fs_timeout))
            yield

    def _rename_held(
        self,
        lf: LocalFile,
        existing: Optional[NodeInfo],
        replaced: Optional[LocalFile],
        target: UploadTarget,
        old: str,
        new: str,
    ) -> Optional[Entry]:
        """The rename of ``lf`` to ``new`` (``existing`` there, the local file ``replaced``
        if it is one), returning its renamed journal record.  Caller holds ``lf.io``, and
        ``replaced.io``."""
        target = self._rename_target(existing, target, new)
        if lf.state == EMPTY and target.overwrite:
            # over a file that is, or may be by then, on XNAT (XNAT's, or a local one with a
            # version uploaded or on its way): as emptying it would be (issue 17 §8), never a
            # success that leaves the old bytes on XNAT behind an empty local file
            raise OSError(errno.ENOTSUP, "XNAT cannot store an empty file: XNAT's is kept", new)
        if lf.uploaded_size:
            # XNAT confirmed it under the old name (an fsync, or another handle's close,
            # with this one still open): renaming the local record only would answer 0,
            # show the new name until the last close and then the old one again
            raise self._on_xnat(old, "already uploaded under its old name")
        if lf.replaces is not None:
            # a file on XNAT open for writing (its local copy): moving the copy answered 0,
            # uploaded the new name at close and left the old one on XNAT, a file twice
            raise self._on_xnat(old, "it is on XNAT under its old name")
        held = lf.entry
        # the record of the file renamed over is held too: its close() may upload it right
        # now (committed just before the rename took its io); dropped under that attempt,
        # the attempt failed on a record gone (close() answered EIO) after its PUT landed
        over = replaced.entry if replaced is not None else None
        with self._held(held) as current, self._held(over):
            if held is not None and current is None:
                # its upload under the old name was confirmed while this waited: the
                # file is XNAT's now, and XNAT has no move
                raise self._on_xnat(old, "uploaded under its old name meanwhile")
            older = self._older_versions(current, old)
            if current is not None and self._older_landed(lf):
                # the newest goes to the new name: nothing may stay under the old one.  A
                # crash or failure after the DELETE leaves the rename not done (the newest
                # pending under the old name)
                _older_version_landed(old, self.allow_delete, rename=True)
                self._delete_older(lf, old)
            # older versions of the old name (superseded by the one renamed; left queued
            # they uploaded under the old name), and the versions of what is renamed over:
            # they leave the journal with the renamed record's own write (Journal.renamed),
            # so a crash leaves the rename done or not, never both names
            replaces = older + (self.journal.versions_for(new) if over is not None else [])
            if replaced is not None:  # before its record goes: a descriptor keeps the bytes
                self._keep_for_open_handles(replaced, replaced.entry)
            entry, dropped = self._move_held(lf, current, target, old, new, replaces)
            for gone in replaces + ([dropped.entry] if dropped and dropped.entry else []):
                if self.journal.get(gone.id) is not None:  # no renamed record took it along
                    self.journal.remove(gone)
        return entry

    def _older_landed(self, lf: LocalFile) -> bool:
        with self._lock:
            return lf.older_landed

    def _delete_older(self, lf: LocalFile, path: str) -> None:
        """Delete on XNAT the older version of ``lf`` it confirmed (``_older_version_landed``,
        --allow-delete), under ``lf.io`` and its held entry, as rm does a file of XNAT's; one
        another client removed meanwhile is gone already.  Caller holds both."""
        try:
            self._unlink_remote(path, split_path(path))
        except NotFound:
            log.info("%s: its older version on XNAT was gone already", path)
            if lf.target.listing:
                self.tree.invalidate(join_path(lf.target.listing))
        else:
            log.info("%s: the older version XNAT had confirmed is deleted there", path)
        with self._lock:
            lf.older_landed = False

    def _move_held(
        self,
        lf: LocalFile,
        current: Optional[Entry],
        target: UploadTarget,
        old: str,
        new: str,
        replaces: Sequence[Entry] = (),
    ) -> "tuple[Optional[Entry], Optional[LocalFile]]":
        """The journal's record of ``lf`` (``current``, held) and then the overlay take the
        new name; returns the renamed record and the local file renamed over.  The record
        first: when it cannot be written (a full disk) the rename fails having changed
        nothing; before, the mount showed the new name while the record still uploaded the
        old one, pending for ever.  Caller holds ``lf.io`` and ``current``."""
        old_parts = split_path(old)
        with self._lock:
            if self._files.get(old_parts) is not lf:
                raise OSError(errno.ENOENT, "vanished", old)
        entry = None
        if current is not None:
            entry = self.journal.renamed(current, target, new, supersedes=replaces)
        with self._lock:
            if self._files.get(old_parts) is not lf:
                raise OSError(errno.ENOENT, "vanished", old)
            replaced = self._locked_move(lf, split_path(new), target, entry)
        if replaced is not None:  # its record goes next (the caller): an open handle keeps it
            self._keep_for_open_handles(replaced, replaced.entry)
        return entry, replaced

    def _upload_renamed(self, lf: LocalFile, entry: Entry, old: str, new: str) -> None:
        """Upload a renamed file under its new name now.  A failure is logged, not raised:
        its errno answered a rename that was done (rsync then reported a failed rename of a
        name that was gone); the bytes wait in the journal, shown pending (or failed), as
        after a close() whose upload failed."""
        try:
            self._upload_now(lf, entry)
        except Exception as exc:  # noqa: BLE001 - the rename is done: answered as such
            log.warning("mv %s %s: renamed; its upload failed, kept: %s", old, new, exc)

    def _older_versions(self, entry: Optional[Entry], path: str) -> List[Entry]:
        """The journal's versions of ``path`` older than ``entry`` (none without one)."""
        if entry is None:
            return []
        return [e for e in self.journal.versions_for(path) if e.seq < entry.seq]

    def _rename_target(
        self, existing: Optional[NodeInfo], target: UploadTarget, new: str
    ) -> UploadTarget:
        """Where a renamed local file uploads: with overwrite over a file XNAT has (with
        --allow-delete), and over a local file that is, or may be by then, on XNAT."""
        if existing is None:
            return target
        local = existing.local_file
        if not isinstance(local, LocalFile) or local.replaces is not None:
            # XNAT's file, or XNAT's file open for writing (its local copy, held open: it
            # answered 0 and the upload then met XNAT's file, "duplicates", kept as failed)
            if not self.allow_delete:
                raise OSError(errno.EACCES, "replacing a file on XNAT needs --allow-delete", new)
            return replace(target, overwrite=True, base_md5s=_made_over(existing, self.journal))
        if (
            (local.entry is not None and not self._refused_by_xnat(local.entry))
            or local.uploaded_size
            or (local.target.overwrite and self.allow_delete)
        ):
            # a running or timed-out attempt may put it on XNAT first: without overwrite
            # XNAT answered "duplicates", the newest bytes were kept as failed, the older
            # won.  Not over a record XNAT refused: it never landed, and when the refusal was
            # another client's file there, overwrite replaced that without --allow-delete
            return replace(target, overwrite=True, base_md5s=_made_over(existing, self.journal))
        return target

    def _locked_move(
        self, lf: LocalFile, new_parts: PathParts, target: UploadTarget, entry: Optional[Entry]
    ) -> Optional[LocalFile]:
        """Show ``lf`` under ``new_parts``; the local file it replaces there (returned) is
        removed: a handle still open on it neither shows nor uploads it any more (its close()
        put it back under this name, over the renamed file).  Caller holds _lock."""
        self._locked_drop(lf.parts)
        replaced = self._locked_drop(new_parts)
        if replaced is not None:
            replaced.removed = True
            if replaced.handles == 0 and replaced.spool is not None:
                replaced.spool.discard()
                replaced.spool = None
        lf.parts = new_parts
        lf.target = _next_version_target(lf, target, entry)
        if entry is not None:
            lf.entry = entry
        self._locked_put(lf)
        return replaced

    def _on_xnat(self, old: str, why: str) -> OSError:
        """The error of a rename of a file XNAT has under its old name: XNAT has no move."""
        return OSError(
            errno.EXDEV if self.allow_delete else errno.EACCES,
            f"{why}; moving a file on XNAT is a copy plus a delete",
            old,
        )

    def _held(self, entry: Optional[Entry]) -> ContextManager[Optional[Entry]]:
        if entry is None:
            return nullcontext(None)
        return self.uploader.held(entry, time.monotonic() + self.fs_timeout)

    def _same_as_xnat(self, lf: LocalFile, existing: Optional[NodeInfo]) -> bool:
        """Is ``lf`` a closed, committed file with the bytes of the file XNAT has at
        ``existing`` (rsync's temporary file when nothing changed)?  Caller holds ``lf.io``."""
        return (
            existing is not None
            and not isinstance(existing.local_file, LocalFile)
            and existing.kind is Kind.FILE
            and lf.entry is not None
            and lf.spool is None
            and lf.handles == 0
            and not self._older_landed(lf)  # that one must go from the old name
            and self._entry_same(lf.entry, existing)
        )

    def _drop_same_bytes(self, lf: LocalFile, old: str, existing: NodeInfo) -> None:
        """rsync's temporary file renamed over a file XNAT has with the same bytes: nothing to
        upload or destroy; the temp's time (rsync -t) sticks.  Held against its delayed
        upload (``Uploader.held``), with the older versions of its name: dropped under a
        running attempt, the PUT landed after the rename answered 0, and the temporary name
        stayed on XNAT.  Caller holds ``lf.io``."""
        held = lf.entry
        assert held is not None
        with self._held(held) as current:
            if current is None:
                raise self._on_xnat(old, "uploaded under its old name meanwhile")
            with self._lock:
                if self._files.get(split_path(old)) is lf:
                    self._locked_drop(split_path(old))
                lf.removed = True  # nothing of it is shown or uploaded any more
            for gone in self._older_versions(current, old) + [current]:
                self.journal.remove(gone)
        self._remember_time(existing, lf.mtime_ns)
