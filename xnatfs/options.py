"""One frozen ``Options`` record with every tunable (docs/ARCHITECTURE.md §2).

It is built once by the command line (or a test) and passed down explicitly; nothing reads
settings from globals.  Every default comes from the one table of settings,
:data:`xnatfs.settings.SETTINGS` (``tests/unit/test_settings_table.py`` checks that each field
the table fills is here, with that default); the fields not in the table (``url``,
``fuse_options``, ``uid``/``gid``/``umask``) come from the command line's arguments and ``-o``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

from xnatfs.settings import default as _d
from xnatfs.settings import default_cache_dir, parse_size

__all__ = ["Options", "default_cache_dir", "parse_size"]


@dataclass(frozen=True)
class Options:
    #: server base URL, context path included (``https://host/xnat``)
    url: str
    #: on-disk cache (content, journal, logs); private 0700
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: content cache size limit in bytes; least recently used files are evicted beyond it
    cache_size: int = _d("cache_size")
    #: seconds a listing is trusted; also the kernel's attr/entry timeouts
    listing_ttl: float = _d("listing_ttl")
    #: FUSE worker threads; the HTTP pool is sized to match
    max_threads: int = _d("max_threads")
    #: parallel whole-file downloads into the cache
    max_downloads: int = _d("max_downloads")
    #: when a file is opened, download up to this many of the next files of its folder in the
    #: background (cp -r, dcm2niix read a DICOM folder file after file); 0 turns it off
    prefetch: int = _d("prefetch")
    #: when a file of a resource with at least this many uncached files is opened, fetch the
    #: whole resource as one zip (XNAT's own zip download) instead of file by file; 0 turns it off
    bulk_zip: int = _d("bulk_zip")
    #: listings loaded in parallel ahead of a tree walk (find, cp -r, du); 0 turns it off
    walk_ahead: int = _d("walk_ahead")
    #: HTTP requests in flight at most, all callers together (listings, walk-ahead, prefetch,
    #: bulk zips, downloads, uploads); the adaptive limit backs off below it on 429/503/
    #: timeouts (issue 13 §2, ``xnat/limiter.py``)
    max_requests: int = _d("max_requests")
    #: kernel read-ahead of the mount in KiB; 1024 makes libfuse3 send 1 MiB reads
    #: (docs/FUSE.md §2.2); 0 leaves the kernel default; needs root
    read_ahead_kb: int = _d("read_ahead_kb")
    #: HTTP connect / read timeouts (seconds) for every request
    connect_timeout: float = _d("connect_timeout")
    read_timeout: float = _d("read_timeout")
    #: GET/HEAD retries on connection errors and 502/503/504
    retries: int = _d("retries")
    #: the longest any filesystem call may wait (seconds) before it fails with EIO/ETIMEDOUT
    fs_timeout: float = _d("fs_timeout")
    #: TLS verification: True, False (testing only) or a CA bundle path
    verify: Union[bool, str] = True  # no --ca-bundle (the table's None): the system's CAs
    #: writes: everything answers EROFS when True
    read_only: bool = _d("read_only")
    #: with ``read_only``: opens cost no round trip to the daemon (``fs/noopen.py``)
    zero_message_opens: bool = _d("zero_message_opens")
    #: overwrite, rm, rmdir and prearchive delete need this
    allow_delete: bool = _d("allow_delete")
    #: per-file times from each resource's catalog XML (one more request per resource listing;
    #: issue 15 §1); off: files show their object's time
    catalog_times: bool = _d("catalog_times")
    #: one listing request per directory instead of an experiment's tables (B4,
    #: ``layouts/xnat/bundle.py``)
    per_directory_listings: bool = _d("per_directory_listings")
    names_only_listings: bool = _d("names_only_listings")
    #: with ``-o allow_other``: may users other than the owner write (as the owner, on XNAT)?
    #: Off: the kernel refuses them (``default_permissions`` + owner-only write bits) and the
    #: daemon refuses any write whose caller is not the owner (issue 17 §2)
    allow_other_write: bool = _d("allow_other_write")
    #: xsiTypes for mkdir-created experiments and scans
    experiment_type: str = _d("experiment_type")
    scan_type: str = _d("scan_type")
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
    dir_mode: Optional[int] = _d("dir_mode")
    file_mode: Optional[int] = _d("file_mode")
    #: mount on a directory that is not empty (its files are hidden while mounted)
    nonempty: bool = _d("nonempty")
    #: files uploaded at the same time by the journal's uploader (``uploads/uploader.py``)
    upload_workers: int = _d("upload_workers")
    #: first wait before an upload is retried (doubled per failure, with jitter) and the
    #: longest wait between retries, seconds
    upload_backoff: float = _d("upload_backoff")
    upload_backoff_max: float = _d("upload_backoff_max")
    #: a dcm2bids configuration file naming the scans of the BIDS view (``MNT/.bids``);
    #: "" uses XNAT's BIDS map, else the built-in heuristic (docs/BIDS.md)
    bids_config: Optional[str] = _d("bids_config")
    #: dcm2niix conversions at once, and the longest one may run (seconds)
    bids_conversions: int = _d("bids_conversions")
    bids_conversion_timeout: float = _d("bids_conversion_timeout")
