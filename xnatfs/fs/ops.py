"""``XnatOperations``: the mfusepy adapter (ratarmount ``FuseMount``, kept thin).

Each op resolves the path with one ``Tree`` call and converts the answer; every ``if`` about XNAT
lives in ``xnatfs.tree``.  Exceptions go through ``errmap.errno_for`` — the only way an op fails.
The runtime (client, caches, threads) is started by the caller before ``FUSE()`` and closed after
it returns: xnatfs never lets libfuse fork (the daemon is a fresh process started by the CLI, with
``foreground=True``), so nothing started early is lost, and a failed login stops before a mount
appears.  ``init()`` only reports readiness (systemd ``READY=1``, the CLI's wait).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
)

from xnatfs import deadline
from xnatfs.fs import control, errmap
from xnatfs.fs.fuselib import load
from xnatfs.fs.keepcache import PageCacheTrust
from xnatfs.fs.noopen import ImplicitHandles, Invalidator, ToldDocuments

if TYPE_CHECKING:  # the type checker reads the module; at run time it is loaded on libfuse3
    import mfusepy
else:
    mfusepy = load()

log = logging.getLogger(__name__)

XATTR_PREFIX = "user.xnat."
_NS = 1_000_000_000
#: libfuse3 passes utimensat's UTIME_NOW / UTIME_OMIT as tv_nsec with tv_sec 0
_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def shown_modes(options: Any) -> Dict[bool, int]:
    """is_dir -> the permission bits shown for every directory / file.

    The same everywhere (0755/0644 by default, ``--dir-mode``/``--file-mode``), not "writable
    here or not": a copy taken out with ``cp -r``/``rsync -a`` keeps the modes, and a read-only
    folder there could not be deleted by its owner (issue 16 §3).  A write XNAT cannot take
    still fails at the call with its errno.  With ``allow_other`` the kernel enforces these
    modes (default_permissions, ``cli.fuse_kwargs``), so group/other never get a write bit
    unless ``--allow-other-write`` (issue 17 §2, docs/SECURITY.md); ``--read-only`` drops every
    write bit; ``-o umask=`` only takes bits away.
    """
    other_write = bool(getattr(options, "allow_other_write", False))
    modes = {True: getattr(options, "dir_mode", None), False: getattr(options, "file_mode", None)}
    defaults = {True: 0o777 if other_write else 0o755, False: 0o666 if other_write else 0o644}
    keep = 0o777 & ~getattr(options, "umask", 0)
    if not other_write:
        keep &= ~0o022
    if getattr(options, "read_only", False):
        keep &= ~0o222
    return {
        is_dir: (defaults[is_dir] if mode is None else mode) & keep
        for is_dir, mode in modes.items()
    }


#: ``st_blksize`` of every node: the I/O size tools pick from ``stat`` (coreutils ``cp``, ``cat``
#: and Python's ``open`` use it for their buffers; the default 4 KiB makes ``cp`` write 128 KiB
#: at a time).  Each write(2) is one FUSE WRITE through Python, and the kernel sends one
#: GETXATTR ``security.capability`` before each (FUSE clears ``SB_NOSEC``), so ``cp`` of
#: 256 MiB into the mount cost 2,048 + 2,048 round trips; with 1 MiB it is 256 + 256 (the
#: kernel takes 1 MiB writes: libfuse 3 negotiates ``max_pages`` 256).  Measured in
#: benchmarks/RESULTS.md ("B5: 1 MiB writes").
IO_BLOCK = 1 << 20

#: libfuse 3's ``FUSE_READDIR_PLUS`` (readdir flags) and ``FUSE_FILL_DIR_PLUS`` (filler flags)
_READDIR_PLUS, _FILL_DIR_PLUS = 1 << 0, 1 << 1
#: libfuse 3's ``FUSE_CAP_READDIRPLUS`` and ``FUSE_CAP_READDIRPLUS_AUTO`` (include/fuse_common.h)
_CAP_READDIRPLUS, _CAP_READDIRPLUS_AUTO = 1 << 13, 1 << 14
#: libfuse 3's ``FUSE_CAP_NO_OPEN_SUPPORT``: ENOSYS from open means success, for every open
_CAP_NO_OPEN_SUPPORT = 1 << 17


@dataclass(frozen=True)
class DirEntry:
    """One entry of a directory pass: its name, its file type, and the node ``lookup`` of its
    path would return when the listing alone tells (``Engine.as_looked_up``), else None."""

    name: str
    mode: int
    node: Any


@dataclass
class _Reader:
    """One read without an open: the handle it uses and how many bytes it gave
    (``XnatOperations._reading_without_open``)."""

    handle: Any
    got: int = 0


#: open flags of an open for writing (``open`` is then a change: ``errmap.log_failure``)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


def _changes(name: str, args: tuple) -> Optional[bool]:
    """Does this call change XNAT or the journal?  None: ``errmap.CHANGES`` says by its name;
    an ``open`` does when it opens for writing (its ``fi.flags``)."""
    if name != "open":
        return None
    return bool(args and getattr(args[0], "flags", 0) & _WRITE_FLAGS)


def _op(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run one op: any exception becomes ``FuseOSError(errno)`` plus at most one log line."""
    name = func.__name__

    @functools.wraps(func)
    def wrapper(self: "XnatOperations", path: Any, *args: Any, **kwargs: Any) -> Any:
        if self._on_first_request is not None:
            self._first_request()
        try:
            return func(self, path, *args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the errno table decides
            code = errmap.errno_for(exc)
            errmap.log_failure(name, str(path), exc, code, _changes(name, args))
            if self.runtime is not None and not errmap.is_refusal(name, code):
                self.runtime.note_error(errno.errorcode.get(code, str(code)))
            raise mfusepy.FuseOSError(code) from None

    return wrapper


class XnatOperations(mfusepy.Operations):
    """FUSE operations over a ``Runtime`` (client + caches + tree)."""

    use_ns = True

    def __init__(
        self,
        runtime: Any,
        *,
        on_ready: Optional[Callable[[], None]] = None,
        on_first_request: Optional[Callable[[], None]] = None,
    ) -> None:
        self.runtime = runtime
        self._on_ready = on_ready
        #: run once, by the first request after INIT (INIT has then been answered)
        self._on_first_request = on_first_request
        self._first_lock = threading.Lock()
        options = runtime.options
        self._uid = options.uid if options.uid is not None else os.getuid()
        self._gid = options.gid if options.gid is not None else os.getgid()
        self._modes = shown_modes(options)
        #: uids whose writes are served: the daemon's own and the owner shown
        self._writers = None if options.allow_other_write else {os.getuid(), self._uid}
        self._handles: Dict[int, Any] = {}
        self._handles_lock = threading.Lock()
        self._next_fh = itertools.count(1)
        self._page_trust = PageCacheTrust()
        #: directory handle -> the entries of its current pass (``dir_entries``)
        self._dirs: Dict[int, List[DirEntry]] = {}
        #: hand each entry's attributes to the kernel with the listing (docs/FUSE.md §2.5)
        self._readdirplus = not getattr(options, "names_only_listings", False)
        #: the kernel answers opens alone (``fs/noopen.py``): set in ``init_with_config`` when
        #: asked for, the mount is read-only and the kernel can
        self._implicit: Optional[ImplicitHandles] = None
        self._invalidator: Optional[Invalidator] = None
        #: no-open: generated documents read from the bytes the kernel was told the size of
        self._docs: Optional[ToldDocuments] = None

    # ------------------------------------------------------------------ life cycle
    @mfusepy.overrides(mfusepy.Operations)
    def init(self, path: str) -> None:
        log.info("mounted %s", self.runtime.options.url)
        if self._on_ready is not None:
            self._on_ready()

    @mfusepy.overrides(mfusepy.Operations)
    def init_with_config(self, conn: Any, config: Any) -> None:
        """``init`` with libfuse 3's connection: READDIRPLUS for every chunk of a listing.

        libfuse asks the kernel for ``READDIRPLUS_AUTO`` by default: then only a directory's
        first chunk comes with attributes, and later ones only after a lookup in it, so every
        name past the first chunk of a large folder (``find`` and ``cp -r`` read them all
        before they stat any) cost a LOOKUP again.  The attributes cost xnatfs nothing extra
        (they are in the listing); ``--names-only-listings`` asks for no READDIRPLUS at all
        (docs/FUSE.md §2.5)."""
        if conn is not None and hasattr(conn, "want"):
            if self._readdirplus:
                conn.want &= ~_CAP_READDIRPLUS_AUTO
            else:
                conn.want &= ~(_CAP_READDIRPLUS | _CAP_READDIRPLUS_AUTO)
        options = self.runtime.options
        # (``xnatfs mount`` refuses --zero-message-opens without --read-only)
        if getattr(options, "zero_message_opens", False) and options.read_only:
            if conn is None or not getattr(conn, "capable", 0) & _CAP_NO_OPEN_SUPPORT:
                log.warning("--zero-message-opens: this kernel cannot; every open is answered")
            else:
                self._start_no_open()
        self.init("/")

    def _start_no_open(self) -> None:
        """From now on the kernel opens files alone (``fs/noopen.py``): reads find their
        handles by path, and one thread drops the kernel's pages that may not stay."""
        forget = _kernel_forgets()
        tree = self.runtime.tree
        tree.size_all_generated = True
        implicit = ImplicitHandles(self._open_implicit, tree.content, self._drop_pages)
        self._docs = ToldDocuments(tree.forget_generated, self._drop_pages)
        self._invalidator = Invalidator(
            forget,
            implicit.dropped,
            self._sweep,
        )
        tree.content.on_taint(implicit.tainted)
        self._invalidator.start()
        self._implicit = implicit
        if hasattr(self.runtime, "zero_message_opens"):
            self.runtime.zero_message_opens = implicit
        log.info("zero-message opens: the kernel opens files without asking the daemon")

    def _open_implicit(self, path: str) -> Any:
        """``ImplicitHandles``' opener: what an OPEN did (lookup, ``Tree.open``)."""
        tree = self.runtime.tree
        with deadline.scope(tree.fs_timeout):
            node = tree.lookup(path)
            handle = tree.open(node, path)
        return handle, tree.cacheable(node)

    def _drop_pages(self, path: str) -> None:
        invalidator = self._invalidator
        if invalidator is not None:
            invalidator.request(path)

    def _first_request(self) -> None:
        with self._first_lock:
            callback, self._on_first_request = self._on_first_request, None
        if callback is not None:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a tuning step must not fail a request
                log.warning("after mount: %s", exc)

    @mfusepy.overrides(mfusepy.Operations)
    def destroy(self, path: str) -> None:
        if self._invalidator is not None:
            self._invalidator.close()
        if self._implicit is not None:
            self._implicit.close()
        with self._handles_lock:
            handles, self._handles = list(self._handles.values()), {}
            self._dirs.clear()
        for handle in handles:
            handle.close()

    # ------------------------------------------------------------------ metadata
    def _stat(self, node: Any) -> Dict[str, int]:
        mtime = self.runtime.tree.mtime_ns(node)
        perm = self._modes[node.is_dir]
        if getattr(node, "private", False):
            # .xnatfs/ is the owner's (docs/SECURITY.md): with allow_other the kernel then
            # refuses it to everyone else, whatever the archive's modes
            perm &= 0o700
        if node.is_dir:
            mode, nlink = stat.S_IFDIR | perm, 2
        else:
            mode, nlink = stat.S_IFREG | perm, 1
        return {
            "st_mode": mode,
            "st_nlink": nlink,
            "st_size": node.size,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_blocks": (node.size + 511) // 512,
            "st_blksize": IO_BLOCK,
            "st_mtime": mtime,
            "st_ctime": mtime,
            "st_atime": mtime,
        }

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def getattr(self, path: str, fh: Optional[int] = None) -> Dict[str, int]:
        # the kernel's LOOKUP and GETATTR both land here (libfuse's high-level API)
        self.runtime.note_fuse("getattr")
        tree = self.runtime.tree
        node = tree.lookup(path)
        implicit, docs = self._implicit, self._docs
        if implicit is not None and docs is not None and not node.is_dir:
            if implicit.knows(path):
                implicit.changed(path, tree.content_key(node))  # the server's file changed?
            told = tree.kept_generated(path)
            if told is not None:
                made = docs.tell(path, told, fresh=not getattr(node.ref, "sized", True))
                return {**self._stat(node), "st_mtime": made, "st_ctime": made}
        return self._stat(node)

    def _sweep(self) -> None:
        """The invalidation thread's turn, about every second."""
        if self._implicit is not None:
            self._implicit.sweep()
        if self._docs is not None:
            self._docs.refresh()

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def readdir(self, path: str, fh: int) -> Iterable[str]:
        """Names only: libfuse 2 (``XnatFUSE.readdir_fuse_3`` serves libfuse 3)."""
        return [".", ".."] + [node.name for node in self.runtime.tree.readdir(path)]

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def opendir(self, path: str) -> int:
        with self._handles_lock:
            return next(self._next_fh)

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def releasedir(self, path: str, fh: int) -> int:
        with self._handles_lock:
            self._dirs.pop(fh, None)
        return 0

    @_op
    def dir_entries(self, path: str, fh: int, offset: int) -> List[DirEntry]:
        """The entries of directory handle ``fh`` from ``offset`` on (``XnatFUSE.readdir_fuse_3``).

        One snapshot per pass, made at offset 0 (that is also when the read-ahead policies are
        asked) and kept with the handle until ``releasedir``: the kernel reads a directory in
        chunks of a few KiB and resumes at the offset it was given, so every chunk must come
        from the same listing, or a name would be skipped or shown twice."""
        self.runtime.note_fuse("readdir")
        with self._handles_lock:
            entries = None if offset == 0 else self._dirs.get(fh)
        if entries is None:
            tree = self.runtime.tree
            children = tree.readdir(path)
            nodes: List[Any] = (
                tree.as_looked_up(path, children) if self._readdirplus else [None] * len(children)
            )
            entries = [DirEntry(".", stat.S_IFDIR, None), DirEntry("..", stat.S_IFDIR, None)]
            entries.extend(
                DirEntry(child.name, stat.S_IFDIR if child.is_dir else stat.S_IFREG, node)
                for child, node in zip(children, nodes)
            )
            with self._handles_lock:
                self._dirs[fh] = entries
        return entries[offset:]

    def entry_attrs(self, entry: DirEntry) -> Optional[Dict[str, int]]:
        """The attributes readdirplus hands the kernel for ``entry``, or None (the kernel then
        looks the name up when a program asks)."""
        if entry.node is None:
            return None
        try:
            return self._stat(entry.node)
        except Exception as exc:  # noqa: BLE001 - the LOOKUP then reports it, once
            log.debug("no attributes in the listing for %s: %s", entry.name, exc)
            return None

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == control.REFRESH_XATTR:
            return self._refresh(path)
        if not name.startswith(XATTR_PREFIX):
            # ENOTSUP, not ENODATA: coreutils then stops asking for ACLs/capabilities on every
            # file (docs/FUSE.md §2.3)
            raise OSError(errno.ENOTSUP, "only user.xnat.* attributes", path)
        tree = self.runtime.tree
        value = tree.xattrs(tree.lookup(path)).get(name[len(XATTR_PREFIX) :])
        if value is None:
            raise OSError(errno.ENODATA, "no such attribute", path)
        return value.encode()

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def listxattr(self, path: str) -> Iterable[str]:
        tree = self.runtime.tree
        return [XATTR_PREFIX + key for key in tree.xattrs(tree.lookup(path))]

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def statfs(self, path: str) -> Dict[str, int]:
        # a large block size makes readers issue large reads (ratarmount statfs); free space is
        # the cache disk's, where writes are spooled before they are uploaded
        bsize = 256 * 1024
        disk = os.statvfs(self.runtime.options.cache_dir)
        scale = disk.f_frsize / bsize
        return {
            "f_bsize": bsize,
            "f_frsize": bsize,
            "f_namemax": 255,
            "f_blocks": int(disk.f_blocks * scale),
            "f_bfree": int(disk.f_bfree * scale),
            "f_bavail": int(disk.f_bavail * scale),
        }

    # ------------------------------------------------------------------ reading
    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def open(self, path: str, fi: Any) -> int:
        self.runtime.note_fuse("open")
        tree = self.runtime.tree
        if fi.flags & _WRITE_FLAGS:
            node = tree.lookup(path)
            handle = self._writer(path).open_write(node, path, truncate=bool(fi.flags & os.O_TRUNC))
            return self._add_handle(handle, fi)
        if self._implicit is not None:
            # "success, and do not ask again": the kernel opens every file alone from now on
            raise mfusepy.FuseOSError(errno.ENOSYS)
        # one deadline for the whole open: the read-ahead policies asked at open may load the
        # folder's listing (expired since the lookup) and each load took a fresh --timeout
        with deadline.scope(tree.fs_timeout):
            node = tree.lookup(path)
            if getattr(node, "private", False):
                self._owner_only(path)
            handle = tree.open(node, path)
        self._add_handle(handle, fi)
        if hasattr(fi, "noflush"):
            # nothing to flush on a read-only file: close(2) then costs no FLUSH round trip
            # (libfuse >= 3.11; older kernels ignore it)
            fi.noflush = 1
        if handle.direct_io:
            fi.direct_io = 1
        if not tree.cacheable(node):
            return 0
        # only pages of verified bytes may serve a later open, and only one content version's
        # pages while opens of it are open (fs/keepcache.py)
        version, verified = getattr(handle, "content_version", (None, False))
        taints = getattr(tree.content, "taints", 0)
        if handle.direct_io:
            # a streamed XNAT file: its reads fill no page, but a private mmap of it does, so
            # it must still drop the path's trust
            self._page_trust.keep_cache(path, version, verified, taints)
            return 0
        keep, direct = self._page_trust.opened(path, version, verified, taints)
        fi.keep_cache, fi.direct_io = int(keep), int(direct)
        if not direct:
            handle.paged = (path, version)  # told to _page_trust at its release
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        if self._implicit is None or (fi is not None and fi.fh):
            return self._handle(fi, path).read(offset, size)
        with self._reading_without_open(path) as reader:
            data: bytes = reader.handle.read(offset, size)
        return data

    @_op
    def read_into(self, path: str, address: int, size: int, offset: int, fi: Any) -> int:
        """``read`` for ``XnatFUSE``: the bytes go straight from the cache file into libfuse's
        buffer at ``address``; returns how many."""
        self.runtime.note_fuse("read")
        if self._implicit is None or (fi is not None and fi.fh):
            return self._copy_into(self._handle(fi, path), address, size, offset)
        with self._reading_without_open(path) as reader:
            reader.got = self._copy_into(reader.handle, address, size, offset)
        return reader.got

    @contextlib.contextmanager
    def _reading_without_open(self, path: str) -> Iterator[_Reader]:
        """The handle a read that came without an open uses (``fs/noopen.py``): a told
        document's bytes, or the path's implicit handle; a read that fails (other than by its
        deadline) is told to ``ImplicitHandles``."""
        implicit = self._implicit
        assert implicit is not None
        told = self._docs.reader(path) if self._docs is not None else None
        if told is not None:  # a generated document: the bytes the kernel was told the size of
            yield _Reader(told)
            return
        with implicit.reading(path) as handle:  # not closed under this read
            reader = _Reader(handle)
            try:
                yield reader
            except TimeoutError:
                raise  # bytes not there in time: nothing failed a check (a later taint says so)
            except BaseException:
                implicit.read_failed(path)
                raise

    @staticmethod
    def _copy_into(handle: Any, address: int, size: int, offset: int) -> int:
        got = handle.span(offset, size)
        if not isinstance(got, tuple):
            ctypes.memmove(address, got, len(got))
            return len(got)
        fd, n = got
        if n <= 0:
            return 0
        view = memoryview((ctypes.c_char * n).from_address(address)).cast("B")
        done = 0
        while done < n:
            got_n = os.preadv(fd, [view[done:]], offset + done)
            if got_n <= 0:
                # ``span`` saw these bytes there (listed size, arrived bytes): the cache file
                # shrank since (a disk fault, a hand in the cache directory).  A short answer
                # would be the end of the file to the kernel, and ``cp`` a truncated copy
                raise OSError(
                    errno.EIO, f"cache file ended at byte {offset + done}, {n - done} short"
                )
            done += got_n
        return done

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            paged = getattr(handle, "paged", None)
            if paged is not None:
                self._page_trust.closed(*paged)
            handle.close()
        return 0

    # ------------------------------------------------------------------ writes
    def _writer(self, path: str) -> Any:
        writer = self.runtime.writer
        if writer is None:
            raise OSError(
                errno.EROFS, getattr(self.runtime, "writes_off", "mounted read-only"), path
            )
        if self._writers is not None:
            # the kernel already refuses (default_permissions); this holds even if someone
            # mounts with allow_other some other way, or root writes on a user's mount
            caller = mfusepy.fuse_get_context()[0]
            if caller not in self._writers:
                raise OSError(
                    errno.EACCES,
                    f"uid {caller} is not the mount's owner: writes "
                    "by other users need --allow-other-write",
                    path,
                )
        tree = getattr(self.runtime, "tree", None)
        if tree is not None and tree.read_only(path):  # a view mounted under a name (.bids)
            raise OSError(errno.EROFS, "a read-only view", path)
        return writer

    def _owner_only(self, path: str) -> None:
        """A file shown to the owner only (``.xnatfs/``): the kernel refuses the others
        (default_permissions, mode 0600); this holds even if a mount lets others in without
        it.  Root may (it reads the cache directory anyway)."""
        caller = mfusepy.fuse_get_context()[0]
        if caller not in (os.getuid(), self._uid, 0):
            raise OSError(errno.EACCES, f"uid {caller}: the mount owner's file", path)

    def _add_handle(self, handle: Any, fi: Any) -> int:
        with self._handles_lock:
            fh = next(self._next_fh)
            self._handles[fh] = handle
        fi.fh = fh
        return 0

    def _handle(self, fi: Any, path: str) -> Any:
        with self._handles_lock:
            handle = self._handles.get(fi.fh) if fi is not None else None
        if handle is None:
            raise OSError(errno.EBADF, "unknown file handle", path)
        return handle

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        flags = getattr(fi, "flags", os.O_TRUNC)
        handle = self._writer(path).create(
            path, truncate=bool(flags & os.O_TRUNC), exclusive=bool(flags & os.O_EXCL)
        )
        return self._add_handle(handle, fi)

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def write(self, path: str, data: "bytes | memoryview", offset: int, fi: Any) -> int:
        """``data``: under ``XnatFUSE`` a view of libfuse's buffer, valid during this call only
        (written out before it returns, never kept)."""
        n = self._handle(fi, path).write(offset, data)
        self.runtime.note_write(n)
        return n

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if fh is not None and getattr(fh, "fh", None):
            self._handle(fh, path).truncate(length)
        else:
            self._writer(path).truncate(path, length)
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def flush(self, path: str, fi: Any) -> int:
        if self._implicit is not None and not fi.fh:
            # nothing to flush on a read-only mount: ENOSYS stops FLUSHes (the kernel's no_flush)
            raise mfusepy.FuseOSError(errno.ENOSYS)
        handle = self._handle(fi, path)
        if hasattr(handle, "flush"):
            handle.flush()  # uploads now: close() returns only after XNAT accepted the bytes
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        if self._implicit is not None and not fi.fh:
            raise mfusepy.FuseOSError(errno.ENOSYS)  # as flush: nothing on a read-only mount
        handle = self._handle(fi, path)
        # a write handle commits at fsync whichever descriptor asks, at flush only if it
        # wrote (WriteHandle.changed)
        sync = getattr(handle, "fsync", None) or getattr(handle, "flush", None)
        if sync is not None:
            sync()
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def mkdir(self, path: str, mode: int) -> int:
        self._writer(path).mkdir(path)
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def unlink(self, path: str) -> int:
        self._writer(path).unlink(path)
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def rmdir(self, path: str) -> int:
        self._writer(path).rmdir(path)
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def rename(self, old: str, new: str) -> int:
        self._writer(old).rename(old, new)
        return 0

    # XNAT keeps no modes or owners of its own: accepting them as no-ops lets cp -p, rsync -a
    # work; refusing them would fail those tools after a good upload.  Times stick (utimens)
    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def chmod(self, path: str, mode: int) -> int:
        self._writer(path)
        self.runtime.tree.lookup(path)
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def chown(self, path: str, uid: int, gid: int) -> int:
        return self.chmod(path, 0)

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def utimens(self, path: str, times: Any = None) -> int:
        """Kept in the cache's times index (issue 15 §2): rsync, make, cp -p and tar compare
        them.  ``times`` is (atime, mtime) in ns (``use_ns``); None or UTIME_NOW is now."""
        writer = self._writer(path)
        mtime = None if times is None else int(times[1])
        if mtime == _UTIME_OMIT:
            self.runtime.tree.lookup(path)
            return 0
        if mtime is None or mtime == _UTIME_NOW:
            mtime = time.time_ns()
        writer.set_mtime(path, mtime)
        return 0

    @mfusepy.overrides(mfusepy.Operations)
    @_op
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        if name == control.REFRESH_XATTR:
            self._refresh(path)
            return 0
        raise OSError(errno.ENOTSUP, "user.xnat.* attributes are read-only", path)

    def _refresh(self, path: str) -> bytes:
        """``fs/control.py``: forget the listings at and below ``path`` (and of its folder),
        then look it up again, so a folder gone from XNAT answers ENOENT now.

        The kernel keeps each name it looked up, with its attributes, for the listing TTL
        (``entry_timeout``/``attr_timeout``): a file removed or changed on XNAT would still
        ``stat`` as before.  So the kernel also forgets the attributes and pages of every
        name the daemon's listings at and below the folder gave it (libfuse's
        ``fuse_invalidate_path``, -ENOENT for a name it does not hold); its next ``stat``
        asks the daemon.  A name it holds as missing stays so for ``negative_timeout``
        (10 s at most) unless its folder is listed: libfuse's high-level API cannot reach
        those, so ``xnatfs refresh`` lists the folder after this (``control._list_folder``).

        A view made from the XNAT side (``.bids``) is refreshed with it, at the project's
        folder (``Tree.following``): a refresh of ``MNT/P/S/E`` after a change on XNAT
        shows it in ``MNT/.bids/P`` too."""
        tree = self.runtime.tree
        folder = path if tree.lookup(path).is_dir else os.path.dirname(path)
        views = tree.following(path)
        known = [folder, *tree.known_below(folder)]
        for view in views:
            known += [view, *tree.known_below(view)]  # [] for a view never looked at
        tree.invalidate(path)
        for view in views:
            tree.invalidate(view)
        log.info(
            "refresh of %s%s: its listings are loaded anew",
            path,
            "".join(f" (and {view})" for view in views),
        )
        forget = _kernel_forgets()
        try:
            tree.lookup(path)  # ENOENT for a folder gone from XNAT meanwhile
        finally:
            for name in known:
                forget(name)
        return control.REFRESHED

    def _refused(self, *args: Any) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    symlink = link = mknod = removexattr = _refused


def _kernel_forgets() -> Callable[[str], int]:
    """libfuse's ``fuse_invalidate_path`` for this mount, called from inside a request: the
    kernel drops a path's attributes and pages (-ENOENT when it holds no node for it, which
    is fine).  Never for the path the current request holds pages of (docs/FUSE.md §2.6)."""
    fuse = ctypes.c_void_p(mfusepy._libfuse.fuse_get_context().contents.fuse)
    invalidate_path = mfusepy._libfuse.fuse_invalidate_path
    invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    invalidate_path.restype = ctypes.c_int
    return lambda path: int(invalidate_path(fuse, path.encode("utf-8", "surrogateescape")))


def _keep_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state for the life of the thread.

    A ctypes callback on a thread Python did not start makes a fresh thread state and drops it
    again when the callback returns (``PyGILState_Ensure``/``Release``): every FUSE request
    paid for that (a 16 KiB mmap + munmap, seen with strace, and the state's set-up).  One
    unmatched ``PyGILState_Ensure`` keeps the state alive; libfuse's worker threads live as
    long as the mount (``max_idle_threads`` is unlimited in libfuse 3.12+).
    """
    ensure = ctypes.pythonapi.PyGILState_Ensure
    ensure.restype = ctypes.c_int
    ensure()


#: ``getattr``'s time keys -> the ``c_stat`` timespec they fill (``_fill_stat``)
_STAT_TIMES = {"st_atime": "st_atimespec", "st_mtime": "st_mtimespec", "st_ctime": "st_ctimespec"}
#: the other keys ``c_stat`` has on this platform (mfusepy's ``set_st_attrs`` skips the rest)
_STAT_FIELDS = frozenset(field[0] for field in mfusepy.c_stat._fields_)
_STAT_SIZE = ctypes.sizeof(mfusepy.c_stat)
#: off: mfusepy's own ``fgetattr`` and ``set_st_attrs`` (the switch of ``_fill_stat``)
FAST_STAT = True


def _fill_stat(st: Any, attrs: Dict[str, int]) -> None:
    """mfusepy's ``set_st_attrs(st, attrs, use_ns=True)`` for a zeroed ``c_stat``: the same
    fields, without its per-key tuple test, string concatenation and double ``getattr``: it
    runs for every LOOKUP, GETATTR and readdirplus entry (benchmarks/RESULTS.md, "Per-message
    cost")."""
    for key, val in attrs.items():
        spec = _STAT_TIMES.get(key)
        if spec is not None:
            timespec = getattr(st, spec, None)
            if timespec is not None:
                timespec.tv_sec, timespec.tv_nsec = divmod(int(val), _NS)
        elif key in _STAT_FIELDS:
            setattr(st, key, val)


class XnatFUSE(mfusepy.FUSE):
    """mfusepy's ``FUSE`` with these changes: ``read`` fills libfuse's buffer in place, ``write``
    writes from it without a copy, ``truncate`` keeps the handle of an ``ftruncate``,
    ``readdir`` gives offsets and attributes, and each worker thread keeps its Python thread
    state (``_keep_thread_state``).

    mfusepy's own ``read`` takes the ``bytes`` that ``Operations.read`` returns and copies them
    into libfuse's buffer, so every byte read is copied twice in Python's care and every
    request allocates its size (1 MiB) anew.  ``XnatOperations.read_into`` ``preadv``s the cache
    file directly into that buffer (one copy, no allocation, GIL released).  Measured against
    the alternative of answering ``read_buf`` with the fd (libfuse 3.14 copies through a freshly
    mmapped buffer per request and did not splice here): that was slower than mfusepy's ``read``,
    this is faster (benchmarks/RESULTS.md, B3).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: per worker thread: its thread state is kept (set before the loop starts, which
        #: mfusepy's __init__ runs)
        self._kept = threading.local()
        super().__init__(*args, **kwargs)

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self._kept, "done", False):
            _keep_thread_state()
            self._kept.done = True
        return super()._wrapper(func, *args, **kwargs)

    def fgetattr(self, path: Optional[bytes], buf: Any, fip: Any) -> int:
        """mfusepy's ``fgetattr`` (the kernel's LOOKUP and GETATTR) with ``_fill_stat``."""
        if not (FAST_STAT and self.use_ns):
            return int(super().fgetattr(path, buf, fip))
        ctypes.memset(buf, 0, _STAT_SIZE)
        fh = (fip.contents if self.raw_fi else fip.contents.fh) if fip else None
        attrs = self.operations.getattr(
            None if path is None else path.decode(self.encoding, self.errors), fh
        )
        _fill_stat(buf.contents, attrs)
        return 0

    def readdir_fuse_3(
        self, path: Optional[bytes], buf: Any, filler: Any, offset: int, fip: Any, flags: int
    ) -> int:
        """Directory entries with offsets, and for READDIRPLUS each entry's attributes.

        mfusepy gives names only, and libfuse 3.14's high-level API drops the attributes of
        entries it was given with offset 0 (it sends them with node id 0, which tells the
        kernel to ignore them; ``fill_dir_plus``/``readdir_fill_from_list`` in lib/fuse.c).
        With offsets and ``FUSE_FILL_DIR_PLUS`` libfuse registers each node and the kernel
        keeps its entry and attributes for the listing TTL: ``ls -l``, ``find`` and ``cp -r``
        then send no LOOKUP per name.  Measured in benchmarks/RESULTS.md ("readdirplus")."""
        entries_of = getattr(self.operations, "dir_entries", None)
        if entries_of is None:
            return int(super().readdir_fuse_3(path, buf, filler, offset, fip, flags))
        decoded = "" if path is None else path.decode(self.encoding, self.errors)
        plus = bool(flags & _READDIR_PLUS)
        use_ns = bool(getattr(self.operations, "use_ns", False))
        for index, entry in enumerate(entries_of(decoded, fip.contents.fh, offset), offset + 1):
            st = mfusepy.c_stat()
            attrs = self.operations.entry_attrs(entry) if plus else None
            if attrs:
                if FAST_STAT and use_ns:
                    _fill_stat(st, attrs)
                else:
                    mfusepy.set_st_attrs(st, attrs, use_ns)
            else:
                st.st_mode = entry.mode
            name = entry.name.encode(self.encoding, self.errors)
            if filler(buf, name, st, index, _FILL_DIR_PLUS if attrs else 0) != 0:
                break  # the kernel's buffer is full: it asks again from the next offset
        return 0

    def truncate_fuse_3(self, path: Optional[bytes], length: int, fip: Any) -> int:
        """``Operations.truncate`` with the handle of an ``ftruncate`` (mfusepy drops it).
        Without it every ``ftruncate`` went by path, through a handle of its own, and the
        descriptor that truncated had changed nothing of its own (``WriteHandle.changed``):
        ``truncate -s 0`` of a file on XNAT then answered 0 while XNAT kept the old bytes."""
        fh = None
        if fip:
            fh = fip.contents if self.raw_fi else fip.contents.fh
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return int(self.operations.truncate(decoded, length, fh))

    def write(self, path: Optional[bytes], buf: Any, size: int, offset: int, fip: Any) -> int:
        """``Operations.write`` given a view of libfuse's buffer instead of a copy of it
        (mfusepy's ``ctypes.string_at``: a fresh 1 MiB ``bytes`` per request, an mmap and 256
        page faults each).  The view is released when the call returns: the buffer is
        libfuse's again then, so nothing may keep it (the spool writes it out in the call)."""
        fh = fip.contents if self.raw_fi else fip.contents.fh
        address = ctypes.cast(buf, ctypes.c_void_p).value
        if not size or address is None:
            return super().write(path, buf, size, offset, fip)
        view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        try:
            return int(
                self.operations.write(
                    None if path is None else path.decode(self.encoding, self.errors),
                    view,
                    offset,
                    fh,
                )
            )
        finally:
            view.release()

    def read(self, path: Optional[bytes], buf: Any, size: int, offset: int, fip: Any) -> int:
        read_into = getattr(self.operations, "read_into", None)
        if read_into is None:
            return super().read(path, buf, size, offset, fip)
        fh = fip.contents if self.raw_fi else fip.contents.fh
        return read_into(
            None if path is None else path.decode(self.encoding, self.errors),
            ctypes.cast(buf, ctypes.c_void_p).value,
            size,
            offset,
            fh,
        )
