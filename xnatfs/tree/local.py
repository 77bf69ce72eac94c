"""The records of the write side: a file the user wrote that XNAT does not show yet
(``LocalFile``), its states, and which names are editors' and rsync's temporary files."""

from __future__ import annotations

import errno
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

from xnatfs import deadline
from xnatfs.tree.nodes import NodeInfo
from xnatfs.tree.paths import PathParts, join_path
from xnatfs.uploads import SpoolFile, UploadTarget
from xnatfs.uploads.journal import Entry
from xnatfs.xnat.models import FileEntry
from xnatfs.xnat.parse import file_uri

#: a LocalFile's state while the user writes it (before the journal has it); after that it
#: takes the journal's states (``uploads/journal.py``: PENDING, UPLOADING, FAILED, DONE)
WRITING = "writing"
#: a new file closed empty: XNAT cannot store it (§4.5), so it is shown here only, for as long
#: as the kernel may hold its name (``LocalOverlay._locked_keep_empty``), then dropped
EMPTY = "empty"

#: archives that become imports when written into experiments/ or .prearchive/P/ (§6)
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
#: names that editors, rsync and the write-a-copy-then-rename idiom write before renaming:
#: uploaded after a delay, not at close (a rename in time uploads them under the new name
#: only; else the delay ends and they go up under their own).  rsync ``.name.XXXXXX``; vim
#: ``name~``, ``.name.swp``; emacs ``.#name``; ``*.tmp``, ``*.part``; GNU ``sed -i``
#: ``sedXXXXXX``; Python's ``tempfile`` (``tmp`` + 8 of ``[a-z0-9_]``, and a suffix), which
#: ``os.replace`` then moves (json/yaml writers, pipeline tools); ``mktemp``'s
#: ``tmp.XXXXXXXXXX``; lock files ``NAME.lock`` renamed over ``NAME`` (git's refs, index and
#: config, and many other tools); rclone's ``*.partial``; git's objects ``tmp_obj_XXXXXX``
#: (also ``tmp_pack_``, ``tmp_idx_``); SQLite's rollback journal ``NAME.db-journal``
#: (written, fsync'ed and removed at every transaction).  Without them, ``sed -i``,
#: ``os.replace`` and ``git init`` failed with EXDEV once the temporary file was on XNAT (which
#: has no move), and left it there; SQLite uploaded its journal and removed it again at every
#: commit (refused without ``--allow-delete``).
_TEMP_RE = re.compile(
    r"^\..+\.[A-Za-z0-9]{6}$|~$|^\.#|\.sw[a-p]$|\.tmp$|\.part$"
    r"|^sed[A-Za-z0-9]{6}$|^tmp[a-z0-9_]{8}(\.[A-Za-z0-9]+)*$|^tmp\.[A-Za-z0-9]{10}$"
    r"|\.lock$|\.partial$|^tmp_[a-z]+_[A-Za-z0-9]{6}$|\.[A-Za-z0-9]+-journal$"
)
#: seconds a temporary file waits for its rename before it is uploaded under its own name
TEMP_UPLOAD_DELAY = 10.0


