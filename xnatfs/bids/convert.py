"""DICOM → NIfTI with dcm2niix, once per scan version, into the content cache.

Why the content cache: a conversion is expensive (the whole series, then dcm2niix), so its
outputs are kept like downloaded files — on disk, LRU-bounded, surviving remounts, with the
cache's single flight (one conversion per key however many readers) and integrity checks.  A
``ContentCache`` is given a ``fetch(uri, sink)``; here the "download" of a key is a conversion,
run by :meth:`Converter.fetch`.  The key (:func:`bundle_key`) holds the series' file digests,
the converter's version and its options: a scan re-uploaded, a new dcm2niix or other options
make another key, hence a fresh conversion; the old entry ages out.

One cache entry per scan (a *bundle*, :func:`pack`): every output of the conversion
(``.nii.gz``, dcm2niix's ``.json``, ``.bval``/``.bvec``) under dcm2niix's own name behind a
small index, so that the view serves each file as a slice of one entry and they can never come
from two different runs; ``xnatfs.bids.images`` names the images of a multi-image series.

Bounded: at most ``max_running`` dcm2niix processes at once (a semaphore; the others queue), each
with a ``timeout``; each runs in a private temp dir that is removed afterwards.  A failure raises
:class:`ConversionError` with dcm2niix's message; the view turns it into EIO with one log line.

A full cache disk (the temp dir is on it, beside the cached DICOM files): the series' copy
or dcm2niix's output meets ENOSPC or EDQUOT (dcm2niix exits 1 with "disk full?" or with no
reason at all; then the free space left says it), or the free space cannot hold the series
twice (``_check_room``, before anything is fetched).  The conversion asks ``make_room`` (the
content caches evict copies of XNAT's files, as for a user's write) and runs once more;
still full, the reader gets that errno.  Before, the read failed with EIO while the disk
was full of cached files that could have gone.  dcm2niix never exits 0 with a cut output
(checked on a full tmpfs), and a failed conversion leaves nothing in the cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from xnatfs.cache.partials import PartialOwners
from xnatfs.fs import errmap

log = logging.getLogger(__name__)

#: dcm2niix options: gzip at level 1 (``-1``: a 176-slice MPRAGE converts ~6x faster than at
#: the default level 6 for ~1.7x the bytes; the first read of an image waits for this, the
#: cache keeps the result), BIDS sidecar (anonymised, its default), file name = series
#: number, overwrite, quiet; fixed, and part of every key
OPTIONS: Tuple[str, ...] = (
    "-z",
    "y",
    "-1",
    "-b",
    "y",
    "-ba",
    "y",
    "-f",
    "%s",
    "-w",
    "1",
    "-v",
    "0",
)
_MAGIC = b"XNATFSB1"
#: bytes of a bundle streamed at a time
_CHUNK = 1 << 20
_HEAD = struct.Struct("<8sQ")
#: URI scheme of bundle keys in the BIDS content cache (never sent to XNAT)
SCHEME = "xnatfs-bids:"
#: what a bundle holds, part of every key: 2 = every output under dcm2niix's own name (1
#: renamed the first image to ``image.*``); a bundle of another layout is never read as this one
BUNDLE_FORMAT = "2"
#: a conversion's private folder in ``Converter.tmp_dir``: ``xnatfs-bids-<owner tag>-<random>``
_TMP_PREFIX = "xnatfs-bids-"
#: seconds a dcm2niix failure on a series is answered without running it again
FAILURE_MEMORY = 600.0
#: free bytes below which a dcm2niix failure may be the full disk's, not the series': such a
#: failure is not remembered
_ROOM_TO_BLAME = 16 << 20
#: the errnos of a full disk: no space (ENOSPC), or the user's quota (EDQUOT)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: ``make_room(path, need)``: evict cached files on ``path``'s disk; how many went
RoomFn = Callable[[str, int], int]


class ConversionError(OSError):
    """dcm2niix failed, timed out, or wrote no image: EIO, with dcm2niix's message.  A
    conversion that failed because its series could not be fetched answers what a read of
    the series' files answers (``code``: EHOSTDOWN while XNAT is down, ETIMEDOUT, EACCES…),
    and is ``reported`` when that cause was (the breaker's one line per outage)."""

    def __init__(self, message: str, code: int = errno.EIO, reported: bool = False) -> None:
        super().__init__(code, message)
        self.reported = reported
        #: dcm2niix itself failed on the series (not the fetch of it): ``Converter._remember``
        self.by_dcm2niix = False


def disk_full_errno(exc: BaseException) -> Optional[int]:
    """ENOSPC or EDQUOT when ``exc`` (or what caused it) says the disk is full, else None."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def dcm2niix_binary() -> str:
    """The binary the ``dcm2niix`` PyPI package ships (``dcm2niix.bin``), else one on PATH."""
    try:
        import dcm2niix

        path = str(getattr(dcm2niix, "bin", ""))
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("dcm2niix")
    if not found:
        raise ConversionError("dcm2niix is not installed (pip install dcm2niix)")
    return found


def converter_version() -> str:
    """The dcm2niix package version (no process started: it is part of every key)."""
    try:
        import dcm2niix

        return str(getattr(dcm2niix, "__version__", "unknown"))
    except ImportError:
        return "system"


def bundle_key_uri(scan_uri: str, files: Sequence[Tuple[str, int, str]], extra: str = "") -> str:
    """The bundle's cache URI: the scan, then a SHA-256 over the series' (name, size, MD5)
    rows, the converter's version and options (and ``extra``, e.g. the task name written
    into the sidecar)."""
    h = hashlib.sha256()
    for name, size, digest in sorted(files):
        h.update(f"{name}\0{size}\0{digest}\n".encode("utf-8", "surrogatepass"))
    h.update(f"{converter_version()}\0{' '.join(OPTIONS)}\0{BUNDLE_FORMAT}\0{extra}".encode())
    return f"{SCHEME}{scan_uri}#{h.hexdigest()}"


# ------------------------------------------------------------------------ bundles
def pack(outputs: Dict[str, bytes]) -> bytes:
    """``magic, len(index)`` + JSON index ``{name: [offset, size]}`` + the files."""
    head = _pack_head({name: len(data) for name, data in outputs.items()})
    return head + b"".join(outputs[n] for n in sorted(outputs))


def _pack_head(sizes: Dict[str, int]) -> bytes:
    """The bundle's bytes before its files (sorted by name), from their sizes alone."""
    names = sorted(sizes)
    index: Dict[str, List[int]] = {}
    offset = 0
    for name in names:
        index[name] = [offset, sizes[name]]
        offset += sizes[name]
    head = json.dumps(index, sort_keys=True).encode()
    base = _HEAD.size + len(head)
    for entry in index.values():
        entry[0] += base
    head2 = json.dumps(index, sort_keys=True).encode()
    if len(head2) != len(head):  # offsets grew a digit: one more pass settles it
        base = _HEAD.size + len(head2)
        offset = 0
        for name in names:
            index[name] = [base + offset, sizes[name]]
            offset += sizes[name]
        head2 = json.dumps(index, sort_keys=True).encode()
    return _HEAD.pack(_MAGIC, len(head2)) + head2


