"""Uploads: writes become uploads, and the bytes are never lost (docs/LAYOUT.md §1.3,
docs/ARCHITECTURE.md §7).

Modules:

- ``spool``     ``Spool``/``SpoolFile``: the on-disk file a write handle writes into (positional
                writes, reads, truncate, fsync; a failed write such as ENOSPC is undone).
- ``journal``   ``Journal``/``Entry``: every upload not yet confirmed by the server, as a data
                file + an atomically written JSON sidecar; crash-safe ``add``, ``reload`` after a
                restart, lookups by mount path for listings.
- ``uploader``  ``Uploader``: a bounded pool of named threads that calls the caller's
                ``put(entry)``, confirms with ``verify(entry)`` before deleting anything, retries
                transient errors with jittered exponential backoff until the server has the
                bytes, ``upload_now`` for close()/fsync(), ``status()`` for ``xnatfs status``.
- ``target``    ``UploadTarget``: the frozen record of what an entry uploads to (a file in a
                resource, or an archive import), persisted in the sidecar.
- ``checks``    ``SharedChecks``: one listing request shared by the checks of uploads to one
                resource that come while another is under way (never one begun before them).
- ``retry``     the one table of which failures are permanent (``classify``), also applied to
                error texts recorded by older versions (``classify_text``).

Typical use by the tree: ``spool.create()`` on open for write; ``journal.add(spool_file, target,
path)`` then ``uploader.upload_now(entry, deadline)`` on release (answer the errno of what it
raises; the entry stays pending); ``journal.pending_in(dir)`` to list pending files.

This package imports neither ``xnatfs.tree`` nor ``xnatfs.xnat``: the uploader is given
``put``/``verify`` callables and ``retry.classify`` reads their errors' class names and
``status``.
"""

from xnatfs.uploads.journal import Entry, Journal
from xnatfs.uploads.spool import Spool, SpoolFile
from xnatfs.uploads.target import UploadTarget
from xnatfs.uploads.uploader import Uploader, UploadNotVerified

__all__ = [
    "Entry",
    "Journal",
    "Spool",
    "SpoolFile",
    "UploadTarget",
    "Uploader",
    "UploadNotVerified",
]
