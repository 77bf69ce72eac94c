"""The overlay the write side shows to the view engine (``view.layout.Overlay``): local files
and local folders, listed and stat'ed at once, over what XNAT lists.

Lock: ``_lock`` protects ``_files``, ``_dirs`` and ``_ancestors``; it is never held across a
request.  The ``_locked_*`` helpers expect the caller to hold it.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Set

from xnatfs.tree.local import LocalFile
from xnatfs.tree.nodes import Kind, Local, NodeInfo
from xnatfs.tree.paths import PathParts


class LocalOverlay:
    """What the user wrote that XNAT does not show yet, as nodes for the engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: Dict[PathParts, LocalFile] = {}
        self._dirs: Set[PathParts] = set()
        #: folder -> number of local files below it (such folders show while files are local)
        self._ancestors: Dict[PathParts, int] = {}

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
            files = [
                self._file_node(lf)
                for p, lf in self._files.items()
                if len(p) == n and p[:-1] == parts
            ]
            dirs = [
                self._dir(p)
                for p in set(self._dirs) | set(self._ancestors)
                if len(p) == n and p[:-1] == parts
            ]
        return files + dirs

    @staticmethod
    def _dir(parts: PathParts) -> NodeInfo:
        return NodeInfo(
            name=parts[-1], kind=Kind.FILES, is_dir=True, mtime=time.time(), ref=Local()
        )

    @staticmethod
    def _file_node(lf: LocalFile) -> NodeInfo:
        uri = lf.target.file_uri
        return NodeInfo(
            name=lf.parts[-1],
            kind=Kind.FILE,
            is_dir=False,
            size=lf.size,
            mtime=lf.mtime,
            uri=uri,
            ref=Local(lf),
            attrs={"cache_state": lf.state, "uri": uri, "digest": lf.entry.md5 if lf.entry else ""},
        )

    @staticmethod
    def owns(node: NodeInfo) -> bool:
        return isinstance(node.local_file, LocalFile)

    @staticmethod
    def mtime_ns(node: NodeInfo) -> int:
        """The mtime of a file this overlay owns (``view.layout.Overlay``)."""
        return int(node.local_file.mtime_ns)

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