def pack_files(out_dir: str, names: Sequence[str], sink: Callable[[bytes], None]) -> None:
    """:func:`pack` of the files ``names`` of ``out_dir``, streamed into ``sink`` 1 MiB at a
    time.  Why: the bundle whole in memory (every output read, then joined) held three times
    the conversion's size at its peak — a 2 GB multiband bold was 6 GB of the daemon's
    memory; streamed, a conversion holds one chunk."""
    sizes = {name: os.stat(os.path.join(out_dir, name)).st_size for name in names}
    sink(_pack_head(sizes))
    for name in sorted(sizes):
        left = sizes[name]
        with open(os.path.join(out_dir, name), "rb") as fh:
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:  # nothing but dcm2niix writes there, and it has exited
                    raise ConversionError(f"dcm2niix's {name} shrank while it was packed")
                sink(chunk)
                left -= len(chunk)


def read_index(read: Callable[[int, int], bytes]) -> Dict[str, Tuple[int, int]]:
    """The index of a bundle, through ``read(offset, size)``."""
    magic, n = _HEAD.unpack(read(0, _HEAD.size))
    if magic != _MAGIC:
        raise ConversionError("not an xnatfs conversion bundle")
    doc = json.loads(read(_HEAD.size, n).decode())
    return {k: (int(v[0]), int(v[1])) for k, v in doc.items()}


# ------------------------------------------------------------------------ running dcm2niix
def run_dcm2niix(
    dicom_dir: str,
    out_dir: str,
    timeout: float,
    started: Callable[["subprocess.Popen[bytes]"], None] = lambda proc: None,
) -> Dict[str, bytes]:
    """Convert one series folder; every output file by name, in memory (for small series and
    tests: the view streams them, :func:`convert_files`)."""
    names = convert_files(dicom_dir, out_dir, timeout, started)
    return {name: _read(os.path.join(out_dir, name)) for name in names}


