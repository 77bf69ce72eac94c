"""One frozen ``Options`` record with every tunable and its default (STYLE.md §2).

It is built once by the command line (or a test) and passed down explicitly; nothing reads
settings from globals.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/xnatfs`` (``~/.cache/xnatfs``); created 0700 by the caches."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xnatfs"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"10G"`` / ``"512MiB"`` / ``"1000000"`` -> bytes (binary multiples)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 20G)")
    number, unit = float(m.group(1)), m.group(2).lower()
    power = " kmgtp".index(unit) if unit else 0
    return int(number * (1024 ** power))


@dataclass(frozen=True)
class Options:
    #: server base URL, context path included (``https://host/xnat``)
    url: str
    #: on-disk cache (content, journal, logs); private 0700
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: content cache size limit in bytes; least recently used files are evicted beyond it
    cache_size: int = 10 * 1024 ** 3
    #: seconds a listing is trusted; also the kernel's attr/entry timeouts
    listing_ttl: float = 60.0
    #: FUSE worker threads; the HTTP pool is sized to match
    max_threads: int = 16
    #: parallel whole-file downloads into the cache
    max_downloads: int = 8
    #: when a file is opened, download up to this many of the next files of its folder in the
    #: background (cp -r, dcm2niix read a DICOM folder file after file); 0 turns it off
    prefetch: int = 16
    #: when a file of a resource with at least this many uncached files is opened, fetch the
    #: whole resource as one zip (XNAT's own zip download) instead of file by file; 0 turns it off
    bulk_zip: int = 32
    #: listings loaded in parallel ahead of a tree walk (find, cp -r, du); 0 turns it off
    walk_ahead: int = 4
    #: HTTP requests in flight at most, all callers together (listings, walk-ahead, prefetch,
    #: bulk zips, downloads, uploads); the adaptive limit backs off below it on 429/503/
    #: timeouts (issue 13 §2, ``xnat/limiter.py``)
    max_requests: int = 16
    #: kernel read-ahead of the mount in KiB; 1024 makes libfuse3 send 1 MiB reads
    #: (fuse-notes.md §2.2); 0 leaves the kernel default; needs root
    read_ahead_kb: int = 1024
    #: HTTP connect / read timeouts (seconds) for every request
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    #: GET/HEAD retries on connection errors and 502/503/504
    retries: int = 3
    #: the longest any filesystem call may wait (seconds) before it fails with EIO/ETIMEDOUT
    fs_timeout: float = 60.0
    #: TLS verification: True, False (testing only) or a CA bundle path
    verify: object = True
    #: writes: everything answers EROFS when True
    read_only: bool = False
    #: overwrite, rm, rmdir and prearchive delete need this
    allow_delete: bool = False
    #: per-file times from each resource's catalog XML (one more request per resource listing;
    #: issue 15 §1); off: files show their object's time
    catalog_times: bool = False
    #: with ``-o allow_other``: may users other than the owner write (as the owner, on XNAT)?
    #: Off: the kernel refuses them (``default_permissions`` + owner-only write bits) and the
    #: daemon refuses any write whose caller is not the owner (issue 17 §2)
    allow_other_write: bool = False
    #: xsiTypes for mkdir-created experiments and scans
    experiment_type: str = "xnat:mrSessionData"
    scan_type: str = "xnat:mrScanData"
    #: generic FUSE options passed through to libfuse (``-o``)
    fuse_options: Mapping[str, object] = field(default_factory=dict)
    #: owner shown for every file (defaults to the mounting user); ``-o uid=,gid=``
    uid: Optional[int] = None
    gid: Optional[int] = None
    #: mode bits taken away from every file and folder shown (``-o umask=027``): with
    #: ``allow_other`` this decides who else may read; it can only remove bits, never add
    umask: int = 0
    #: permission bits shown for every directory / file (``--dir-mode``/``--file-mode``);
    #: None: 0755/0644 (0777/0666 with ``allow_other_write``).  Group/other write bits are
    #: dropped unless ``allow_other_write``, every write bit with ``read_only`` (fs/ops.py)
    dir_mode: Optional[int] = None
    file_mode: Optional[int] = None
    #: mount on a directory that is not empty (its files are hidden while mounted)
    nonempty: bool = False
    #: a dcm2bids configuration file naming the scans of the BIDS view (``MNT/.bids``);
    #: "" uses XNAT's BIDS map, else the built-in heuristic (docs/BIDS.md)
    bids_config: str = ""
