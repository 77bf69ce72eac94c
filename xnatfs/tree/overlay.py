"""The overlay the write side shows to the view engine (``view.layout.Overlay``): local files
and local folders, listed and stat'ed at once, over what XNAT lists.

Lock: ``_lock`` protects ``_files``, ``_dirs``, ``_ancestors`` and ``_empties``; it is never
held across a request.  The ``_locked_*`` helpers expect the caller to hold it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Set

from xnatfs.tree.local import EMPTY, LocalFile, target_uri
from xnatfs.tree.nodes import Kind, Local, NodeInfo
from xnatfs.tree.paths import PathParts, join_path

log = logging.getLogger(__name__)

#: EMPTY files shown at once (``LocalOverlay._locked_keep_empty``)
EMPTY_MAX = 1000


class LocalOverlay:
    """What the user wrote that XNAT does not show yet, as nodes for the engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: notified (under _lock) when a handle of a local file is released
        self._released = threading.Condition(self._lock)
        self._files: Dict[PathParts, LocalFile] = {}
        self._dirs: Set[PathParts] = set()
        #: folder -> number of local files below it (such folders show while files are local)
        self._ancestors: Dict[PathParts, int] = {}
        #: seconds an EMPTY file stays shown after the kernel was last told of it; 0 drops it
        #: at its last close.  The runtime keeps them for the mount's life (``math.inf``):
        #: ``touch stamp`` that make checks minutes later, or ``touch f`` then ``echo x >> f``
        #: (an OPEN of the name the kernel holds, no LOOKUP); at most ``EMPTY_MAX`` at once
        self.empty_ttl = 0.0
        #: id -> EMPTY file, oldest first (they all wait ``empty_ttl``): swept from the front
        self._empties: "OrderedDict[int, LocalFile]" = OrderedDict()

    def node(self, parts: PathParts) -> Optional[NodeInfo]:
        """The local file at ``parts`` (it wins over what XNAT lists), or None."""
        with self._lock:
            if self._empties:
                self._locked_sweep_empties()
            lf = self._files.get(parts)
            if lf is not None and lf.state == EMPTY:
                self._locked_rearm(lf)
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
            if self._empties:
                self._locked_sweep_empties()
            local = [lf for p, lf in self._files.items() if len(p) == n and p[:-1] == parts]
            for lf in local:
                if lf.state == EMPTY:
                    self._locked_rearm(lf)
            files = [self._file_node(lf) for lf in local]
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
        uri = target_uri(lf.target)
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

    def _locked_keep_empty(self, lf: LocalFile) -> bool:
        """Show the new file ``lf``, closed empty, for ``empty_ttl`` more seconds (False: not
        kept, drop it).  At most ``EMPTY_MAX`` at once, the oldest dropped first (with a log
        line): every listing looks through the local files.  Caller holds _lock."""
        if self.empty_ttl <= 0:
            return False
        self._locked_sweep_empties()
        new = self._empties.pop(id(lf), None) is None and lf.state != EMPTY
        if len(self._empties) >= EMPTY_MAX:
            # those written, removed or renamed over since are no EMPTY files any more; with
            # a long ``empty_ttl`` they wait behind an older EMPTY one, and must not count
            for key, other in list(self._empties.items()):
                if not self._locked_shown_empty(other):
                    del self._empties[key]
        while len(self._empties) >= EMPTY_MAX:
            _, oldest = self._empties.popitem(last=False)
            if self._locked_shown_empty(oldest) and oldest.handles == 0:
                log.info(
                    "write %s: empty file no longer shown: more than %d kept at once",
                    join_path(oldest.parts),
                    EMPTY_MAX,
                )
            self._locked_drop_empty(oldest)
        lf.state = EMPTY
        lf.empty_until = time.monotonic() + self.empty_ttl
        self._empties[id(lf)] = lf
        if new:
            log.info(
                "write %s: empty; XNAT cannot store empty files: shown in this mount only, "
                "until it is unmounted",
                join_path(lf.parts),
            )
        return True

    def _locked_shown_empty(self, lf: LocalFile) -> bool:
        """Is ``lf`` shown as an EMPTY file now?  Caller holds _lock."""
        return lf.state == EMPTY and not lf.removed and self._files.get(lf.parts) is lf

    def empty_files(self) -> List[str]:
        """Paths of the EMPTY files shown now (they go with the mount: ``Writer.close``)."""
        with self._lock:
            return sorted(
                join_path(lf.parts) for lf in self._empties.values() if self._locked_shown_empty(lf)
            )

    def _locked_rearm(self, lf: LocalFile) -> None:
        """The kernel is told of the EMPTY file ``lf`` again (a lookup, a listing with its
        attributes) and trusts its name ``empty_ttl`` from now: so does the overlay."""
        if id(lf) in self._empties:
            lf.empty_until = time.monotonic() + self.empty_ttl
            self._empties.move_to_end(id(lf))

    def _locked_sweep_empties(self) -> None:
        """Drop the EMPTY files whose time is up (oldest first: stops at the first that is
        not); forget those that were written or removed since."""
        now = time.monotonic()
        while self._empties:
            key, lf = next(iter(self._empties.items()))
            if lf.state == EMPTY and lf.empty_until > now:
                return
            del self._empties[key]
            if lf.state == EMPTY:
                self._locked_drop_empty(lf)

    def _locked_drop_empty(self, lf: LocalFile) -> None:
        if lf.state == EMPTY and lf.handles == 0 and self._files.get(lf.parts) is lf:
            self._locked_drop(lf.parts)

    def _locked_forget_dirs(self, parts: PathParts) -> None:
        """A file landed on XNAT: its folders now come from the listing.  Caller holds _lock."""
        for i in range(1, len(parts)):
            self._dirs.discard(parts[:i])