def convert_files(
    dicom_dir: str,
    out_dir: str,
    timeout: float,
    started: Callable[["subprocess.Popen[bytes]"], None] = lambda proc: None,
) -> List[str]:
    """Convert one series folder; the names of the files written to ``out_dir``.  Raises
    :class:`ConversionError` with dcm2niix's last message on a non-zero exit, a timeout, or no
    NIfTI written.

    dcm2niix runs in a process group of its own (it may start ``pigz``), killed whole at the
    timeout or when ``started(proc)`` raises, so nothing it started keeps the output pipes
    open; ``started`` lets the owner kill it from another thread (``Converter.close``)."""
    cmd = [dcm2niix_binary(), *OPTIONS, "-o", out_dir, dicom_dir]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        started(proc)
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"dcm2niix ran longer than {timeout:g} s") from exc
    finally:
        if proc.returncode is None:
            kill_group(proc)
            proc.communicate()
    text = (stdout + stderr).decode("utf-8", "replace")
    outputs = sorted(os.listdir(out_dir))
    images = [n for n in outputs if n.endswith((".nii.gz", ".nii"))]
    if proc.returncode != 0 or not images:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        problem = next(
            (ln for ln in reversed(lines) if "error" in ln.lower()),
            lines[-1] if lines else "no output",
        ).replace(dicom_dir, "<series>")
        raise ConversionError(f"dcm2niix exit {proc.returncode}: {problem}")
    return outputs