def target_uri(target: UploadTarget) -> str:
    """The URI of the file a file target names, as XNAT's listing of it gives it (its name
    percent-encoded: ``parse.file_uri``, docs/XNAT-API.md §1.8, §10.17); "" for an import.
    What the write side asks XNAT for, keys times by and shows as ``user.xnat.uri``: with the
    name raw, ``e%41f.txt`` named ``eAf.txt`` and ``a?b.txt`` the file ``a``."""
    return file_uri(target.resource_uri, target.relpath) if target.is_file else ""


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
    #: where it goes: a file in a resource, or an archive import
    target: UploadTarget
    spool: Optional[SpoolFile] = None
    entry: Optional[Entry] = None
    handles: int = 0
    #: bytes written since the last commit to the journal
    dirty: bool = False
    #: WRITING, or the journal's state of the entry (PENDING, UPLOADING, FAILED)
    state: str = WRITING
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
    #: the MD5 of the bytes XNAT confirmed last (set by the check that confirmed them,
    #: ``UploadPath._landed``): more writes continue from XNAT's copy only if it still holds
    #: them (``HandleOps._fill_from_upload``), not from another client's stored since
    uploaded_md5: str = ""
    #: XNAT confirmed an older version of this file while a newer one waits in the journal
    #: (set by the check that confirmed it, ``UploadPath._landed``, before the uploader lets
    #: the path go): the name is on XNAT with bytes the user overwrote since, and an rm or
    #: rename must not leave them there behind a 0 (``Namespace``).  Before, nothing on the
    #: file said so (``_on_change`` follows its newest version only): rm answered 0 and mv
    #: moved the newest, XNAT showing the older bytes under the old name.  Cleared when a
    #: newer version lands, or a rename deletes it there
    older_landed: bool = False
    #: the listing row of the bytes XNAT confirmed last (``UploadPath._landed``), while the
    #: file has no newer bytes (a write after it clears it): a time set on the open file
    #: then goes into the times index keyed by this row, as the upload's time was.  Before,
    #: it stayed in ``mtime_ns`` only (the journal's record gone) and was lost at close
    landed: Optional[FileEntry] = None
    #: held while this file's time is put into the times index (``_landed`` and
    #: ``set_mtime`` on two threads): the last write there is the latest time
    stamping: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: removed (unlink, or a rename over it) while a handle was open: that handle still
    #: reads and writes its bytes (as POSIX's unlinked file), but nothing is uploaded or shown
    removed: bool = False
    #: held while the local copy is read, written, truncated or committed: handles of one file
    #: may do these on several threads at once (two processes appending to one log), and a
    #: commit swaps the spool for a journal entry; a write between the two landed in a spool
    #: the commit then dropped (acknowledged, lost), a read found neither copy.  Never held
    #: while uploading.  Taken before the overlay's lock, never while holding it.
    io: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: EMPTY files: when (time.monotonic) the overlay drops it once no handle has it open
    empty_until: float = 0.0
    #: bumped each time a local copy starts again after a commit (a write or truncate after
    #: the upload): a handle reading XNAT's copy of an earlier upload (``WriteHandle``) must
    #: not serve it once a later one replaced it.  Changed under ``io``.
    generation: int = 0
    #: what refused the newest version for good at a close or fsync (``failed``): a later
    #: close or fsync answers it again (``UploadPath._unconfirmed``); None once a new one
    #: is committed
    refusal: Optional[BaseException] = field(default=None, repr=False, compare=False)
    #: the old name, when this is the copy a rename of a file on XNAT uploads under the new
    #: name (``Namespace._upload_copy``): a failed upload drops it again, nothing is kept
    moving_from: str = ""

    @contextmanager
    def holding(self, timeout: float) -> Iterator[None]:
        """``io`` for one filesystem call, waited for at most what is left of the call's
        deadline (``timeout`` outside one): the holder may be inside a request (a download
        to continue from, an rm's DELETE, a rename waiting for a running upload), and a call
        waiting behind it must still end in time (ETIMEDOUT)."""
        if not self.io.acquire(timeout=deadline.left(timeout)):
            raise TimeoutError(
                errno.ETIMEDOUT,
                "another call on this file (an upload step or a download) has not ended in time",
                join_path(self.parts),
            )
        try:
            yield
        finally:
            self.io.release()

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def size(self) -> int:
        # a closed spool still attached is being moved into the journal (its bytes are the
        # entry's a moment later): its size is the file's.  Asked for an open one only, the
        # file showed 0 bytes in that window, and the kernel kept that for its attr timeout
        if self.spool is not None:
            return self.spool.size
        return self.entry.size if self.entry is not None else self.uploaded_size
