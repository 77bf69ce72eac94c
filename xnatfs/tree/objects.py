"""Changes of XNAT's objects the write side makes at once: ``mkdir`` (local folders in
``files/``, XNAT objects elsewhere), ``rmdir``, and the DELETE of a file XNAT has
(``_unlink_remote``, also what ``rm`` and ``mv`` of a local file send when a version of it
reached XNAT).  A request that may have been done without XNAT's answer expires the
listings it changes (``_told_or_expired``)."""

from __future__ import annotations

import errno
import logging
import re
from contextlib import contextmanager
from typing import Any, Iterator

from xnatfs.tree import prearchive_moves
from xnatfs.tree.nodes import Kind, NodeInfo
from xnatfs.tree.opening import Opening
from xnatfs.tree.paths import PathParts, check_write_name, join_path, split_path
from xnatfs.xnat.errors import unanswered

log = logging.getLogger(__name__)

#: labels XNAT accepts for subjects, experiments, resources and scans (§10.17)
_LABEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_label(label: str, path: str) -> None:
    if not _LABEL_RE.match(label):
        raise OSError(errno.EINVAL, "XNAT labels are 1-64 characters of A-Z a-z 0-9 _ -", path)


class XnatObjects(Opening):
    """mkdir and rmdir over the overlay and XNAT, and the DELETE of a file XNAT has."""

    experiment_type: str
    scan_type: str

    @contextmanager
    def _told_or_expired(self, *folders: str) -> Iterator[None]:
        """A request that changes ``folders`` on XNAT: one that fails without XNAT's answer
        (timed out, connection broken) may have been done all the same, so their listings
        are asked for again at the next look (``Engine.expire``).  Before, a mkdir or rm that
        timed out while XNAT did it left the listing as it was for the listing TTL (60 s):
        the new folder missing, the removed file still shown.  Not sent at all (the breaker's
        ``ServerDown``): nothing changed, nothing to ask."""
        try:
            yield
        except Exception as exc:
            # a prearchive move XNAT accepted and did not finish in time: ETIMEDOUT too
            late = isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT
            if late or unanswered(exc):
                for folder in folders:
                    self.tree.expire(folder)
            raise

    def mkdir(self, path: str) -> None:
        parts = split_path(path)
        name = check_write_name(parts[-1], path)  # before any request (issue 17 §3)
        parent = self.tree.lookup(join_path(parts[:-1]))
        try:
            self.tree.lookup(path)
            raise OSError(errno.EEXIST, "exists", path)
        except FileNotFoundError:
            pass  # not there: made below
        if parent.kind is Kind.FILES:
            with self._lock:
                self._dirs.add(parts)
            return
        if parent.kind not in (Kind.SUBJECTS, Kind.EXPERIMENTS, Kind.SCANS, Kind.RESOURCES):
            raise OSError(
                errno.EPERM,
                "XNAT objects are made with mkdir only inside subjects/, "
                "experiments/, scans/, resources/ or files/",
                path,
            )
        check_label(name, path)
        with self._told_or_expired(join_path(parts[:-1])):
            if parent.kind is Kind.SUBJECTS:
                self.client.create_subject(parent.project, name)
            elif parent.kind is Kind.EXPERIMENTS:
                self.client.create_experiment(
                    parent.project, parent.subject, name, self.experiment_type
                )
            elif parent.kind is Kind.SCANS:
                self.client.create_scan(parent.uri, name, self.scan_type)
            else:
                self.client.create_resource(parent.uri, name)
        log.info("mkdir %s: created on XNAT", path)
        self.tree.invalidate(join_path(parts[:-1]))

    def _unlink_remote(self, path: str, parts: PathParts) -> None:
        node = self.tree.lookup(path)
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory", path)
        if node.kind is not Kind.FILE or node.prearchive:
            raise OSError(errno.EPERM, "cannot remove this", path)
        if not self.allow_delete:
            raise OSError(errno.EACCES, "removing files from XNAT needs --allow-delete", path)
        # a resource's files are one listing however deep the folders (§1.8): forget all of it,
        # else a file in a sub-folder stays listed after rm (found by tests/real)
        parent = self.tree.lookup(join_path(parts[:-1]))
        root = self._files_root(parent, parts[:-1]) if parent.kind is Kind.FILES else parts[:-1]
        with self._told_or_expired(join_path(root)):
            self.client.delete(node.uri)
        log.info("rm %s: deleted on XNAT", path)
        self.tree.invalidate(join_path(root))

    def rmdir(self, path: str) -> None:
        parts = split_path(path)
        with self._lock:
            if parts in self._dirs:
                if any(
                    p[: len(parts)] == parts and p != parts
                    for p in list(self._files) + list(self._dirs)
                ):
                    raise OSError(errno.ENOTEMPTY, "not empty", path)
                self._dirs.discard(parts)
                return
        node = self.tree.lookup(path)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", path)
        deletable = {
            Kind.SUBJECT,
            Kind.EXPERIMENT,
            Kind.SCAN,
            Kind.RESOURCE,
            Kind.PRE_SESSION,
            Kind.ASSESSOR,
        }
        if node.kind not in deletable:
            raise OSError(errno.EPERM, "this directory cannot be removed", path)
        if not self.allow_delete:
            raise OSError(errno.EACCES, "removing XNAT objects needs --allow-delete", path)
        if node.kind is not Kind.PRE_SESSION and not self._is_empty(path, node):
            raise OSError(errno.ENOTEMPTY, "XNAT object is not empty", path)
        with self._told_or_expired(join_path(parts[:-1])):
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
            elif child.is_dir and child.kind in (
                Kind.RESOURCES,
                Kind.SCANS,
                Kind.EXPERIMENTS,
                Kind.ASSESSORS,
            ):
                if self.tree.listdir(join_path(split_path(path) + (child.name,))):
                    return False
            else:
                return False
        return True

    def _prearc(self) -> Any:
        """Prearchive actions that wait (within ``--timeout``) for the state XNAT needs."""
        return prearchive_moves.prearc_actions(self.client, self.tree.fs_timeout)