def _check_room(tmp: str, series_bytes: int) -> None:
    """ENOSPC, before anything is fetched, when the disk of ``tmp`` has less free space than
    the series takes twice: its copy, then dcm2niix's outputs (gzipped, they are smaller
    than the uncompressed pixel data they hold).  Why: a series larger than the free space
    was fetched and copied until the disk was full — every other writer on it (the cache,
    the upload journal) failed meanwhile — and the conversion failed anyway."""
    if series_bytes <= 0:
        return
    free = _free_bytes(tmp)
    if free < 2 * series_bytes:
        raise OSError(
            errno.ENOSPC,
            f"the series is {series_bytes} bytes: converting it needs {2 * series_bytes} "
            f"free in {os.path.dirname(tmp)}, {free} are",
        )


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _tree_bytes(path: str) -> int:
    """Bytes of the files below ``path`` (for the sweep's log line; unreadable: 0)."""
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def _short_of_room(out_dir: str, dicom_dir: str) -> bool:
    """After dcm2niix failed: is the disk too full for its output (less free than the
    series' bytes, which its output needs about as much as)?  dcm2niix's message does not
    always say so (exit 1, "Convert 32 DICOM as ..." on a full tmpfs)."""
    try:
        free = _free_bytes(out_dir)
    except OSError:
        return False
    return free < max(_tree_bytes(dicom_dir), 1 << 16)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def kill_group(proc: "subprocess.Popen[bytes]") -> None:
    """SIGKILL dcm2niix and whatever it started (its own process group); gone already: fine."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Job:
    """What one bundle key converts: ``fetch_dicom(dest_dir)`` puts the series there."""

    scan: str  # for log lines: project/subject/session/scan
    fetch_dicom: Callable[[str], None]
    #: the series' bytes as XNAT lists them (0: unknown), for ``_check_room``
    series_bytes: int = 0


@dataclass
class ConversionStats:
    done: int = 0
    running: int = 0
    failed: int = 0
    queued: int = 0
    seconds: float = 0.0
    last_error: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {
            "done": self.done,
            "running": self.running,
            "failed": self.failed,
            "queued": self.queued,
            "seconds": round(self.seconds, 3),
            "last_error": self.last_error,
        }


@dataclass
class Converter:
    """Runs bundle "downloads" for a ``ContentCache`` (pass :meth:`fetch` as its fetch)."""

    max_running: int = 2
    timeout: float = 600.0
    tmp_dir: Optional[str] = None
    jobs: Dict[str, Job] = field(default_factory=dict)
    stats: ConversionStats = field(default_factory=ConversionStats)
    #: asked once when a conversion meets a full disk (module docstring); None: no room
    make_room: Optional[RoomFn] = None

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(max(1, self.max_running))
        self._lock = threading.Lock()
        # _lock guards the two fields below (and ``jobs``, ``stats``)
        self._closed = False
        #: dcm2niix processes running now (``close`` kills them)
        self._procs: Set["subprocess.Popen[bytes]"] = set()
        #: bundle uri -> (monotonic time, message) of dcm2niix failing on it (``_remembered``)
        self._failures: Dict[str, Tuple[float, str]] = {}
        #: this process's claim on its conversion folders in ``tmp_dir`` (None: no tmp_dir)
        self._owners: Optional[PartialOwners] = None
        if self.tmp_dir:
            self._owners = PartialOwners(
                os.path.join(self.tmp_dir, "owners"), self.tmp_dir, secrets.token_hex(4)
            )
            self._owners.claim()
            self.sweep()

    def sweep(self) -> int:
        """Remove the conversion folders of processes that are gone; how many.

        Why: each conversion copies its whole DICOM series into a folder of ``tmp_dir``,
        removed when it ends; a daemon killed mid-conversion (SIGKILL, OOM, power loss) left
        it there, outside every cache budget, and no later mount removed it.  Several mounts
        may share a cache directory, so only folders whose owner's lock is free go
        (``PartialOwners``, as the content cache's partial files); a folder without an
        owner tag is an older version's and goes too."""
        owners = self._owners
        if owners is None or self.tmp_dir is None:
            return 0
        known: Dict[str, bool] = {}
        removed, freed = 0, 0
        for name in os.listdir(self.tmp_dir):
            if not name.startswith(_TMP_PREFIX):
                continue
            tag, sep, _ = name[len(_TMP_PREFIX) :].partition("-")
            if sep and owners.alive(tag, known):
                continue
            path = os.path.join(self.tmp_dir, name)
            freed += _tree_bytes(path)
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        if removed:
            log.info(
                "BIDS: removed %d conversion folder(s) (%d bytes) left in %s by a daemon that "
                "ended mid-conversion",
                removed,
                freed,
                self.tmp_dir,
            )
        return removed

    def close(self) -> None:
        """Kill the running dcm2niix processes; conversions waiting for a slot or not started
        fail at once.  Why: the conversions run on the BIDS cache's download pool, whose
        threads the interpreter joins at exit without a bound, so a conversion left running
        held the daemon's exit after unmount for as long as dcm2niix ran (up to ``timeout``);
        its result would be thrown away anyway (the cache is closing)."""
        with self._lock:
            self._closed = True
            procs = [p for p in self._procs if p.returncode is None]  # not reaped yet
        for proc in procs:
            kill_group(proc)
        if self._owners is not None:
            # the folders of conversions still ending are free for a sweep from now on
            # (each removes its own too, ignoring what a sweep removed first)
            self._owners.release()

    def _remember(self, uri: str, why: str) -> None:
        """dcm2niix failed on the series of ``uri`` (exited non-zero, wrote no image, ran past
        the timeout): the same files and dcm2niix (the key holds both) fail the same way, so
        reads within ``FAILURE_MEMORY`` seconds get that failure at once instead of another
        run.  Why: every read ran dcm2niix again, so a series it hangs on held one of the
        ``max_running`` slots for the whole timeout at each read (a pipeline retrying kept
        every conversion of the mount waiting).  Bounded; fetch failures are not kept."""
        with self._lock:
            if len(self._failures) >= 1024:
                self._failures.pop(next(iter(self._failures)))
            self._failures[uri] = (time.monotonic(), why)

    def _remembered(self, uri: str) -> str:
        """The remembered failure of ``uri`` (said so), or "" when there is none or it is
        older than ``FAILURE_MEMORY`` (then it is tried again)."""
        with self._lock:
            known = self._failures.get(uri)
            if known is None:
                return ""
            age = time.monotonic() - known[0]
            if age >= FAILURE_MEMORY:
                del self._failures[uri]
                return ""
        return (
            f"{known[1]} ({age:.0f} s ago, on these same files; "
            f"tried again {FAILURE_MEMORY:.0f} s after)"
        )

    def _started(self, proc: "subprocess.Popen[bytes]") -> None:
        """``run_dcm2niix``'s hook: register the process, or refuse it (killed) once closed."""
        with self._lock:
            if not self._closed:
                self._procs.add(proc)
                return
        raise ConversionError("the BIDS view is closing")

    def _check_open(self) -> None:
        with self._lock:
            if self._closed:
                raise ConversionError("the BIDS view is closing")

    def register(self, uri: str, job: Job) -> None:
        """Say how to convert ``uri`` (the view does it when it shows the file; bounded)."""
        with self._lock:
            if len(self.jobs) > 100_000:
                self.jobs.clear()
            self.jobs[uri] = job

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return self.stats.as_dict()

    def fetch(self, uri: str, sink: Callable[[bytes], None]) -> None:
        """``ContentCache`` fetch: convert the scan behind ``uri`` and stream the bundle."""
        with self._lock:
            job = self.jobs.get(uri)
            self.stats.queued += 1
        earlier = self._remembered(uri)
        if job is None or earlier:
            with self._lock:
                self.stats.queued -= 1
            if job is None:
                raise ConversionError(f"no conversion known for {uri}")
            raise ConversionError(f"BIDS conversion of {job.scan} failed: {earlier}")
        with self._slots:
            with self._lock:
                self.stats.queued -= 1
                self.stats.running += 1
            t0 = time.monotonic()
            try:
                self._check_open()  # waited for a slot while the view closed
                self._convert_with_room(job, sink)
            except Exception as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                with self._lock:
                    self.stats.failed += 1
                    self.stats.last_error = f"{job.scan}: {why}"
                # INFO here: the reader's EIO is the one ERROR line (``fs.errmap``), and it
                # carries this message; ``xnatfs status`` keeps the last one
                log.info("BIDS conversion of %s failed: %s", job.scan, why)
                if getattr(exc, "by_dcm2niix", False):
                    self._remember(uri, why)
                raise ConversionError(
                    f"BIDS conversion of {job.scan} failed: {why}",
                    disk_full_errno(exc) or errmap.errno_for(exc),
                    bool(getattr(exc, "reported", False)),
                ) from exc
            finally:
                with self._lock:
                    self.stats.running -= 1
                    self.stats.seconds += time.monotonic() - t0

    def _convert_with_room(self, job: Job, sink: Callable[[bytes], None]) -> None:
        """``_convert``, once more after ``make_room`` evicted something when it met a full
        disk (module docstring).  Only before the bundle's first byte went to ``sink``: a
        full disk met while it streams is the content cache's own write, which makes room
        itself; the temp dir of the first run is gone by then."""
        streamed = [False]

        def tracked(chunk: bytes) -> None:
            streamed[0] = True
            sink(chunk)

        try:
            self._convert(job, tracked)
            return
        except OSError as exc:
            if streamed[0] or disk_full_errno(exc) is None or not self._room(job):
                raise
            log.info(
                "BIDS conversion of %s: the cache disk was full (%s); room made, converting again",
                job.scan,
                exc.strerror or exc,
            )
        self._convert(job, sink)

    def _room(self, job: Job) -> bool:
        """``make_room`` for ``job``: its series copied and converted (about twice its
        bytes, 1 MiB at least); False when nothing went."""
        if self.make_room is None:
            return False
        where = self.tmp_dir or tempfile.gettempdir()
        try:
            return self.make_room(where, 2 * job.series_bytes + (1 << 20)) > 0
        except Exception:  # the conversion's own error is the one to report
            log.debug("BIDS: making room for a conversion failed", exc_info=True)
            return False

    def _convert(self, job: Job, sink: Callable[[bytes], None]) -> None:
        """Fetch the series into a private folder, run dcm2niix on it and stream the bundle
        of its outputs into ``sink`` (``pack_files``) before the folder goes."""
        prefix = _TMP_PREFIX + (f"{self._owners.tag}-" if self._owners is not None else "")
        with tempfile.TemporaryDirectory(
            prefix=prefix, dir=self.tmp_dir, ignore_cleanup_errors=True
        ) as tmp:
            os.chmod(tmp, 0o700)
            _check_room(tmp, job.series_bytes)
            dicom_dir, out_dir = os.path.join(tmp, "dicom"), os.path.join(tmp, "out")
            os.mkdir(dicom_dir)
            os.mkdir(out_dir)
            job.fetch_dicom(dicom_dir)
            try:
                outputs = convert_files(dicom_dir, out_dir, self.timeout, started=self._started)
            except ConversionError as exc:
                self._check_open()  # killed by close(): say that, not its exit status
                if _short_of_room(out_dir, dicom_dir):
                    raise ConversionError(
                        f"{exc.strerror} (the cache disk is full)", errno.ENOSPC
                    ) from exc
                # of these very files (``_remember``), unless the disk may have been full
                exc.by_dcm2niix = _free_bytes(tmp) >= _ROOM_TO_BLAME
                raise
            finally:
                with self._lock:
                    self._procs = {p for p in self._procs if p.returncode is None}
            with self._lock:
                # done once dcm2niix has: a reader of one image has all of it as soon as
                # that image is streamed, before the rest of the bundle
                self.stats.done += 1
            pack_files(out_dir, outputs, sink)
        log.info("BIDS: converted %s (%s)", job.scan, ", ".join(outputs))
