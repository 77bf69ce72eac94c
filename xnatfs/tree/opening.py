"""Opening files for writing: ``create``, ``open_write``, ``truncate``, and where a path's
bytes go on XNAT (``UploadTarget``: a file in a resource, or an archive import)."""

from __future__ import annotations

import errno
import logging
from dataclasses import replace

from xnatfs.tree.handles import HandleOps, WriteHandle
from xnatfs.tree.local import ARCHIVE_SUFFIXES, LocalFile
from xnatfs.tree.nodes import Kind, NodeInfo
from xnatfs.tree.paths import PathParts, check_write_name, join_path, split_path
from xnatfs.uploads import UploadTarget

log = logging.getLogger(__name__)


class Opening(HandleOps):
    """Files opened for writing, and the upload target of each."""

    def create(self, path: str, truncate: bool = True, exclusive: bool = False) -> WriteHandle:
        """A new file at ``path``.  The kernel asks for a name it believes missing, which may
        exist by now (its negative entry lasts up to 10 s, and another XNAT client may have
        stored the name): then it is opened as the open's flags say (``truncate``: O_TRUNC;
        ``exclusive``: O_EXCL, EEXIST).  Truncated always, `echo x >> log` replaced the
        other client's log with one line, and O_EXCL (lock files, mktemp) did not hold."""
        parts = split_path(path)
        check_write_name(parts[-1], path)  # before any request (issue 17 §3)
        parent = self.tree.lookup(join_path(parts[:-1]))
        try:
            existing = self.tree.lookup(path)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if existing.is_dir:
                raise OSError(errno.EISDIR, "is a directory", path)
            if exclusive:
                raise OSError(errno.EEXIST, "exists", path)
            return self.open_write(existing, path, truncate=truncate)
        target = self._target_for(parent, parts, path)
        spool = self.spool.create()
        lf = LocalFile(parts, target, spool=spool, handles=1, dirty=False)
        with self._lock:
            old = self._files.get(parts)
            if old is None:
                self._locked_put(lf)
            elif not exclusive:
                old.handles += 1
        if old is not None:
            # made by another open since the look above (two jobs creating one log): that
            # file is opened.  Refused (EBUSY) while the other held it, and replaced once it
            # had closed: the two uploads then met on XNAT (EEXIST, kept as failed)
            spool.discard()
            if exclusive:
                raise OSError(errno.EEXIST, "exists", path)
            return self._joined(old, truncate)
        return WriteHandle(self, lf, changed=True)

    def open_write(self, node: NodeInfo, path: str, truncate: bool) -> WriteHandle:
        parts = split_path(path)
        if isinstance(node.local_file, LocalFile):
            lf = node.local_file
            with self._lock:
                lf.handles += 1
            return self._joined(lf, truncate)
        if node.kind is not Kind.FILE:
            raise OSError(errno.EACCES, "not a writable file", path)
        if not self.allow_delete and not truncate:
            # appending or changing bytes in place: the result differs from what XNAT has
            raise OSError(errno.EACCES, "changing a file on XNAT needs --allow-delete", path)
        parent = self.tree.lookup(join_path(parts[:-1]))
        # what the user's version is made over: an upload that finds other bytes there (another
        # client's, stored meanwhile) does not overwrite them (UploadPath._check_replaces)
        target = replace(
            self._target_for(parent, parts, path),
            overwrite=True,
            base_md5s=(node.digest,) if node.digest else (),
        )
        spool = self.spool.create()
        if not truncate:
            try:
                self._fill_from_server(node, spool, path)
            except BaseException:
                # nothing was written: left on disk, the next mount kept it as a "failed"
                # upload with no name (a spool file left by a crash)
                spool.discard()
                raise
        # without --allow-delete an O_TRUNC open is let through: rewriting the same bytes
        # (cp, make, editors when nothing changed) destroys nothing and uploads nothing;
        # other bytes are refused with EACCES at the first write past the old size, else at
        # close (issue 15 §3)
        lf = LocalFile(parts, target, spool=spool, handles=1, dirty=truncate, replaces=node)
        with self._lock:
            other = self._files.get(parts)
            if other is None:
                self._locked_put(lf)
            else:
                other.handles += 1
        if other is not None:
            # another open made the file local while this one copied XNAT's bytes (two
            # programs opening a log on XNAT to append): one file has one copy.  With two,
            # each uploaded at its close, the last over the first: a line lost, and zeros
            # in its place where the other's append went past the end of its own copy
            spool.discard()
            return self._joined(other, truncate)
        return WriteHandle(self, lf, changed=truncate)

    def _joined(self, lf: LocalFile, truncate: bool) -> WriteHandle:
        """A handle on the local file ``lf``, already counted in ``lf.handles``."""
        if truncate:
            try:
                self._truncate(lf, 0)
            except BaseException:
                # no handle is made: let go of the count, else the file stayed held for
                # the mount's life, its error (ENOSPC) refusing every later version
                self._release(lf, commit=False)
                raise
        return WriteHandle(self, lf, changed=truncate)

    def truncate(self, path: str, length: int) -> None:
        """``truncate`` without a handle (libfuse2's O_TRUNC, ``truncate -s``).

        Shorter than the file: a real replace (the first ``length`` bytes are uploaded).  To
        zero bytes: ENOTSUP, since XNAT cannot store an empty file (§4.5) and answering 0 would
        leave the old bytes on the server behind a success (issue 17 §8).
        """
        node = self.tree.lookup(path)
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory", path)
        if (
            not self.allow_delete
            and not isinstance(node.local_file, LocalFile)
            and node.kind is Kind.FILE
            and length == node.size
        ):
            return  # the same bytes: nothing changes (issue 15 §3)
        if not self.allow_delete and not isinstance(node.local_file, LocalFile):
            raise OSError(errno.EACCES, "truncating a file on XNAT needs --allow-delete", path)
        local = node.local_file if isinstance(node.local_file, LocalFile) else None
        if length == 0 and (
            (self.allow_delete and local is None) or (local is not None and local.target.overwrite)
        ):
            # also a local copy of a file on XNAT (open elsewhere, or uploaded before): this
            # handle's close would not say it while another is open, and that one may never
            log.warning("truncate %s: refused (ENOTSUP): XNAT cannot store an empty file", path)
            raise OSError(
                errno.ENOTSUP,
                "XNAT cannot store an empty file: the file on XNAT is kept (rm it instead)",
                path,
            )
        handle = self.open_write(node, path, truncate=(length == 0))
        try:
            handle.truncate(length)
            if handle.lf.handles <= 1:
                handle.flush()
        finally:
            handle.close()

    def _target_for(self, parent: NodeInfo, parts: PathParts, path: str) -> UploadTarget:
        name = check_write_name(parts[-1], path)
        if parent.kind is Kind.FILES:
            resource_parts = self._files_root(parent, parts[:-1])
            # every folder below files/ is part of the upload URL: each is checked
            relpath = "/".join(check_write_name(p, path) for p in parts[len(resource_parts) :])
            return UploadTarget.file(
                self._resource_uri(parent, resource_parts), relpath, listing=resource_parts
            )
        if parent.kind is Kind.EXPERIMENTS and name.lower().endswith(ARCHIVE_SUFFIXES):
            return UploadTarget.archive_import(
                parent.project,
                "/archive",
                listing=parts[:-1],
                subject=parent.subject,
                content_type=_archive_type(name),
            )
        if parent.kind is Kind.PRE_PROJECT and name.lower().endswith(ARCHIVE_SUFFIXES):
            return UploadTarget.archive_import(
                parent.project,
                f"/prearchive/projects/{parent.project}",
                listing=parts[:-2],
                content_type=_archive_type(name),
            )
        if parent.kind in (Kind.EXPERIMENTS, Kind.PRE_PROJECT):
            raise OSError(
                errno.EPERM,
                "only .zip/.tar.gz/.tgz archives can be written here "
                "(they are imported as sessions)",
                path,
            )
        raise OSError(
            errno.EPERM,
            "XNAT has no place for a file here (files go below .../resources/R/files/)",
            path,
        )

    def _files_root(self, parent: NodeInfo, parent_parts: PathParts) -> PathParts:
        """Path of the ``files`` directory of the resource that holds ``parent``."""
        depth = len(parent.subpath)
        if parent.is_local:  # a local folder: walk up to a real one
            up = parent_parts[:-1]
            while up:
                node = self.tree.lookup(join_path(up))
                if node.kind is Kind.FILES and not node.is_local:
                    return up[: len(up) - len(node.subpath)]
                up = up[:-1]
            raise OSError(errno.EIO, "local folder outside a resource", join_path(parent_parts))
        return parent_parts[: len(parent_parts) - depth]

    def _resource_uri(self, parent: NodeInfo, resource_parts: PathParts) -> str:
        if not parent.is_local:
            return parent.uri
        return self.tree.lookup(join_path(resource_parts)).uri


def _archive_type(name: str) -> str:
    return "application/zip" if name.lower().endswith(".zip") else "application/x-gzip"
